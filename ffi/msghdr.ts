/**
 * The one msghdr/iovec builder. A {@linkcode MessageArea} is a stable
 * off-heap buffer that holds message headers (one `msghdr`, or an array of
 * `mmsghdr` for `sendmmsg`), their iovecs, a staging area for small buffers
 * that V8 may move, and control space; every `sendmsg`, `recvmsg` and
 * `sendmmsg` of the module lays its message out through one. Calls are
 * synchronous on the JS thread, so an area is never in use by two calls at
 * once, and the same memory serves every call without an allocation.
 *
 * @module
 */

import { IOVEC, MMSGHDR, MSGHDR } from "./layout.ts";
import { addressOf, pointerOf, stableBuffer } from "./mem.ts";

/**
 * V8 keeps buffers of at most this many bytes in its heap, where a
 * scavenge may move them: their address must not go into a struct.
 */
export const MAY_MOVE = 64;

/** What a {@linkcode MessageArea} holds room for. */
export interface MessageAreaLayout {
  /** Message headers: 1 for `sendmsg`/`recvmsg`, more for `sendmmsg`. */
  headers?: number;
  /** Iovecs, shared by the headers. */
  iovecs: number;
  /** Bytes of staging for data that may not be referenced in place. */
  stage: number;
  /** Bytes of control space. */
  control: number;
}

/** Writes a `size_t` below 2^53 as two u32 halves, without a BigInt. */
function setSize(view: DataView, at: number, value: number): void {
  view.setUint32(at, value >>> 0, true);
  view.setUint32(at + 4, Math.floor(value / 0x1_0000_0000), true);
}

/** Reads a `size_t` below 2^53. */
function getSize(view: DataView, at: number): number {
  return view.getUint32(at, true) +
    view.getUint32(at + 4, true) * 0x1_0000_0000;
}

const align8 = (n: number) => (n + 7) & ~7;

/** A stable area for message headers, iovecs, staging and control data. */
export class MessageArea {
  /** The whole area. */
  readonly view: DataView;
  /** The whole area, as bytes. */
  readonly bytes: Uint8Array;
  /** The first header, as `sendmsg`, `recvmsg` and `sendmmsg` take it. */
  readonly pointer: Deno.PointerValue;
  /** The first iovec, as `preadv2` and `pwritev2` take it. */
  readonly iovPointer: Deno.PointerValue;
  /** Where the staging area starts. */
  readonly stageAt: number;
  /** Its size in bytes. */
  readonly stageSize: number;
  /** Where the control space starts (8-aligned). */
  readonly controlAt: number;
  /** Its size in bytes. */
  readonly controlSize: number;
  /** The address of the staging area. */
  readonly stageAddress: bigint;
  #base: bigint;
  #stride: number;
  #iovAt: number;
  #iovAddresses: bigint[] = [];
  /** The last view {@linkcode setIovecFor} took the address of, and it. */
  #lastView: WeakRef<Uint8Array> | undefined;
  #lastAddress = 0n;

  constructor(layout: MessageAreaLayout) {
    const headers = layout.headers ?? 1;
    // A single header is a msghdr; an array is one of mmsghdr, whose
    // msg_len follows each msghdr.
    this.#stride = headers === 1 ? MSGHDR.size : MMSGHDR.size;
    this.#iovAt = align8(headers * this.#stride);
    this.stageAt = this.#iovAt + layout.iovecs * IOVEC.size;
    this.stageSize = layout.stage;
    this.controlAt = align8(this.stageAt + layout.stage);
    this.controlSize = layout.control;
    const buffer = stableBuffer(this.controlAt + layout.control);
    this.view = new DataView(buffer);
    this.bytes = new Uint8Array(buffer);
    this.#base = addressOf(buffer);
    this.pointer = pointerOf(buffer);
    for (let i = 0; i < layout.iovecs; i++) {
      this.#iovAddresses.push(this.address(this.#iovAt + i * IOVEC.size));
    }
    this.iovPointer = Deno.UnsafePointer.create(this.#iovAddresses[0] ?? 0n);
    this.stageAddress = this.address(this.stageAt);
  }

  /** The address of byte `at` of the area. */
  address(at: number): bigint {
    return this.#base + BigInt(at);
  }

  /** Where header `index` starts in the area. */
  header(index: number): number {
    return index * this.#stride + MMSGHDR.hdr;
  }

  /**
   * Fills every field of header `index`: no name, `count` iovecs from
   * iovec `first`, `controlLength` bytes of control at `controlAddress`
   * (none when the length is 0), no flags.
   */
  setHeader(
    index: number,
    first: number,
    count: number,
    controlAddress: bigint,
    controlLength: number,
  ): void {
    const view = this.view;
    const at = this.header(index);
    view.setBigUint64(at + MSGHDR.name, 0n, true);
    view.setUint32(at + MSGHDR.namelen, 0, true);
    view.setBigUint64(at + MSGHDR.iov, this.#iovAddresses[first], true);
    setSize(view, at + MSGHDR.iovlen, count);
    view.setBigUint64(
      at + MSGHDR.control,
      controlLength === 0 ? 0n : controlAddress,
      true,
    );
    setSize(view, at + MSGHDR.controllen, controlLength);
    view.setInt32(at + MSGHDR.flags, 0, true);
  }

  /**
   * Readies header `index` (filled once by {@linkcode setHeader}) for
   * another call: the fields `recvmsg` writes back are set again, and the
   * control length is `controlLength`.
   */
  reset(index: number, controlLength: number): void {
    const view = this.view;
    const at = this.header(index);
    view.setUint32(at + MSGHDR.namelen, 0, true);
    setSize(view, at + MSGHDR.controllen, controlLength);
    view.setInt32(at + MSGHDR.flags, 0, true);
  }

  /** Sets iovec `index` to `length` bytes at `address`. */
  setIovec(index: number, address: bigint, length: number): void {
    const at = this.#iovAt + index * IOVEC.size;
    this.view.setBigUint64(at + IOVEC.base, address, true);
    setSize(this.view, at + IOVEC.len, length);
  }

  /**
   * Points iovec `index` at `data`: in place, or, when V8 may move it
   * (at most {@linkcode MAY_MOVE} bytes), at staging offset `stage`,
   * copying it there first when `copyIn` (a send). Returns whether the
   * data is staged (a receive then copies it back with
   * {@linkcode copyOut}). Tests the view's own length: reading `.buffer`
   * would move a small buffer out of V8's heap on every call.
   */
  setIovecFor(
    index: number,
    data: Uint8Array,
    stage: number,
    copyIn: boolean,
  ): boolean {
    const n = data.byteLength;
    if (n > MAY_MOVE) {
      // A receive loop passes the same view every time: its address is
      // remembered (a buffer this large is outside V8's heap and never
      // moves; a detached one has no bytes and never gets here), which
      // saves an FFI call per message, 2 µs while V8 has not optimized it.
      // Weakly: a caller's large buffer is not kept alive by this.
      if (this.#lastView?.deref() !== data) {
        this.#lastAddress = addressOf(data);
        this.#lastView = new WeakRef(data);
      }
      this.setIovec(index, this.#lastAddress, n);
      return false;
    }
    const at = this.stageAt + stage;
    if (copyIn) {
      const bytes = this.bytes;
      for (let i = 0; i < n; i++) bytes[at + i] = data[i];
    }
    this.setIovec(
      index,
      stage === 0 ? this.stageAddress : this.stageAddress + BigInt(stage),
      n,
    );
    return true;
  }

  /** Copies `n` staged bytes from staging offset `stage` into `into`. */
  copyOut(stage: number, into: Uint8Array, n: number): void {
    const bytes = this.bytes;
    const at = this.stageAt + stage;
    for (let i = 0; i < n; i++) into[i] = bytes[at + i];
  }

  /** `msg_controllen` of header `index`, as the last call left it. */
  controlLength(index: number): number {
    return getSize(this.view, this.header(index) + MSGHDR.controllen);
  }

  /** `msg_flags` of header `index`, as the last call left them. */
  flags(index: number): number {
    return this.view.getInt32(this.header(index) + MSGHDR.flags, true);
  }
}

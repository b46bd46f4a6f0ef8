/**
 * {@linkcode shmQueue}: a one-way queue of whole messages of any size
 * through a ring in shared memory, between two processes or within one.
 *
 * The ring lives in a memfd: a 256-byte header, then the data area. Each
 * message is a record: its length (u32) and sequence number (u32), then the
 * bytes, padded to 8. A record may wrap around the end of the data area.
 * `head` and `tail` are byte positions counted modulo twice the data size,
 * so a full ring and an empty one differ. The sender only ever writes the
 * tail, the receiver only the head; both are read and written with
 * `Atomics`, and a record is complete before the tail that covers it is
 * published. Everything read from the ring is checked before it is used:
 * the other process may have crashed or may be hostile.
 *
 * Waiting needs no polling loop and no thread: each end owns one side of a
 * SOCK_SEQPACKET doorbell, watched by the process's one poller. Before it
 * parks, an end raises its "waiting" flag and looks once more; the other end
 * rings only when it takes that flag down (compare-and-exchange), so a busy
 * queue makes no system calls. When the other process exits or closes its
 * end, the doorbell hangs up, which also ends a wait.
 *
 * @example Messages of any size, in order
 * ```ts
 * import { shmQueue } from "@conduit/ipc";
 *
 * const [tx, rx] = shmQueue({ bytes: 1 << 20 });
 * await tx.send(new Uint8Array(100_000));
 * await tx.send(new TextEncoder().encode("hi"));
 * tx.close();
 * console.log((await rx.recv())?.length); // 100000
 * console.log(new TextDecoder().decode((await rx.recv())!)); // "hi"
 * console.log(await rx.recv()); // null: drained and the sender is gone
 * rx.close();
 * ```
 *
 * @module
 */

import { libc } from "../ffi/libc.ts";
import { check, closedError } from "../ffi/errors.ts";
import { SOCK } from "../ffi/layout.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { registerAdopter } from "../_adopt.ts";
import { Serial } from "../_byte_io.ts";
import { createMemfd, fileSize, sealedAgainstShrink } from "./shared_memory.ts";
import { type Mapping, mapShared, unmap } from "./_map.ts";
import {
  doorbellProblem,
  drain,
  peekHello,
  ring,
  ROLE,
  sendHello,
} from "./_carrier.ts";

/** Options for {@linkcode shmQueue}. */
export interface ShmQueueOptions {
  /**
   * The largest message, in bytes; the ring holds at least this much (plus
   * 8 bytes of record header). Default 1 MiB; at most 1 GiB.
   */
  bytes?: number;
  /**
   * How long (µs) a send or receive that would wait first checks the ring
   * in a busy loop, blocking the thread, before it parks in the poller.
   * Lowers latency when the other process answers quickly (round trip
   * about 2 µs instead of about 90 µs on a 2-core VM). Default 20.
   */
  spin?: number;
}

/** Options for {@linkcode ShmSender.send} and {@linkcode ShmReceiver.recv}. */
export interface ShmWaitOptions {
  /** Stops waiting and rejects with the signal's reason. */
  signal?: AbortSignal;
}

// Header layout, as indexes into an Int32Array over the mapping.
const MAGIC = 0; // "SHMQ"
const VERSION = 1;
const CAPACITY = 2; // data area bytes, a multiple of 8
const MAX_MESSAGE = 3;
const TAIL = 16; // byte 64: written by the sender only
const SEND_SEQ = 17;
const RECEIVER_WAITING = 18;
const HEAD = 32; // byte 128: written by the receiver only
const RECV_SEQ = 33;
const SENDER_WAITING = 34;

const HEADER_BYTES = 256;
const RING_MAGIC = 0x51_4d_48_53;
const RING_VERSION = 1;
const RECORD = 8;
const MAX_BYTES = 1 << 30;
const DEFAULT_BYTES = 1 << 20;
const DEFAULT_SPIN = 20;

const align8 = (n: number) => (n + 7) & ~7;

/** The state one end keeps: its mapping, views and fds. */
class Ring {
  readonly what: string;
  readonly capacity: number;
  readonly maxMessage: number;
  readonly header: Int32Array;
  readonly data: Uint8Array;
  readonly view: DataView;
  readonly doorbell: OwnedFd;
  readonly carrier: OwnedFd;
  spin: number;
  peerGone = false;
  #mapping: Mapping | undefined;

  constructor(
    what: string,
    mapping: Mapping,
    carrier: number,
    doorbell: number,
    spin: number,
  ) {
    this.what = what;
    const header = new Int32Array(mapping.buffer, 0, HEADER_BYTES / 4);
    const fail = (detail: string): never => {
      throw new TypeError(`Cannot adopt ${what}: ${detail}`);
    };
    if (mapping.size < HEADER_BYTES) {
      fail(`the shared memory has ${mapping.size} bytes, less than a header`);
    }
    if (Atomics.load(header, MAGIC) !== RING_MAGIC) {
      fail("the shared memory holds no shmQueue ring (bad magic)");
    }
    if (Atomics.load(header, VERSION) !== RING_VERSION) {
      fail(`ring layout version ${Atomics.load(header, VERSION)}`);
    }
    const capacity = Atomics.load(header, CAPACITY);
    const maxMessage = Atomics.load(header, MAX_MESSAGE);
    if (
      capacity < 16 || capacity % 8 !== 0 || capacity > MAX_BYTES + RECORD ||
      HEADER_BYTES + capacity > mapping.size
    ) {
      fail(
        `ring size ${capacity} does not fit the shared memory of ${mapping.size} bytes`,
      );
    }
    if (maxMessage < 0 || maxMessage + RECORD > capacity) {
      fail(
        `largest message ${maxMessage} does not fit the ring of ${capacity}`,
      );
    }
    this.capacity = capacity;
    this.maxMessage = maxMessage;
    this.header = header;
    this.data = new Uint8Array(mapping.buffer, HEADER_BYTES, capacity);
    this.view = new DataView(mapping.buffer, HEADER_BYTES, capacity);
    this.#mapping = mapping;
    this.carrier = new OwnedFd(carrier, what);
    this.doorbell = new OwnedFd(doorbell, what);
    this.spin = spin;
  }

  get closed(): boolean {
    return this.carrier.closed;
  }

  assertOpen(): void {
    if (this.carrier.closed) throw closedError(this.what);
  }

  /** Reads a position the other end may have scribbled on, checked. */
  position(index: number, verb: string): number {
    const value = Atomics.load(this.header, index);
    if (value < 0 || value >= 2 * this.capacity || value % 8 !== 0) {
      throw this.corrupt(
        verb,
        `${
          index === HEAD ? "head" : "tail"
        } ${value} is outside the ring of ${this.capacity}`,
      );
    }
    return value;
  }

  used(head: number, tail: number, verb: string): number {
    const used = (tail - head + 2 * this.capacity) % (2 * this.capacity);
    if (used > this.capacity) {
      throw this.corrupt(
        verb,
        `${used} bytes in use in a ring of ${this.capacity}`,
      );
    }
    return used;
  }

  corrupt(verb: string, detail: string): Deno.errors.InvalidData {
    return new Deno.errors.InvalidData(
      `Cannot ${verb} on shmQueue: corrupt ring: ${detail}`,
    );
  }

  /** Busy-waits up to `spin` µs for `index` to move from `from`. */
  spinOn(index: number, from: number): void {
    if (this.spin <= 0) return;
    const end = performance.now() + this.spin / 1000;
    while (performance.now() < end) {
      if (Atomics.load(this.header, index) !== from) return;
    }
  }

  /** Parks until rung (or hung up): `flag` is raised before and lowered after. */
  async park(
    flag: number,
    watch: number,
    seen: number,
    signal?: AbortSignal,
  ): Promise<void> {
    Atomics.store(this.header, flag, 1);
    if (Atomics.load(this.header, watch) !== seen) {
      Atomics.store(this.header, flag, 0);
      return;
    }
    try {
      await this.doorbell.wait("read", signal);
    } finally {
      if (!this.closed) {
        Atomics.store(this.header, flag, 0);
      }
    }
    if (!drain(this.doorbell.fd)) this.peerGone = true;
  }

  /** Rings the other end if it is parked. */
  wake(flag: number): void {
    if (Atomics.compareExchange(this.header, flag, 1, 0) === 1) {
      if (!ring(this.doorbell.fd)) this.peerGone = true;
    }
  }

  close(): void {
    if (this.carrier.closed) return;
    this.doorbell.close();
    this.carrier.close();
    this.#unmap();
  }

  release(): number {
    const fd = this.carrier.release();
    this.doorbell.close();
    this.#unmap();
    return fd;
  }

  // Every view of this mapping is private to this module and is only used
  // after assertOpen(), so unmapping here can never fault.
  #unmap(): void {
    if (this.#mapping !== undefined) unmap(this.#mapping);
    this.#mapping = undefined;
  }
}

/**
 * The sending end of a {@linkcode shmQueue}. One sender at a time: hand it
 * to another process (`spawn({ fds })`, `UnixSocket.send({ fds })`) and
 * close it here.
 *
 * @example Send and close
 * ```ts
 * import { shmQueue } from "@conduit/ipc";
 *
 * const [tx, rx] = shmQueue();
 * await tx.send(new Uint8Array([1, 2, 3]));
 * tx.close();
 * console.log(await rx.recv()); // Uint8Array(3) [ 1, 2, 3 ]
 * rx.close();
 * ```
 */
export class ShmSender implements Disposable {
  #ring: Ring;
  #serial = new Serial();

  /** @internal Use {@linkcode shmQueue} or `fromFd()`. */
  constructor(ring: Ring) {
    this.#ring = ring;
  }

  /** The largest message this queue takes, in bytes. */
  get maxMessage(): number {
    return this.#ring.maxMessage;
  }

  /**
   * The carrier socket, for interop and for handing the end over; the
   * sender still owns it.
   */
  get rawFd(): number {
    return this.#ring.carrier.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#ring.closed;
  }

  /**
   * Copies `bytes` into the ring as one message, waiting (without blocking
   * the thread) while the ring is too full. Sends are queued, never
   * interleaved.
   *
   * @param bytes The message, 0 to {@linkcode maxMessage} bytes.
   * @param options `signal` to give up waiting for room.
   * @returns Resolves once the message is in the ring.
   * @throws {RangeError} When the message is larger than the ring takes.
   * @throws {Deno.errors.BrokenPipe} When the receiver is gone (its process
   * ended or every copy of it was closed). While there is room, sends to a
   * receiver that died unnoticed still succeed: at most a ring's worth.
   * @throws {Deno.errors.InvalidData} When the ring's shared state is corrupt.
   */
  send(bytes: Uint8Array, options: ShmWaitOptions = {}): Promise<void> {
    if (!(bytes instanceof Uint8Array)) {
      return Promise.reject(
        new TypeError(
          "Cannot send on shmQueue: the message must be a Uint8Array",
        ),
      );
    }
    if (bytes.byteLength > this.#ring.maxMessage) {
      return Promise.reject(
        new RangeError(
          `Cannot send on shmQueue: message of ${bytes.byteLength} bytes exceeds the ring's ${this.#ring.maxMessage}`,
        ),
      );
    }
    return this.#serial.run(() => this.#send(bytes, options.signal));
  }

  async #send(bytes: Uint8Array, signal?: AbortSignal): Promise<void> {
    const r = this.#ring;
    const need = RECORD + align8(bytes.byteLength);
    for (;;) {
      r.assertOpen();
      if (r.peerGone) {
        throw new Deno.errors.BrokenPipe(
          "Cannot send on shmQueue: the receiver is gone",
        );
      }
      const tail = r.position(TAIL, "send");
      let head = r.position(HEAD, "send");
      if (r.capacity - r.used(head, tail, "send") < need) {
        r.spinOn(HEAD, head);
        head = r.position(HEAD, "send");
      }
      if (r.capacity - r.used(head, tail, "send") >= need) {
        this.#write(bytes, tail, need);
        r.wake(RECEIVER_WAITING);
        if (r.peerGone) {
          throw new Deno.errors.BrokenPipe(
            "Cannot send on shmQueue: the receiver is gone",
          );
        }
        return;
      }
      await r.park(SENDER_WAITING, HEAD, head, signal);
    }
  }

  #write(bytes: Uint8Array, tail: number, need: number): void {
    const r = this.#ring;
    const n = bytes.byteLength;
    const at = tail % r.capacity;
    const seq = Atomics.load(r.header, SEND_SEQ);
    r.view.setUint32(at, n, true);
    r.view.setInt32(at + 4, seq, true);
    const start = (at + RECORD) % r.capacity;
    const first = Math.min(n, r.capacity - start);
    r.data.set(first === n ? bytes : bytes.subarray(0, first), start);
    if (first < n) r.data.set(bytes.subarray(first), 0);
    Atomics.store(r.header, SEND_SEQ, (seq + 1) | 0);
    Atomics.store(r.header, TAIL, (tail + need) % (2 * r.capacity));
  }

  /** Lets a pending send keep the process alive (the default). */
  ref(): void {
    this.#ring.doorbell.ref();
  }

  /** Lets the process exit while a send waits for room. */
  unref(): void {
    this.#ring.doorbell.unref();
  }

  /**
   * Closes this process's copy of the sender; a waiting send rejects with
   * `BadResource`. Once every copy is closed, the receiver gets `null` after
   * the last message. Idempotent.
   */
  close(): void {
    this.#ring.close();
  }

  /** Closes the sender. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @internal Gives up the carrier fd without closing it. */
  _release(): number {
    return this.#ring.release();
  }

  /** @internal The ring's views, for tests that play a hostile peer. */
  _ring(): { header: Int32Array; data: Uint8Array } {
    this.#ring.assertOpen();
    return { header: this.#ring.header, data: this.#ring.data };
  }
}

/**
 * The receiving end of a {@linkcode shmQueue}. One receiver at a time; it
 * can travel to another process like the sender.
 *
 * @example Receive until the sender is gone
 * ```ts
 * import { shmQueue } from "@conduit/ipc";
 *
 * const [tx, rx] = shmQueue();
 * await tx.send(new Uint8Array(10));
 * await tx.send(new Uint8Array(20));
 * tx.close();
 * for await (const message of rx) console.log(message.length); // 10, 20
 * rx.close();
 * ```
 */
export class ShmReceiver implements Disposable, AsyncIterable<Uint8Array> {
  #ring: Ring;
  #serial = new Serial();
  #failure: Error | undefined;

  /** @internal Use {@linkcode shmQueue} or `fromFd()`. */
  constructor(ring: Ring) {
    this.#ring = ring;
  }

  /** The largest message this queue takes, in bytes. */
  get maxMessage(): number {
    return this.#ring.maxMessage;
  }

  /**
   * The carrier socket, for interop and for handing the end over; the
   * receiver still owns it.
   */
  get rawFd(): number {
    return this.#ring.carrier.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#ring.closed;
  }

  /**
   * Takes the next message out of the ring, waiting (without blocking the
   * thread, without polling) until one is there.
   *
   * @param options `signal` to give up waiting.
   * @returns A copy of the message, or `null` once the ring is drained and
   * the sender is gone (closed everywhere, or its process ended). A message
   * the sender had not finished when it died is never returned.
   * @throws {Deno.errors.InvalidData} When the ring's shared state is
   * corrupt; every later call throws the same error.
   */
  recv(options: ShmWaitOptions = {}): Promise<Uint8Array | null> {
    return this.#serial.run(() => this.#recv(options.signal));
  }

  async #recv(signal?: AbortSignal): Promise<Uint8Array | null> {
    const r = this.#ring;
    for (;;) {
      r.assertOpen();
      if (this.#failure !== undefined) throw this.#failure;
      try {
        const head = r.position(HEAD, "receive");
        let tail = r.position(TAIL, "receive");
        if (tail === head && !r.peerGone) {
          r.spinOn(TAIL, tail);
          tail = r.position(TAIL, "receive");
        }
        if (tail !== head) return this.#read(head, tail);
        if (r.peerGone) return null;
        await r.park(RECEIVER_WAITING, TAIL, tail, signal);
      } catch (error) {
        if (error instanceof Deno.errors.InvalidData) this.#failure = error;
        throw error;
      }
    }
  }

  #read(head: number, tail: number): Uint8Array {
    const r = this.#ring;
    const used = r.used(head, tail, "receive");
    if (used < RECORD) {
      throw r.corrupt("receive", `${used} bytes published, less than a record`);
    }
    const at = head % r.capacity;
    const n = r.view.getUint32(at, true);
    const seq = r.view.getInt32(at + 4, true);
    const expected = Atomics.load(r.header, RECV_SEQ);
    if (seq !== expected) {
      throw r.corrupt(
        "receive",
        `record ${expected >>> 0} has sequence number ${seq >>> 0}`,
      );
    }
    if (n > r.maxMessage) {
      throw r.corrupt(
        "receive",
        `record of ${n} bytes exceeds the largest message ${r.maxMessage}`,
      );
    }
    const need = RECORD + align8(n);
    if (need > used) {
      throw r.corrupt(
        "receive",
        `record of ${n} bytes runs past the ${used} bytes published`,
      );
    }
    const out = new Uint8Array(n);
    const start = (at + RECORD) % r.capacity;
    const first = Math.min(n, r.capacity - start);
    out.set(r.data.subarray(start, start + first));
    if (first < n) out.set(r.data.subarray(0, n - first), first);
    Atomics.store(r.header, RECV_SEQ, (expected + 1) | 0);
    Atomics.store(r.header, HEAD, (head + need) % (2 * r.capacity));
    r.wake(SENDER_WAITING);
    return out;
  }

  /** Yields messages until {@linkcode recv} returns `null`. */
  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    for (;;) {
      const message = await this.recv();
      if (message === null) return;
      yield message;
    }
  }

  /** Lets a pending receive keep the process alive (the default). */
  ref(): void {
    this.#ring.doorbell.ref();
  }

  /** Lets the process exit while a receive is pending. */
  unref(): void {
    this.#ring.doorbell.unref();
  }

  /**
   * Closes this process's copy of the receiver; a pending receive rejects
   * with `BadResource`. Once every copy is closed, sends that must wait for
   * room reject with `BrokenPipe`. Idempotent.
   */
  close(): void {
    this.#ring.close();
  }

  /** Closes the receiver. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @internal Gives up the carrier fd without closing it. */
  _release(): number {
    return this.#ring.release();
  }

  /** @internal The ring's views, for tests that play a hostile peer. */
  _ring(): { header: Int32Array; data: Uint8Array } {
    this.#ring.assertOpen();
    return { header: this.#ring.header, data: this.#ring.data };
  }
}

/** The two ends of a {@linkcode shmQueue}; `using` closes both. */
export type ShmQueue = [ShmSender, ShmReceiver] & Disposable;

function checkSpin(spin: number): number {
  if (!Number.isFinite(spin) || spin < 0) {
    throw new RangeError(
      `Cannot create shmQueue: spin must be a non-negative number of µs, got ${spin}`,
    );
  }
  return spin;
}

/**
 * Creates a queue of whole messages through a ring in shared memory. Keep
 * one end and hand the other to a child (`spawn({ fds: [rx] })`, then
 * `fromFd(3)` there) or send it over a socket (`send(bytes, { fds: [rx] })`);
 * then close this process's copy.
 *
 * @param options Ring size and spinning.
 * @returns The sender and the receiver.
 * @throws {RangeError} When `bytes` is not an integer from 1 to 1 GiB.
 *
 * @example Hand the receiver to a child
 * ```ts ignore
 * import { shmQueue, spawn } from "@conduit/ipc";
 *
 * const [tx, rx] = shmQueue({ bytes: 4 << 20 });
 * const child = spawn(Deno.execPath(), {
 *   args: ["run", "--allow-ffi", "child.ts"], // fromFd(3) is a ShmReceiver
 *   fds: [rx],
 * });
 * rx.close();
 * await tx.send(new Uint8Array(1 << 20));
 * tx.close();
 * await child.status;
 * ```
 */
export function shmQueue(options: ShmQueueOptions = {}): ShmQueue {
  const bytes = options.bytes ?? DEFAULT_BYTES;
  const spin = checkSpin(options.spin ?? DEFAULT_SPIN);
  if (!Number.isInteger(bytes) || bytes < 1 || bytes > MAX_BYTES) {
    throw new RangeError(
      `Cannot create shmQueue: bytes must be an integer from 1 to ${MAX_BYTES}, got ${bytes}`,
    );
  }
  const capacity = align8(bytes) + RECORD;
  const lib = libc();
  const opened: number[] = [];
  const mappings: Mapping[] = [];
  try {
    const memfd = createMemfd(HEADER_BYTES + capacity, "conduit-shmq");
    opened.push(memfd);
    const first = mapShared(memfd, HEADER_BYTES + capacity, "shmQueue");
    mappings.push(first);
    const header = new Int32Array(first.buffer, 0, HEADER_BYTES / 4);
    header[VERSION] = RING_VERSION;
    header[CAPACITY] = capacity;
    header[MAX_MESSAGE] = bytes;
    Atomics.store(header, MAGIC, RING_MAGIC);
    const second = mapShared(memfd, HEADER_BYTES + capacity, "shmQueue");
    mappings.push(second);

    const pair = (): [number, number] => {
      const fds = new Int32Array(2);
      check(
        "socketpair",
        lib.socketpair(SOCK.AF_UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC, 0, fds),
      );
      opened.push(fds[0], fds[1]);
      return [fds[0], fds[1]];
    };
    const [bellTx, bellRx] = pair();
    const carrier = (role: number, bell: number): number => {
      const [keep, put] = pair();
      sendHello(put, role, [memfd, bell]);
      lib.close(put);
      opened.splice(opened.indexOf(put), 1);
      return keep;
    };
    const carrierTx = carrier(ROLE.sender, bellTx);
    const carrierRx = carrier(ROLE.receiver, bellRx);
    lib.close(memfd);
    opened.length = 0;
    const tx = new ShmSender(
      new Ring("ShmSender", first, carrierTx, bellTx, spin),
    );
    const rx = new ShmReceiver(
      new Ring("ShmReceiver", second, carrierRx, bellRx, spin),
    );
    return Object.assign([tx, rx] as [ShmSender, ShmReceiver], {
      [Symbol.dispose]() {
        tx.close();
        rx.close();
      },
    });
  } catch (error) {
    for (const fd of opened) lib.close(fd);
    for (const mapping of mappings) unmap(mapping);
    throw error;
  }
}

/**
 * Rebuilds a queue end from its carrier fd (what `rawFd` was in the process
 * that handed it over). `fromFd()` does the same for any fd; this one says
 * what it expects.
 *
 * @param fd The carrier fd; the returned end owns it.
 * @param options `spin` as for {@linkcode shmQueue}.
 * @returns The sender or receiver.
 * @throws {TypeError} When `fd` is not a queue end (it is left open then).
 *
 * @example In a child started with `spawn(..., { fds: [rx] })`
 * ```ts ignore
 * import { ShmReceiver, shmQueueFromFd } from "@conduit/ipc";
 *
 * const rx = shmQueueFromFd(3);
 * if (!(rx instanceof ShmReceiver)) throw new TypeError("fd 3 is not a receiver");
 * for await (const message of rx) console.log(message.length);
 * ```
 */
export function shmQueueFromFd(
  fd: number,
  options: Pick<ShmQueueOptions, "spin"> = {},
): ShmSender | ShmReceiver {
  const end = adoptEnd(fd, checkSpin(options.spin ?? DEFAULT_SPIN));
  if (end === null) {
    throw new TypeError(`Cannot adopt fd ${fd}: it is not a shmQueue end`);
  }
  return end;
}

function adoptEnd(fd: number, spin: number): ShmSender | ShmReceiver | null {
  const hello = peekHello(fd);
  if (hello === null) return null;
  const lib = libc();
  const { role, fds } = hello;
  const closeAll = () => {
    for (const f of fds) lib.close(f);
  };
  if (fds.length !== 2 || (role !== ROLE.sender && role !== ROLE.receiver)) {
    closeAll();
    throw new TypeError(
      `Cannot adopt fd ${fd}: a shmQueue end with role ${role} and ${fds.length} fds`,
    );
  }
  const [memfd, bell] = fds;
  const what = role === ROLE.sender ? "ShmSender" : "ShmReceiver";
  let mapping: Mapping | undefined;
  try {
    // Every fd the peer put in the hello is checked before anything maps
    // or waits on it.
    const bellProblem = doorbellProblem(bell, fd);
    if (bellProblem !== undefined) {
      throw new TypeError(`Cannot adopt ${what} from fd ${fd}: ${bellProblem}`);
    }
    if (!sealedAgainstShrink(memfd)) {
      throw new TypeError(
        `Cannot adopt ${what} from fd ${fd}: its shared memory is not sealed against shrinking`,
      );
    }
    const size = fileSize(memfd);
    if (size < HEADER_BYTES || size > HEADER_BYTES + MAX_BYTES + RECORD) {
      throw new TypeError(
        `Cannot adopt ${what} from fd ${fd}: shared memory of ${size} bytes is no shmQueue ring`,
      );
    }
    mapping = mapShared(memfd, size, what);
    const ring = new Ring(what, mapping, fd, bell, spin);
    lib.close(memfd);
    return role === ROLE.sender ? new ShmSender(ring) : new ShmReceiver(ring);
  } catch (error) {
    if (mapping !== undefined) unmap(mapping);
    closeAll();
    throw error;
  }
}

registerAdopter((fd, kind) => {
  if (kind !== "socket") return null;
  return adoptEnd(fd, DEFAULT_SPIN);
}, true);

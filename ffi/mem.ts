/**
 * Memory helpers for FFI calls: C strings, stable buffers and pointers.
 *
 * @module
 */

import { errno, systemError } from "./errors.ts";
import { libc } from "./libc.ts";
import { MMAP } from "./layout.ts";

const encoder = new TextEncoder();

/** Encodes a string as a NUL-terminated C string. */
export function cstr(value: string): Uint8Array<ArrayBuffer> {
  if (value.includes("\0")) {
    throw new TypeError(
      `Cannot pass string to C: it contains a NUL byte: ${
        JSON.stringify(value)
      }`,
    );
  }
  const bytes = encoder.encode(value);
  const out = new Uint8Array(new ArrayBuffer(bytes.length + 1));
  out.set(bytes);
  return out;
}

/**
 * Allocates a zeroed buffer that V8 keeps off-heap at a stable address (an
 * `ArrayBuffer` of at least 64 bytes), so its address may be stored inside a
 * struct passed to C.
 */
export function stableBuffer(size: number): ArrayBuffer {
  return new ArrayBuffer(Math.max(size, 64));
}

/** The address of a stable buffer, as a bigint. */
export function addressOf(buffer: ArrayBuffer | ArrayBufferView): bigint {
  const address = libc().address_of(buffer, buffer, 0n);
  return typeof address === "bigint" ? address : BigInt(address);
}

/** A pointer object for a stable buffer. */
export function pointerOf(
  buffer: ArrayBuffer | ArrayBufferView,
): Deno.PointerValue {
  return Deno.UnsafePointer.of(buffer);
}

/**
 * Reserves `size` bytes of address space (private, anonymous, with no swap
 * set aside): pages are made only where something is written, and
 * `madvise(MADV_DONTNEED)` gives them back. Never unmapped. Null when the
 * kernel refuses (a strict overcommit policy, an address-space limit).
 */
export function reservedArea(
  size: number,
): { pointer: NonNullable<Deno.PointerValue>; address: bigint } | null {
  const pointer = libc().mmap(
    null,
    BigInt(size),
    MMAP.PROT_READ | MMAP.PROT_WRITE,
    MMAP.MAP_PRIVATE | MMAP.MAP_ANONYMOUS | MMAP.MAP_NORESERVE,
    -1,
    0n,
  );
  if (pointer === null) return null;
  const address = BigInt(Deno.UnsafePointer.value(pointer));
  return address === MAP_FAILED ? null : { pointer, address };
}

/**
 * Whether a view's memory may move under the garbage collector: V8 keeps
 * typed arrays of 64 bytes or less inside its heap, where a scavenge can move
 * them, so their address must not be stored in a struct.
 */
export function mayMove(view: ArrayBufferView): boolean {
  return view.buffer.byteLength <= 64;
}

/** What `mmap` returns on failure: `(void *) -1`. */
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

/** Whether `mmap` returned failure (typed as null: no pointer to use). */
function mapFailed(pointer: Deno.PointerValue): pointer is null {
  return pointer === null ||
    BigInt(Deno.UnsafePointer.value(pointer)) === MAP_FAILED;
}

/**
 * Maps `length` bytes of `fd` from `offset`, shared, readable and writable;
 * `null` when `mmap` fails (errno says why).
 */
export function mapFd(
  fd: number,
  length: number,
  offset = 0,
): Deno.PointerObject | null {
  const pointer = libc().mmap(
    null,
    BigInt(length),
    MMAP.PROT_READ | MMAP.PROT_WRITE,
    MMAP.MAP_SHARED,
    fd,
    BigInt(offset),
  );
  return mapFailed(pointer) ? null : pointer;
}

/**
 * Zeroed memory outside the JS heap that is never freed, for a buffer that
 * a call still running on a blocking-pool thread may write to after this
 * isolate is gone (the runtime frees the heap when it ends by an uncaught
 * error while such a call runs). Whole pages; keep them few.
 *
 * @throws When `mmap` fails.
 */
export function lastingArea(
  size: number,
): { buffer: ArrayBuffer; pointer: NonNullable<Deno.PointerValue> } {
  const length = Math.ceil(Math.max(size, 1) / 4096) * 4096;
  const pointer = libc().mmap(
    null,
    BigInt(length),
    MMAP.PROT_READ | MMAP.PROT_WRITE,
    MMAP.MAP_PRIVATE | MMAP.MAP_ANONYMOUS,
    -1,
    0n,
  );
  if (mapFailed(pointer)) throw systemError("mmap", errno(), `${length} bytes`);
  return {
    buffer: Deno.UnsafePointerView.getArrayBuffer(pointer, length),
    pointer,
  };
}

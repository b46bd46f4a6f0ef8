/**
 * Mappings of shared memory files, and how they end.
 *
 * V8 cannot detach an ArrayBuffer made by `getArrayBuffer`, so a view that
 * JS still holds after `close()` would fault if the range were unmapped.
 * {@linkcode retire} therefore maps private zero pages over the same range
 * (`MAP_FIXED`): the shared pages are released at once, a stale view reads
 * zeros and its writes stay private, and the address range is only
 * unmapped once the garbage collector proves no view of it is left.
 *
 * @module
 */

import { libc } from "../ffi/libc.ts";
import { errno, systemError } from "../ffi/errors.ts";
import { MMAP } from "../ffi/layout.ts";
import { mapFd } from "../ffi/mem.ts";

/** A shared mapping of a file and the ArrayBuffer over it. */
export interface Mapping {
  /** Start of the range. */
  pointer: Deno.PointerObject;
  /** Length of the range in bytes. */
  size: number;
  /** A plain ArrayBuffer over the whole range. */
  buffer: ArrayBuffer;
}

/** Maps `size` bytes of `fd` shared, readable and writable. */
export function mapShared(fd: number, size: number, what: string): Mapping {
  const pointer = mapFd(fd, size);
  if (pointer === null) {
    const error = systemError("mmap", errno(), `${what}, ${size} bytes`);
    if (error.code !== "ENOMEM") throw error;
    // No Deno error class means "too big for this process"; a RangeError
    // about the size does, and keeps the system error as its cause.
    throw new RangeError(
      `Cannot map ${what}: ${size} bytes do not fit this process's address space or memory limits (mmap failed: ENOMEM)`,
      { cause: error },
    );
  }
  const buffer = Deno.UnsafePointerView.getArrayBuffer(pointer, size);
  return { pointer, size, buffer };
}

/**
 * Unmaps a range that no JS object can reach any more (module-internal
 * views that are checked for `closed` before every use).
 */
export function unmap(mapping: Mapping): void {
  libc().munmap(mapping.pointer, BigInt(mapping.size));
}

// Unmaps retired ranges once their ArrayBuffer is garbage: from then on no
// view of the range can exist.
const collector = new FinalizationRegistry<
  { pointer: Deno.PointerObject; size: number }
>(
  ({ pointer, size }) => {
    libc().munmap(pointer, BigInt(size));
  },
);

/**
 * Unmaps `mapping` once its ArrayBuffer is garbage; until then the range
 * stays mapped (to the file, or after {@linkcode retire} to zero pages).
 */
export function unmapWhenCollected(mapping: Mapping): void {
  collector.register(mapping.buffer, {
    pointer: mapping.pointer,
    size: mapping.size,
  });
}

/**
 * Drops the shared pages of a mapping whose ArrayBuffer user code may still
 * hold: private zero pages replace them over the same range, so a stale view
 * reads zeros and never faults. Falls back to keeping the shared mapping if
 * the kernel refuses (the memory then lives until the collector runs).
 */
export function retire(mapping: Mapping): void {
  libc().mmap(
    mapping.pointer,
    BigInt(mapping.size),
    MMAP.PROT_READ | MMAP.PROT_WRITE,
    MMAP.MAP_PRIVATE | MMAP.MAP_FIXED | MMAP.MAP_ANONYMOUS |
      MMAP.MAP_NORESERVE,
    -1,
    0n,
  );
}

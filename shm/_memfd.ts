/**
 * The files behind shared memory: memfds made sealed at their size, and
 * what this process can learn of a memory fd it was handed (its size, its
 * seals, its name). Shared by `SharedMemory`, the shmQueue and `fromFd()`.
 *
 * @module
 */

import { libc } from "../ffi/libc.ts";
import { check } from "../ffi/errors.ts";
import { F, MMAP, SEAL, STAT } from "../ffi/layout.ts";
import { cstr } from "../ffi/mem.ts";

/** What a POSIX shared memory name may be (`/dev/shm/<name>`). */
export const SHM_NAME: RegExp = /^[^/\0]{1,250}$/;

/** `fstat` of an fd, as a view of its `struct stat`. */
function statOf(fd: number): DataView {
  const stat = new Uint8Array(STAT.size);
  check("fstat", libc().fstat(fd, stat));
  return new DataView(stat.buffer);
}

/** The size of the file behind an fd, by `fstat`. */
export function fileSize(fd: number): number {
  return Number(statOf(fd).getBigInt64(STAT.fsize, true));
}

/** Who owns the file behind an fd, and its permission bits, by `fstat`. */
export function fileOwnership(fd: number): { uid: number; mode: number } {
  const stat = statOf(fd);
  return {
    uid: stat.getUint32(STAT.uid, true),
    mode: stat.getUint32(STAT.mode, true) & 0o7777,
  };
}

const linkBuffer = new Uint8Array(4096);

/** Where `/proc/self/fd/<fd>` points, or `undefined`. */
export function fdLink(fd: number): string | undefined {
  const n = Number(
    libc().readlink(
      cstr(`/proc/self/fd/${fd}`),
      linkBuffer,
      BigInt(linkBuffer.length),
    ),
  );
  if (n < 0) return undefined;
  return new TextDecoder().decode(linkBuffer.subarray(0, n));
}

/**
 * Creates a CLOEXEC memfd of `size` zero bytes, sealed so that its size can
 * never change: no process that maps it can be made to fault (SIGBUS) by
 * another one truncating it.
 */
export function createMemfd(size: number, label: string): number {
  const lib = libc();
  const fd = check(
    "memfd_create",
    lib.memfd_create(cstr(label), MMAP.MFD_CLOEXEC | MMAP.MFD_ALLOW_SEALING),
  );
  try {
    check("ftruncate", lib.ftruncate(fd, BigInt(size)));
    check(
      "fcntl(F_ADD_SEALS)",
      lib.fcntl(fd, F.ADD_SEALS, SEAL.SHRINK | SEAL.GROW | SEAL.SEAL),
    );
  } catch (error) {
    lib.close(fd);
    throw error;
  }
  return fd;
}

/** Whether an fd's size is sealed against shrinking (a memfd made here). */
export function sealedAgainstShrink(fd: number): boolean {
  const seals = libc().fcntl(fd, F.GET_SEALS, 0);
  return seals !== -1 && (seals & SEAL.SHRINK) !== 0;
}

/**
 * Why memory behind `fd` can shrink under a mapping, or `undefined` when it
 * is sealed against shrinking (`F_GET_SEALS` has `F_SEAL_SHRINK`; seals are
 * never removed once set).
 */
export function shrinkRisk(fd: number): string | undefined {
  const seals = libc().fcntl(fd, F.GET_SEALS, 0);
  if (seals === -1) {
    return "its file takes no seals (it is not a memfd), so its size can shrink";
  }
  if ((seals & SEAL.SHRINK) === 0) {
    return "it is not sealed against shrinking (no F_SEAL_SHRINK)";
  }
  return undefined;
}

/**
 * The registry behind `fromFd()`: each endpoint module registers how it
 * recognises its kind of fd, so `fromFd()` needs no import of theirs at
 * evaluation time. Modules that adopt received fds call
 * {@linkcode adoptFd} (and import `from_fd.ts` so every adopter is
 * registered).
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { check, errno, systemError } from "./ffi/errors.ts";
import { F, O, S, STAT } from "./ffi/layout.ts";
import type { Endpoint } from "./from_fd.ts";

/** What kind of file an fd refers to, by `fstat`. */
export type FdKind = "fifo" | "socket" | "file" | "other";

/** The kind of file behind an fd, and its open access mode. */
export function describeFd(fd: number): { kind: FdKind; access: number } {
  const lib = libc();
  const stat = new Uint8Array(STAT.size);
  check("fstat", lib.fstat(fd, stat));
  const mode = new DataView(stat.buffer).getUint32(STAT.mode, true) & S.IFMT;
  const access = check("fcntl(F_GETFL)", lib.fcntl(fd, F.GETFL, 0)) &
    O.ACCMODE;
  const kind: FdKind = mode === S.IFIFO
    ? "fifo"
    : mode === S.IFSOCK
    ? "socket"
    : mode === S.IFREG
    ? "file"
    : "other";
  return { kind, access };
}

/** Sets FD_CLOEXEC on an fd, so it does not leak into unrelated children. */
export function setCloexec(fd: number): void {
  const lib = libc();
  const flags = check("fcntl(F_GETFD)", lib.fcntl(fd, F.GETFD, 0));
  if ((flags & F.FD_CLOEXEC) === 0) {
    check("fcntl(F_SETFD)", lib.fcntl(fd, F.SETFD, flags | F.FD_CLOEXEC));
  }
}

/** Returns the endpoint for an fd of its kind, or `null`. */
export type Adopter = (
  fd: number,
  kind: FdKind,
  access: number,
) => Endpoint | null;
const adopters: Adopter[] = [];

/**
 * Wraps an fd in the endpoint that fits it, asking each registered adopter
 * in turn, and makes it CLOEXEC. No check of where the fd came from: this
 * is the path of fds this process received (SCM_RIGHTS fds arrive
 * CLOEXEC); `fromFd()` adds the check for fds named by a caller.
 *
 * @throws {TypeError} When no endpoint fits the fd.
 */
export function adoptFd(fd: number): Endpoint {
  const { kind, access } = describeFd(fd);
  for (const adopter of adopters) {
    const endpoint = adopter(fd, kind, access);
    if (endpoint !== null) {
      setCloexec(fd);
      return endpoint;
    }
  }
  throw new TypeError(
    `Cannot adopt fd ${fd}: it is ${
      KIND_NAMES[kind]
    }, and no endpoint fits it (fromFd() takes pipe ends, unix sockets, shared-memory queue ends and sealed shared memory)`,
  );
}

const KIND_NAMES: Record<FdKind, string> = {
  fifo: "a pipe",
  socket: "a socket",
  file: "a regular file",
  other:
    "neither a pipe, a socket nor a regular file (a terminal, a device, a directory, ...)",
};

/** Whether an fd is close-on-exec; `BadResource` when it is not open. */
export function isCloexec(fd: number): boolean {
  const flags = libc().fcntl(fd, F.GETFD, 0);
  if (flags === -1) {
    const error = systemError("fcntl(F_GETFD)", errno());
    if (error.code !== "EBADF") throw error;
    throw new Deno.errors.BadResource(
      `Cannot adopt fd ${fd}: it is not open in this process`,
      { cause: error },
    );
  }
  return (flags & F.FD_CLOEXEC) !== 0;
}

/**
 * Lets an endpoint module (sockets, shared memory, channels) teach
 * `fromFd()` its kind of fd. An adopter may throw a `TypeError` for an fd
 * of its kind that it refuses.
 */
export function registerAdopter(adopter: Adopter, first = false): void {
  // A more specific kind (a shared-memory queue end is also a socket) asks
  // before the general one.
  if (first) adopters.unshift(adopter);
  else adopters.push(adopter);
}

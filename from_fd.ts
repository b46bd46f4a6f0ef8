/**
 * {@linkcode fromFd}: the endpoint for an inherited or received fd.
 *
 * @example In a child started with `spawn(..., { fds: [writer] })`
 * ```ts ignore
 * import { fromFd, PipeWriter } from "@conduit/ipc";
 *
 * const out = fromFd(3);
 * if (!(out instanceof PipeWriter)) throw new TypeError("fd 3 is not a pipe writer");
 * await out.write(new TextEncoder().encode("hello parent\n"));
 * ```
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { check } from "./ffi/errors.ts";
import { F, O, S, STAT } from "./ffi/layout.ts";
import { PipeReader, PipeWriter } from "./pipe.ts";
import type { UnixListener, UnixSocket } from "./socketpair.ts";
import type { SharedMemory, ShmReceiver, ShmSender } from "./shm/mod.ts";
import type { Receiver, Sender } from "./channel.ts";

/**
 * Every endpoint class {@linkcode fromFd} can return. Sockets (by `SO_TYPE`:
 * a listening one as `UnixListener`) are recognised once socketpair.ts is
 * loaded, as it is through mod.ts.
 */
export type Endpoint =
  | PipeReader
  | PipeWriter
  | UnixSocket
  | UnixListener
  | SharedMemory
  | ShmSender
  | ShmReceiver
  | Sender<unknown>
  | Receiver<unknown>;

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

type Adopter = (fd: number, kind: FdKind, access: number) => Endpoint | null;
const adopters: Adopter[] = [];

/**
 * @internal Lets an endpoint module (sockets, shared memory) teach
 * {@linkcode fromFd} its kind of fd without a circular import.
 */
export function registerAdopter(adopter: Adopter, first = false): void {
  // A more specific kind (a shared-memory queue end is also a socket) asks
  // before the general one.
  if (first) adopters.unshift(adopter);
  else adopters.push(adopter);
}

/**
 * Wraps an fd this process inherited or received in the endpoint that fits
 * it: a pipe's read or write end by its access mode (and any other kinds that
 * loaded endpoint modules recognise). The fd is made CLOEXEC, so it is not
 * passed on to later children unless handed over explicitly.
 *
 * @param fd The fd; the returned endpoint owns it.
 * @returns The endpoint.
 * @throws {Deno.errors.BadResource} When `fd` is not open.
 * @throws {TypeError} When the fd is of a kind no endpoint fits.
 *
 * @example Read from an inherited pipe
 * ```ts ignore
 * import { fromFd, PipeReader } from "@conduit/ipc";
 *
 * const input = fromFd(3) as PipeReader;
 * const text = await new Response(input.readable).text();
 * ```
 */
export function fromFd(fd: number): Endpoint {
  if (!Number.isInteger(fd) || fd < 0) {
    throw new TypeError(`Cannot adopt fd: ${fd} is not a valid fd number`);
  }
  const { kind, access } = describeFd(fd);
  for (const adopt of adopters) {
    const endpoint = adopt(fd, kind, access);
    if (endpoint !== null) {
      setCloexec(fd);
      return endpoint;
    }
  }
  if (kind === "fifo") {
    if (access === O.RDONLY) {
      setCloexec(fd);
      return new PipeReader(fd);
    }
    if (access === O.WRONLY) {
      setCloexec(fd);
      return new PipeWriter(fd);
    }
    throw new TypeError(
      `Cannot adopt fd ${fd}: a FIFO opened for reading and writing has no single direction`,
    );
  }
  throw new TypeError(
    `Cannot adopt fd ${fd}: no endpoint fits a ${kind} fd`,
  );
}

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

import { O } from "./ffi/layout.ts";
import { adopt, describeFd, setCloexec } from "./_adopt.ts";
import { PipeReader, PipeWriter } from "./pipe.ts";
// Loaded for their adopters, so fromFd() knows every kind of endpoint even
// when imported on its own.
import "./socketpair.ts";
import "./shm/mod.ts";
import "./channel.ts";
import type { UnixListener, UnixSocket } from "./socketpair.ts";
import type { SharedMemory, ShmReceiver, ShmSender } from "./shm/mod.ts";
import type { Receiver, Sender } from "./channel.ts";

/**
 * Every endpoint class {@linkcode fromFd} can return: a socket by `SO_TYPE`
 * (a listening one as `UnixListener`), a memfd as `SharedMemory`, queue and
 * channel ends by their marker.
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

/**
 * Wraps an fd this process inherited or received in the endpoint that fits
 * it: a pipe's read or write end by its access mode, a socket by its type,
 * a memfd as `SharedMemory`, a queue or channel end as that end. The fd is made CLOEXEC, so it is not
 * passed on to later children unless handed over explicitly.
 *
 * @param fd The fd; the returned endpoint owns it.
 * @returns The endpoint.
 * @throws {Deno.errors.BadResource} When `fd` is not open.
 * @throws {TypeError} When the fd is of a kind no endpoint fits.
 * @throws {RangeError} When a memfd is empty (it cannot be mapped).
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
  const endpoint = adopt(fd, kind, access);
  if (endpoint !== null) {
    setCloexec(fd);
    return endpoint;
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

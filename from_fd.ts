/**
 * {@linkcode fromFd}: the endpoint for an fd this process inherited.
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

import { adoptFd, type Endpoint, isCloexec } from "./_adopt.ts";
import { checkNumberOption } from "./_socket_options.ts";

export type { Endpoint };

/** Options for {@linkcode fromFd}. */
export interface FromFdOptions {
  /**
   * Adopt the fd even though it is close-on-exec. An fd handed to this
   * process through exec (`spawn({ fds })` in the parent, a shell
   * redirection) is never close-on-exec; one that is was opened by this
   * process, maybe by Deno itself, whose internal fds must not be wrapped
   * (closing one can crash the runtime). Default `false`: such an fd is
   * refused.
   */
  allowCloexec?: boolean;
}

/**
 * Wraps an fd this process inherited in the endpoint that fits it: a
 * pipe's read or write end by its access mode, a socket by its type, a
 * memfd as `SharedMemory`, a queue or channel end as that end. The fd is
 * made CLOEXEC, so it is not passed on to later children unless handed
 * over explicitly.
 *
 * An inherited fd is not close-on-exec; a close-on-exec fd was opened by
 * this process (perhaps by Deno for its own use) and is refused unless
 * `allowCloexec` says otherwise. Calling `fromFd()` twice on one fd is
 * refused the same way, since the first call made it CLOEXEC. Fds received
 * with `recv()` are endpoints already.
 *
 * @param fd The fd; the returned endpoint owns it.
 * @param options Whether a close-on-exec fd may be adopted.
 * @returns The endpoint.
 * @throws {Deno.errors.BadResource} When `fd` is not open.
 * @throws {TypeError} When the fd is close-on-exec (without
 * `allowCloexec`), or of a kind no endpoint fits; the fd is left open.
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
export function fromFd(fd: number, options: FromFdOptions = {}): Endpoint {
  checkNumberOption(fd, "fd", "adopt fd");
  if (!Number.isInteger(fd) || fd < 0) {
    throw new TypeError(`Cannot adopt fd: ${fd} is not a valid fd number`);
  }
  if (options?.allowCloexec !== true && isCloexec(fd)) {
    throw new TypeError(
      `Cannot adopt fd ${fd}: it is close-on-exec, so it was not handed to this process ` +
        "through exec (did the parent pass it, as in spawn(..., { fds: [...] })?), or " +
        "fromFd() adopted it already (an fd has one owner: the endpoint returned then); " +
        "one opened here, perhaps by Deno itself, is adopted only with " +
        "{ allowCloexec: true }",
    );
  }
  return adoptFd(fd);
}

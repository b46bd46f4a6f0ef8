/**
 * Inter-process communication for Deno on Linux, through libc: pipes, socket
 * pairs, named local sockets, fd passing, and children that inherit extra
 * fds, each readable and writable as Web Streams.
 *
 * Everything runs with `--allow-ffi`. No call blocks the JS thread (except
 * the `*Sync` forms): reads and writes are tried without waiting, and one
 * poller per process waits for every fd at once.
 *
 * - {@linkcode pipe}, {@linkcode duplex}: unnamed pipes
 * - {@linkcode spawn}: children that get endpoints as fd 3, 4, ...
 * - {@linkcode fromFd}: the endpoint for an inherited or received fd
 * - {@linkcode socketpair}, {@linkcode listen}, {@linkcode connect}: Unix
 *   domain sockets, with fd passing on every socket type
 * - {@linkcode SharedMemory}, {@linkcode shmQueue}: shared memory and a
 *   message ring in it, with wake-ups through Deno's event loop or the
 *   poller
 * - {@linkcode channel}, {@linkcode bytesChannel}, {@linkcode ReceiverSet}:
 *   typed channels of structured-clone values and endpoints
 * - {@linkcode OneShotServer}, {@linkcode ChannelServer},
 *   {@linkcode connectOneShot}: bootstrap a channel from a name
 * - {@linkcode settled}: await the poller going idle (for sanitized tests)
 *
 * @example A child writes to a pipe it inherited as fd 3
 * ```ts
 * import { pipe, spawn } from "@conduit/ipc";
 *
 * const { reader, writer } = pipe();
 * const child = spawn("sh", { args: ["-c", "echo hello >&3"], fds: [writer] });
 * writer.close();
 * console.log(await new Response(reader.readable).text()); // "hello\n"
 * await child.status;
 * ```
 *
 * @module
 */

export * from "./pipe.ts";
export * from "./spawn.ts";
export * from "./from_fd.ts";
export * from "./socketpair.ts";
export * from "./shm/mod.ts";
export {
  settled,
  type WakePath,
  wakePath,
  type WakePathName,
} from "./ffi/poller.ts";
export * from "./channel.ts";
export * from "./oneshot.ts";

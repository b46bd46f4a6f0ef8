/**
 * Unix domain sockets: connected pairs ({@linkcode socketpair}), named local
 * sockets for unrelated processes ({@linkcode listen}, {@linkcode connect}),
 * and fd passing (SCM_RIGHTS) on every socket type.
 *
 * Every socket is CLOEXEC and stays blocking at the open file description,
 * so a child or a peer handed one sees an ordinary socket; this process
 * sends and receives with per-call `MSG_DONTWAIT` and waits in the shared
 * poller, never blocking its JS thread (except in the `*Sync` forms).
 *
 * - `"stream"` sockets carry bytes like pipes, in both directions:
 *   `read`/`write`, `readable`/`writable`, half-close with `shutdown()`.
 * - `"dgram"` and `"seqpacket"` sockets carry whole messages: each `send()`
 *   arrives as one `recv()`, never merged, split or truncated.
 * - Any type carries fds: `send(bytes, { fds })` passes endpoints, and
 *   `recv()` returns them as live endpoints of this process.
 *
 * @example A message socket pair
 * ```ts
 * import { socketpair } from "@conduit/ipc/socketpair";
 *
 * const [a, b] = socketpair({ type: "seqpacket" });
 * await a.send(new TextEncoder().encode("hello"));
 * const message = await b.recv();
 * console.log(new TextDecoder().decode(message!.data)); // "hello"
 * a.close();
 * b.close();
 * ```
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { check } from "./ffi/errors.ts";
import { SOCK } from "./ffi/layout.ts";
// Received fds become endpoints of every kind: see _received.ts.
import "./_adopt.ts";
import {
  checkNumberOption,
  checkOptionsObject,
  checkType,
  KERNEL_TYPES,
  setIntOption,
  type SocketType,
} from "./_socket_options.ts";
import { UnixSocket } from "./unix_socket.ts";

export * from "./unix_socket.ts";
export * from "./unix_listener.ts";
export * from "./connect.ts";
export type { ReadOptions } from "./_byte_io.ts";
export type { Endpoint } from "./_adopt.ts";
export type { FdEndpoint } from "./spawn.ts";
export type { UnixAddress } from "./_unix_addr.ts";

/** Options for {@linkcode socketpair}. */
export interface SocketPairOptions {
  /** `"stream"` (the default), `"dgram"` or `"seqpacket"`. */
  type?: SocketType;
  /**
   * Send and receive buffer sizes in bytes for both ends (`SO_SNDBUF`,
   * `SO_RCVBUF`). The kernel caps them at `net.core.wmem_max` and
   * `rmem_max`. The send buffer bounds the largest datagram or packet.
   * Default: the kernel's. Sizes in bytes are named `bytes` or `…Bytes`
   * across the module (like `pipe({ bytes })`).
   */
  bufferBytes?: number;
  /**
   * The old name of {@linkcode SocketPairOptions.bufferBytes}.
   *
   * @deprecated Use `bufferBytes`; `bufferSize` will be removed in 0.2.0.
   */
  bufferSize?: number;
}

/** The buffer size asked for, under its name or its deprecated one, checked. */
function bufferBytesOf(options: SocketPairOptions): number | undefined {
  const { bufferBytes, bufferSize } = options;
  if (
    bufferBytes !== undefined && bufferSize !== undefined &&
    bufferBytes !== bufferSize
  ) {
    throw new TypeError(
      `Cannot create socket pair: bufferBytes (${bufferBytes}) and its deprecated name bufferSize (${bufferSize}) disagree; pass bufferBytes only`,
    );
  }
  const value = bufferBytes !== undefined ? bufferBytes : bufferSize;
  if (value === undefined) return undefined;
  const name = bufferBytes !== undefined ? "bufferBytes" : "bufferSize";
  checkNumberOption(value, name, "create socket pair");
  if (!Number.isInteger(value) || value <= 0 || value > 2 ** 30) {
    throw new RangeError(
      `Cannot create socket pair: ${name} must be a positive integer up to 2^30, got ${value}`,
    );
  }
  return value;
}

/** Two connected sockets; `using` closes both. */
export type SocketPair = [UnixSocket, UnixSocket] & Disposable;

/**
 * Creates two connected Unix sockets: what one sends, the other receives.
 * Keep one and hand the other to a child (`spawn({ fds })`) or send it to
 * another process.
 *
 * @param options The socket type and buffer size.
 * @returns The two sockets, CLOEXEC; `using` closes both.
 *
 * @example Bytes both ways over a stream pair
 * ```ts
 * import { socketpair } from "@conduit/ipc/socketpair";
 *
 * using pair = socketpair({ type: "stream" });
 * const [a, b] = pair;
 * await a.write(new TextEncoder().encode("ping"));
 * const buf = new Uint8Array(16);
 * console.log(await b.read(buf)); // 4
 * ```
 */
export function socketpair(options: SocketPairOptions = {}): SocketPair {
  checkOptionsObject(options, "create socket pair");
  const type = checkType(options.type ?? "stream", "create socket pair");
  const bufferBytes = bufferBytesOf(options);
  const lib = libc();
  const fds = new Int32Array(2);
  check(
    "socketpair",
    lib.socketpair(SOCK.AF_UNIX, KERNEL_TYPES[type] | SOCK.CLOEXEC, 0, fds),
  );
  try {
    if (bufferBytes !== undefined) {
      for (const fd of fds) {
        setIntOption(fd, SOCK.SO_SNDBUF, "SO_SNDBUF", bufferBytes);
        setIntOption(fd, SOCK.SO_RCVBUF, "SO_RCVBUF", bufferBytes);
      }
    }
  } catch (error) {
    lib.close(fds[0]);
    lib.close(fds[1]);
    throw error;
  }
  const a = new UnixSocket(fds[0], type);
  const b = new UnixSocket(fds[1], type);
  return Object.assign([a, b] as [UnixSocket, UnixSocket], {
    [Symbol.dispose]() {
      a.close();
      b.close();
    },
  });
}

/**
 * Bootstrapping a channel with a process that has nothing but a name:
 * {@linkcode OneShotServer} (one client, like ipc-channel's
 * `IpcOneShotServer`) and {@linkcode ChannelServer} (any number of
 * clients), both reached with {@linkcode connectOneShot}.
 *
 * A server listens on a random 128-bit name in Linux's abstract socket
 * namespace: no file is created, and the name is gone when the server
 * closes. Abstract sockets have no permissions, so the server checks each
 * connection's `SO_PEERCRED` and drops those of other users, and a client
 * checks the server's the same way before it sends anything: a name
 * released by its server and taken by another user gets nothing.
 *
 * @example A child sends the first message
 * ```ts ignore
 * import { OneShotServer, spawn } from "@conduit/ipc";
 *
 * const server = new OneShotServer<string>();
 * const child = spawn(Deno.execPath(), {
 *   args: ["run", "--allow-ffi", "child.ts", server.name],
 * });
 * const [rx, first] = await server.accept({ timeout: 5000 });
 * console.log(first);
 * rx.close();
 * await child.status;
 * // child.ts:
 * // const tx = await connectOneShot<string>(Deno.args[0]);
 * // await tx.send("hello");
 * ```
 *
 * @module
 */

import { FRAME, header, sendFrame } from "./_channel_wire.ts";
import { type ChannelOptions, type Receiver, Sender } from "./channel.ts";
import { connect, type ExpectedServer } from "./socketpair.ts";
import { inspectEndpoint } from "./_inspect.ts";
import { ChannelClosedError } from "./_channel_error.ts";
import { releaseFd } from "./_keys.ts";
import { closedError, ERRNO, type SystemError } from "./ffi/errors.ts";
import { DEFAULT_CAPACITY } from "./channel/_connection.ts";
import { checkNumberOption } from "./_socket_options.ts";
import {
  acceptClient,
  limits,
  type Listening,
  listenOnRandomName,
  PREFIX,
  type ServerAcceptOptions,
  serverFields,
  type ServerOptions,
} from "./_server.ts";

export type { ServerAcceptOptions, ServerOptions } from "./_server.ts";
export { ChannelServer } from "./channel_server.ts";

// The channel's modes: values, or bytes without serialization.
const MODE_VALUE = 0;
const MODE_BYTES = 1;

/**
 * Options for {@linkcode connectOneShot}. The server must run as this
 * process's user unless `expectUid` says otherwise: a server name released
 * by its server and taken by another user gets nothing.
 */
export interface ConnectOneShotOptions extends ChannelOptions, ExpectedServer {
  /**
   * `"values"` (the default) for a channel of structured-clone values, as
   * `channel()` makes; `"bytes"` for `Uint8Array` messages without
   * serialization, as `bytesChannel()` makes.
   */
  mode?: "values" | "bytes";
  /**
   * The old way to ask for a bytes channel: `true` is `mode: "bytes"`.
   *
   * @deprecated Use `mode: "bytes"` (a `bytes` option is a size in bytes
   * elsewhere in the module); `bytes` will be removed in 0.2.0.
   */
  bytes?: boolean;
  /** Aborting it gives up while the server's queue is full. */
  signal?: AbortSignal;
}

/**
 * A server for exactly one client, like ipc-channel's `IpcOneShotServer`:
 * give its {@linkcode name} to another process (an argument, an
 * environment variable), which calls {@linkcode connectOneShot} and sends;
 * {@linkcode accept} returns the receiver and the first message.
 *
 * The server is used up by `accept()`, whatever its outcome: it stops
 * listening and its name is free again.
 *
 * @typeParam T The message type.
 *
 * @example Within one process
 * ```ts
 * import { connectOneShot, OneShotServer } from "@conduit/ipc/oneshot";
 *
 * const server = new OneShotServer<string>();
 * const accepting = server.accept({ timeout: 5000 });
 * const tx = await connectOneShot<string>(server.name);
 * await tx.send("hello");
 * const [rx, first] = await accepting;
 * console.log(first); // "hello"
 * tx.close();
 * rx.close();
 * ```
 */
export class OneShotServer<T> implements Disposable {
  #server: Listening;
  #used = false;
  #ref = true;
  /** The client's receiver while `accept()` waits for its first message. */
  #first: Receiver<T> | undefined;
  /** Aborted by `close()` while the first message is awaited. */
  #closeWait: AbortController | undefined;

  /**
   * Starts listening on a fresh random name.
   *
   * @param options Who may connect (default: this user only), and the
   * receivers' decode limits.
   */
  constructor(options: ServerOptions = {}) {
    this.#server = listenOnRandomName(options);
  }

  /**
   * The name to pass to {@linkcode connectOneShot}: random, but not secret
   * (every user can list abstract names); other users' connections are
   * dropped.
   */
  get name(): string {
    return this.#server.name;
  }

  /**
   * Whether the server stopped listening: {@linkcode close} was called, or
   * {@linkcode accept} got its client or gave up.
   */
  get closed(): boolean {
    return this.#server.listener.closed;
  }

  /**
   * Shows the kind, the listening fd, the state and the name, as
   * `OneShotServer { fd: 9, state: "open", name: "conduit-oneshot/…" }`,
   * and `accepting: true` while {@linkcode accept} waits.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    const fields = serverFields(
      this.#server.listener,
      this.#server.name,
      this.#ref,
    );
    return inspectEndpoint(
      "OneShotServer",
      this.#used && !this.#server.listener.closed
        ? { ...fields, accepting: true }
        : fields,
      inspect,
      options,
    );
  }

  /**
   * Waits for the client and its first message. Connections of other
   * users are dropped and waiting goes on.
   *
   * @param options An abort signal and a timeout in milliseconds.
   * @returns The receiver and the first message.
   * @throws {Deno.errors.TimedOut} When `timeout` passes first.
   * @throws The signal's reason when it is aborted.
   * @throws {Deno.errors.BadResource} When the server was already used.
   * @throws {ChannelClosedError} When the client that connected closed
   * without sending a message.
   *
   * @example Give up when no client comes
   * ```ts
   * import { OneShotServer } from "@conduit/ipc/oneshot";
   *
   * const server = new OneShotServer<string>();
   * try {
   *   await server.accept({ timeout: 50 });
   * } catch (error) {
   *   console.log(error instanceof Deno.errors.TimedOut); // true
   * }
   * console.log(server.closed); // true: used up either way
   * ```
   */
  async accept(
    options: ServerAcceptOptions = {},
  ): Promise<[Receiver<T>, T]> {
    if (this.#used) {
      throw new Deno.errors.BadResource(
        "Cannot accept on OneShotServer: accept() was already called, and a OneShotServer serves one client (use ChannelServer for more)",
      );
    }
    let connected = false;
    // Options checked before the one accept is taken: a bad one leaves the
    // server as it was.
    const { signal, done } = limits(
      options,
      "accept on OneShotServer",
      () =>
        connected
          ? "a client connected but sent no message"
          : "no client connected",
    );
    this.#used = true;
    const listener = this.#server.listener;
    try {
      signal.throwIfAborted();
      const rx = await acceptClient<T>(
        "OneShotServer",
        listener,
        signal,
        this.#server.allow,
        this.#server.decodeLimits,
      );
      connected = true;
      listener.close();
      if (!this.#ref) rx.unref();
      this.#first = rx;
      // close() ends a receive still waiting; one that took the message
      // already (and yields a turn after a large one) resolves.
      const closing = new AbortController();
      this.#closeWait = closing;
      try {
        const first = await rx.recv({
          signal: AbortSignal.any([signal, closing.signal]),
        });
        // The receiver is the caller's now: it keeps the process alive
        // while it waits, as any receiver does.
        rx.ref();
        return [rx, first];
      } catch (error) {
        rx.close();
        if (closing.signal.aborted) {
          throw new Deno.errors.BadResource(
            "Cannot accept on OneShotServer: it was closed while waiting for the client's first message",
            { cause: error },
          );
        }
        if (error instanceof ChannelClosedError) {
          throw new ChannelClosedError(
            "Cannot accept on OneShotServer: the client closed its sender before its first message",
            { cause: error },
          );
        }
        throw error;
      } finally {
        this.#first = undefined;
        this.#closeWait = undefined;
      }
    } finally {
      done();
      listener.close();
    }
  }

  /** Lets a pending accept keep the process alive (the default). */
  ref(): void {
    this.#ref = true;
    this.#server.listener.ref();
    this.#first?.ref();
  }

  /**
   * Lets the process exit while an accept is pending (waiting for the
   * client, or for its first message).
   */
  unref(): void {
    this.#ref = false;
    this.#server.listener.unref();
    this.#first?.unref();
  }

  /**
   * Stops listening; a pending `accept()` rejects with `BadResource`, also
   * once its client has connected and it waits for the first message.
   * Idempotent.
   */
  close(): void {
    this.#server.listener.close();
    const closing = this.#closeWait;
    closing?.abort(closedError("OneShotServer"));
  }

  /** Stops listening. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The channel mode `connectOneShot()` asks for, from `mode` or `bytes`. */
function channelMode(options: ConnectOneShotOptions): number {
  const { mode, bytes } = options;
  if (mode !== undefined && mode !== "values" && mode !== "bytes") {
    throw new TypeError(
      `Cannot connect to server: mode must be "values" or "bytes", got ${
        JSON.stringify(mode)
      }`,
    );
  }
  if (bytes !== undefined && typeof bytes !== "boolean") {
    throw new TypeError(
      `Cannot connect to server: bytes must be a boolean, got ${typeof bytes}`,
    );
  }
  if (
    mode !== undefined && bytes !== undefined && (mode === "bytes") !== bytes
  ) {
    throw new TypeError(
      `Cannot connect to server: mode "${mode}" and its deprecated form bytes: ${bytes} disagree; pass mode only`,
    );
  }
  return mode === "bytes" || bytes === true ? MODE_BYTES : MODE_VALUE;
}

/**
 * Connects to a {@linkcode OneShotServer} or {@linkcode ChannelServer} by
 * name and returns a sender of a new channel whose receiver the server
 * gets.
 *
 * @typeParam T The message type.
 * @param name The server's name.
 * @param options The sender's capacity, its mode (values or bytes), the
 * expected server, an abort signal.
 * @returns The sender.
 * @throws {Deno.errors.ConnectionRefused} When no server has that name, or
 * when the server drops the connection at once (it does not take this user).
 * @throws {Deno.errors.PermissionDenied} When the server is not the
 * expected user (by default this process's) or process; nothing is sent.
 *
 * @example In a child given the server's name
 * ```ts ignore
 * import { connectOneShot } from "@conduit/ipc/oneshot";
 *
 * const tx = await connectOneShot<string>(Deno.args[0]);
 * await tx.send("hello from the child");
 * tx.close();
 * ```
 */
export async function connectOneShot<T>(
  name: string,
  options: ConnectOneShotOptions = {},
): Promise<Sender<T>> {
  if (typeof name !== "string" || !name.startsWith(PREFIX)) {
    throw new TypeError(
      `Cannot connect to server: ${JSON.stringify(name)} is not a server name`,
    );
  }
  const capacity = options.capacity ?? DEFAULT_CAPACITY;
  checkNumberOption(capacity, "capacity", "connect to server");
  if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1_000_000) {
    throw new RangeError(
      `Cannot connect to server: capacity must be an integer from 1 to 1000000, got ${capacity}`,
    );
  }
  const mode = channelMode(options);
  const socket = await connect({
    abstract: name,
    type: "seqpacket",
    signal: options.signal,
    expectUid: options.expectUid,
    expectPid: options.expectPid,
  });
  try {
    // The hello is the connection's first packet; a fresh socket has room.
    if (!sendFrame(socket.rawFd, [header(FRAME.HELLO, capacity, mode)], [])) {
      throw new Deno.errors.WouldBlock(
        "Cannot connect to server: the new connection is full",
      );
    }
  } catch (error) {
    socket.close();
    const code = (error as Partial<SystemError>)?.errno;
    if (
      code === ERRNO.EPIPE || code === ERRNO.ECONNRESET ||
      code === ERRNO.ENOTCONN
    ) {
      // The server took the connection and dropped it at once: it takes
      // its own user's connections only (or those its allowUid lets in).
      throw new Deno.errors.ConnectionRefused(
        `Cannot connect to server: it dropped the connection before the hello (${
          (error as SystemError).code
        }): it takes only the users its allowUid lets in (by default its own)`,
        { cause: error },
      );
    }
    throw error;
  }
  return new Sender<T>(socket[releaseFd](), capacity, mode);
}

/**
 * Named local sockets, the server side: {@linkcode listen} on a filesystem
 * path or a Linux abstract name, and the {@linkcode UnixListener} that
 * accepts connections from other processes.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import {
  check,
  ERRNO,
  errno,
  ioErrno,
  retry,
  systemError,
} from "./ffi/errors.ts";
import { POLL, SOCK } from "./ffi/layout.ts";
import { OwnedFd } from "./ffi/fd.ts";
import { flushBeforeSpin } from "./ffi/spin.ts";
import { pollNow } from "./_scm.ts";
import {
  boundAddress,
  encodeAddress,
  type FileId,
  publishPath,
  type UnixAddress,
  unpublishPath,
} from "./_unix_addr.ts";
import {
  adoptedSocketType,
  checkNumberOption,
  checkOptionsObject,
  KERNEL_TYPES,
  type ListenType,
  listenType,
  socketNames,
  type SocketType,
  typeName,
} from "./_socket_options.ts";
import { UnixSocket } from "./unix_socket.ts";
import { requirePath } from "./_permissions.ts";
import { inspectEndpoint } from "./_inspect.ts";
import { checkSignal } from "./_byte_io.ts";
import {
  FIRST_SHORTAGE_PAUSE_MS,
  pauseOnShortage,
  TurnSlice,
  yieldTurn,
} from "./_turn.ts";
import { type EndpointKind, endpointKind, releaseFd } from "./_keys.ts";

export type { ListenType } from "./_socket_options.ts";

/** Records the socket file a listener made, to remove it at close. */
let own: (listener: UnixListener, path: string, published: FileId) => void;

/** Options for {@linkcode UnixListener.accept}. */
export interface AcceptOptions {
  /** Aborting it rejects the pending accept with the signal's reason. */
  signal?: AbortSignal;
}

/**
 * A listening named socket from {@linkcode listen}: accepts connections
 * from other processes. Closing it removes its socket file (if it is still
 * the one it created).
 *
 * @example Serve connections until closed
 * ```ts ignore
 * import { listen } from "@conduit/ipc/socketpair";
 *
 * using server = listen({ path: "/tmp/app.sock" });
 * for await (const conn of server) {
 *   console.log(conn.peerCredentials().pid);
 *   conn.close();
 * }
 * ```
 */
export class UnixListener implements Disposable, AsyncIterable<UnixSocket> {
  #fd: OwnedFd;
  #type: SocketType;
  #path: string | undefined;
  #abstract: string | undefined;
  #published: FileId | undefined;
  #slice = new TurnSlice();
  /** Whether the last accept used up a slice: the next one yields first. */
  #turnDue = false;

  /**
   * Takes ownership of a listening Unix socket. Prefer
   * {@linkcode listen} or `fromFd()`; a listener adopted this way never
   * removes its socket file.
   *
   * @param fd A listening `AF_UNIX` socket (stream or seqpacket).
   */
  constructor(fd: number) {
    const type = typeName(adoptedSocketType(fd, "UnixListener"));
    if (type === undefined || type === "dgram") {
      throw new TypeError(
        `Cannot adopt fd ${fd} as UnixListener: only stream and seqpacket sockets listen`,
      );
    }
    this.#type = type;
    const address = boundAddress(fd);
    this.#path = address.path;
    this.#abstract = address.abstract;
    this.#fd = new OwnedFd(fd, "UnixListener");
  }

  static {
    own = (listener, path, published) => {
      listener.#path = path;
      listener.#published = published;
    };
  }

  /**
   * Shows the kind, type, fd, state and name, as
   * `UnixListener { type: "stream", fd: 5, state: "open", path: "/run/app.sock" }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    const fields = {
      type: this.#type,
      ...this.#fd.state(),
      ...(this.#path !== undefined ? { path: this.#path } : {}),
      ...(this.#abstract !== undefined ? { abstract: this.#abstract } : {}),
    };
    return inspectEndpoint("UnixListener", fields, inspect, options);
  }

  /** The type of the sockets it accepts. */
  get type(): SocketType {
    return this.#type;
  }

  /** The filesystem path it listens on, if any. */
  get path(): string | undefined {
    return this.#path;
  }

  /** The abstract name it listens on, if any. */
  get abstract(): string | undefined {
    return this.#abstract;
  }

  /** The fd, for interop; the listener still owns it. */
  get rawFd(): number {
    return this.#fd.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#fd.closed;
  }

  #tryAccept(): number {
    // The listener stays blocking (a child may share it), so accept4 is only
    // called once poll says a connection is queued.
    const lib = libc();
    let failed = 0;
    for (;;) {
      const fd = this.#fd.fd;
      if (pollNow(fd, POLL.IN) === 0) return -1;
      const result = lib.accept4(fd, null, null, SOCK.CLOEXEC);
      if (result >= 0) return result;
      const code = ioErrno(failed++);
      if (code === ERRNO.EINTR || code === ERRNO.ECONNABORTED) continue;
      if (code === ERRNO.EAGAIN) return -1;
      throw systemError("accept4", code);
    }
  }

  /**
   * Waits (without blocking the thread) for the next connection.
   *
   * @param options An abort signal.
   * @returns The connected socket.
   * @throws The signal's reason when it is aborted; `BadResource` when the
   * listener is closed meanwhile.
   *
   * @example Accept one connection, or give up after five seconds
   * ```ts
   * import { connect, listen } from "@conduit/ipc/socketpair";
   *
   * using server = listen({ abstract: `example-${crypto.randomUUID()}` });
   * using client = await connect({ abstract: server.abstract! });
   * using conn = await server.accept({ signal: AbortSignal.timeout(5000) });
   * await client.write(new TextEncoder().encode("hi"));
   * console.log(await conn.read(new Uint8Array(8))); // 2
   * ```
   */
  async accept(options: AcceptOptions = {}): Promise<UnixSocket> {
    const { signal } = options;
    checkSignal(signal, "Cannot accept on UnixListener");
    for (;;) {
      if (this.#turnDue) {
        // Clients that keep the queue full (another user's flood, which
        // its server drops one by one) never let accepts wait: timers and
        // other I/O get a turn after each slice of them. The turn comes
        // before the next connection is taken, so that an abort or a
        // close() made meanwhile leaves it queued.
        this.#turnDue = false;
        await yieldTurn();
        checkSignal(signal, "Cannot accept on UnixListener");
      }
      const fd = this.#tryAccept();
      if (fd >= 0) {
        this.#turnDue = this.#slice.delivered();
        return this.#accepted(fd);
      }
      await this.#fd.wait("read", signal);
    }
  }

  /**
   * Waits for the next connection, blocking the thread.
   *
   * @returns The connected socket.
   *
   * @example Take a connection that is already queued
   * ```ts
   * import { connect, listen } from "@conduit/ipc/socketpair";
   *
   * using server = listen({ abstract: `example-${crypto.randomUUID()}` });
   * using client = await connect({ abstract: server.abstract! });
   * using conn = server.acceptSync(); // queued: it does not block
   * console.log(conn.peerCredentials().pid === Deno.pid); // true
   * ```
   */
  acceptSync(): UnixSocket {
    flushBeforeSpin(); // what this thread sent may be what a client awaits
    const fd = retry(
      "accept4",
      () => libc().accept4(this.#fd.fd, null, null, SOCK.CLOEXEC),
    );
    return this.#accepted(fd);
  }

  #accepted(fd: number): UnixSocket {
    const socket = new UnixSocket(fd, this.#type);
    socketNames.set(
      socket,
      this.#path !== undefined
        ? { path: this.#path }
        : { abstract: this.#abstract },
    );
    return socket;
  }

  /**
   * Yields each accepted connection until the listener is closed. When
   * this process runs out of fds (`EMFILE`, as when clients hold many
   * connections open) or memory, the connection stays queued and the loop
   * tries again after a pause (5 ms, doubling up to 1 s) instead of ending.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<UnixSocket> {
    let pause = FIRST_SHORTAGE_PAUSE_MS;
    for (;;) {
      let socket: UnixSocket;
      try {
        socket = await this.accept();
      } catch (error) {
        if (this.#fd.closed) return;
        const next = await pauseOnShortage(
          error,
          pause,
          () => this.#fd.closed,
          () => this.#fd.refed,
        );
        if (next === undefined) throw error;
        pause = next;
        continue;
      }
      pause = FIRST_SHORTAGE_PAUSE_MS;
      yield socket;
    }
  }

  /** Lets a pending accept keep the process alive (the default). */
  ref(): void {
    this.#fd.ref();
  }

  /** Lets the process exit while an accept is pending. */
  unref(): void {
    this.#fd.unref();
  }

  /**
   * Stops listening and removes the socket file it created (unless another
   * file has replaced it). Pending accepts reject with `BadResource`.
   * Idempotent.
   */
  close(): void {
    if (this.#fd.closed) return;
    // While still listening, no other server can see the file as stale, so
    // the file checked is the file removed.
    if (this.#published !== undefined && this.#path !== undefined) {
      try {
        unpublishPath(this.#path, this.#published);
      } catch {
        // Closing must not fail because the directory is gone.
      }
      this.#published = undefined;
    }
    this.#fd.close();
  }

  /** Closes the listener. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @ignore The kind of endpoint this is. */
  get [endpointKind](): EndpointKind {
    return "UnixListener";
  }

  /** @ignore Gives up the fd without closing it (or removing the file). */
  [releaseFd](): number {
    this.#published = undefined;
    return this.#fd.release();
  }
}

/** Options for {@linkcode listen}: an address and how to listen. */
export type ListenOptions = UnixAddress & {
  /** `"stream"` (the default) or `"seqpacket"`. */
  type?: ListenType;
  /**
   * Permission bits of the socket file (connecting needs write
   * permission). Default `0o600`: only this user. Abstract names have no
   * permissions; check {@linkcode UnixSocket.peerCredentials} instead.
   */
  mode?: number;
  /** Connections queued before `accept()`. Default 511. */
  backlog?: number;
};

/**
 * Listens on a named local socket: a filesystem path, or a name in Linux's
 * abstract namespace (no file; gone when the listener closes).
 *
 * A socket file left behind by a server that died is detected (nothing
 * accepts on it) and replaced; a live server's socket is never taken over.
 * To tell them apart, `listen()` connects to the socket there and hangs up
 * at once: a live server accepts a connection that ends without data.
 * The file appears with its final permissions, already listening: it is
 * bound and given its mode in a private directory made next to it (named
 * `.ipc-` and 12 random characters, removed again before `listen()`
 * returns), then renamed into place. So `path` may be at most 89 bytes,
 * and its directory must be writable. No lock is taken: nothing another
 * user does can make `listen()` wait.
 *
 * @param options `{ path }` or `{ abstract }`, type, mode and backlog.
 * @returns The listener.
 * @throws {Deno.errors.NotCapable} When write access to `path` is not
 * granted (`--allow-write`); an abstract name needs no permission.
 * @throws {Deno.errors.AddrInUse} When a live server listens there.
 * @throws {Deno.errors.AlreadyExists} When a non-socket file is at `path`.
 * @throws {RangeError} When `path` is longer than 89 bytes.
 *
 * @example A server and a client in one process
 * ```ts
 * import { connect, listen } from "@conduit/ipc/socketpair";
 *
 * const name = `example-${crypto.randomUUID()}`;
 * using server = listen({ abstract: name });
 * const client = await connect({ abstract: name });
 * const conn = await server.accept();
 * console.log(conn.peerCredentials().pid === Deno.pid); // true
 * client.close();
 * conn.close();
 * ```
 */
export function listen(options: ListenOptions): UnixListener {
  checkOptionsObject(options, "listen", "{ path } or { abstract }");
  const type = listenType(options.type, "listen");
  checkNumberOption(options.mode, "mode", "listen");
  checkNumberOption(options.backlog, "backlog", "listen");
  const mode = options.mode ?? 0o600;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) {
    throw new RangeError(
      `Cannot listen: mode must be permission bits from 0 to 0o777, got ${mode}`,
    );
  }
  const backlog = options.backlog ?? 511;
  if (!Number.isInteger(backlog) || backlog < 0) {
    throw new RangeError(
      `Cannot listen: backlog must be a non-negative integer, got ${backlog}`,
    );
  }
  const address = encodeAddress(options, "listen on");
  if (options.path !== undefined) {
    // Deno's permissions, honoured although the FFI could bypass them.
    requirePath(options.path, ["write"], `Cannot listen on ${options.path}`);
  }
  const lib = libc();
  const fd = check(
    "socket",
    lib.socket(SOCK.AF_UNIX, KERNEL_TYPES[type] | SOCK.CLOEXEC, 0),
  );
  try {
    if (options.path !== undefined) {
      const published = publishPath(fd, options.path, mode, backlog);
      const listener = new UnixListener(fd);
      own(listener, options.path, published);
      return listener;
    }
    if (lib.bind(fd, address.bytes, address.length) === -1) {
      const code = errno();
      if (code === ERRNO.EADDRINUSE) {
        throw new Deno.errors.AddrInUse(
          `Cannot listen on ${address.label}: a live socket holds it`,
        );
      }
      throw systemError("bind", code, address.label);
    }
    check("listen", lib.listen(fd, backlog));
    return new UnixListener(fd);
  } catch (error) {
    lib.close(fd);
    throw error;
  }
}

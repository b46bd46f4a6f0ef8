/**
 * {@linkcode UnixSocket}: a connected Unix domain socket of any type, with
 * fd passing (SCM_RIGHTS). Sockets come from `socketpair()`, `connect()`,
 * `UnixListener.accept()` or `fromFd()`.
 *
 * Every socket is CLOEXEC and stays blocking at the open file description,
 * so a child or a peer handed one sees an ordinary socket; this process
 * sends and receives with per-call `MSG_DONTWAIT` and waits in the shared
 * poller, never blocking its JS thread (except in the `*Sync` forms).
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { check, ERRNO, errno, type SystemError } from "./ffi/errors.ts";
import { MSG, SOCK } from "./ffi/layout.ts";
import { OwnedFd } from "./ffi/fd.ts";
import { poller } from "./ffi/poller.ts";
import { flushBeforeSpin, NO_SPIN, Spinner, waitLoop } from "./ffi/spin.ts";
import { TurnSlice, yieldTurn } from "./_turn.ts";
import {
  asBytes,
  byteReadable,
  byteWritable,
  checkSignal,
  describe,
  readChecked,
  type ReadOptions,
  spinnerFor,
  type WriteOptions,
} from "./_byte_io.ts";
import type { Endpoint } from "./_adopt.ts";
import { adoptReceived } from "./_received.ts";
import {
  closeAll,
  endOfPackets,
  MAX_FDS,
  peekSize,
  type Received,
  receiveMessage,
  receiveWhole,
  recvBlocking,
  recvNoWait,
} from "./_scm.ts";
import { inspectEndpoint } from "./_inspect.ts";
import { boundAddress } from "./_unix_addr.ts";
import {
  adoptedSocketType,
  checkNumberOption,
  checkType,
  peerCredentialsOf,
  type SocketName,
  socketNames,
  type SocketType,
  typeName,
} from "./_socket_options.ts";

import { type SocketSendOptions, SocketSends } from "./_socket_send.ts";
import { type EndpointKind, endpointKind, releaseFd } from "./_keys.ts";

export type { SocketType } from "./_socket_options.ts";
export type { SocketSendOptions } from "./_socket_send.ts";
export type { ReadOptions, WriteOptions } from "./_byte_io.ts";

/** Options for {@linkcode UnixSocket.recv}. */
export interface SocketRecvOptions extends ReadOptions {
  /**
   * How a receive that finds nothing waits before it parks in the poller,
   * in µs. Omitted (the default): the socket's own spin, which spins only
   * while recent spins were answered quickly. `0`: never spin. A number up
   * to 1,000,000: always spin that long first.
   */
  spin?: number;
  /**
   * The most fds accepted with one message, at most (and by default) 253. A
   * message that carries more fails with a `RangeError`, and every fd that
   * came with it is closed.
   */
  maxFds?: number;
  /**
   * Stream sockets: the most bytes one call returns. Default 65536.
   * Datagram and seqpacket sockets always return the whole message.
   */
  maxBytes?: number;
}

/** A message received by {@linkcode UnixSocket.recv}. */
export interface SocketMessage {
  /** The bytes. For a stream socket, whatever arrived (at most `maxBytes`). */
  data: Uint8Array<ArrayBuffer>;
  /** Endpoints that came with it, owned by the receiver. */
  fds: Endpoint[];
}

/** Who is at the other end of a socket (`SO_PEERCRED`). */
export interface PeerCredentials {
  /** The peer's process id when it connected (or created the pair). */
  pid: number;
  /** Its user id. */
  uid: number;
  /** Its group id. */
  gid: number;
}

/** Which direction {@linkcode UnixSocket.shutdown} ends. */
export type ShutdownHow = "read" | "write" | "both";

const SHUTDOWN: Record<ShutdownHow, number> = {
  read: SOCK.SHUT_RD,
  write: SOCK.SHUT_WR,
  both: SOCK.SHUT_RDWR,
};

const READ = "Cannot read from UnixSocket";
const WRITE = "Cannot write to UnixSocket";
const RECV = "Cannot receive on UnixSocket";
const DEFAULT_MAX_BYTES = 64 * 1024;
let streamScratch: Uint8Array<ArrayBuffer> | undefined;

function checkCount(
  value: number | undefined,
  fallback: number,
  max: number,
  what: string,
): number {
  if (value === undefined) return fallback;
  checkNumberOption(value, what, "receive on UnixSocket");
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(
      `Cannot receive on UnixSocket: ${what} must be an integer from 0 to ${max}, got ${value}`,
    );
  }
  return value;
}

/** The fd and byte limits of a receive, checked, with their defaults. */
function recvLimits(
  options: SocketRecvOptions,
): { maxFds: number; maxBytes: number } {
  return {
    maxFds: checkCount(options.maxFds, MAX_FDS, MAX_FDS, "maxFds"),
    maxBytes: checkCount(
      options.maxBytes,
      DEFAULT_MAX_BYTES,
      2 ** 31 - 1,
      "maxBytes",
    ),
  };
}

/** Whether `error` (or its cause) says this process ran out of fds. */
function shortOfFds(error: unknown): boolean {
  for (let e = error, depth = 0; e instanceof Error && depth < 4; depth++) {
    const code = (e as Partial<SystemError>).errno;
    if (code === ERRNO.EMFILE || code === ERRNO.ENFILE) return true;
    if (/\bE[MN]FILE\b/.test(e.message)) return true;
    e = e.cause;
  }
  return false;
}

/**
 * A connected Unix domain socket of type `"stream"`, `"dgram"` or
 * `"seqpacket"`, from {@linkcode socketpair}, {@linkcode connect},
 * {@linkcode UnixListener.accept} or `fromFd()`.
 *
 * @example Pass a pipe's read end across a socket
 * ```ts
 * import { pipe } from "@conduit/ipc/pipe";
 * import { socketpair } from "@conduit/ipc/socketpair";
 *
 * const [a, b] = socketpair({ type: "dgram" });
 * const { reader, writer } = pipe();
 * await a.send(new Uint8Array([1]), { fds: [reader], closeSent: true });
 * const { fds } = (await b.recv())!;
 * console.log(fds.length); // 1: a PipeReader of this process
 * for (const end of [a, b, writer, ...fds]) end.close();
 * ```
 */
export class UnixSocket implements Disposable {
  #fd: OwnedFd;
  #type: SocketType;
  #readSpinner = new Spinner();
  /** Sends, at once or in call order once one has to wait. */
  #sends: SocketSends;
  #slice = new TurnSlice();
  /** Receives that wait (spin or park), not yet done. */
  #waiting = 0;
  #readable: ReadableStream<Uint8Array> | undefined;
  /**
   * Stream sockets: bytes of a receive whose fds were refused, which the
   * next read or receive returns first.
   */
  #held: Uint8Array<ArrayBuffer> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;

  /**
   * Takes ownership of a connected Unix socket. Prefer
   * {@linkcode socketpair}, {@linkcode connect} or `fromFd()`.
   *
   * @param fd A connected `AF_UNIX` socket.
   * @param type Its type; read from the socket (`SO_TYPE`) when omitted.
   */
  constructor(fd: number, type?: SocketType) {
    if (type === undefined) {
      const found = typeName(adoptedSocketType(fd, "UnixSocket"));
      if (found === undefined) {
        throw new TypeError(
          `Cannot adopt fd ${fd} as UnixSocket: its socket type is not stream, dgram or seqpacket`,
        );
      }
      type = found;
    }
    this.#type = checkType(type, "create UnixSocket");
    this.#fd = new OwnedFd(fd, "UnixSocket");
    this.#sends = new SocketSends(this.#fd, this.#type);
  }

  /** The socket type: `"stream"`, `"dgram"` or `"seqpacket"`. */
  get type(): SocketType {
    return this.#type;
  }

  /** The fd, for interop; the socket still owns it. */
  get rawFd(): number {
    return this.#fd.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#fd.closed;
  }

  /**
   * Shows the kind, type, fd, state and the name it was connected or
   * accepted on, if any, as
   * `UnixSocket { type: "stream", fd: 7, state: "open", path: "/run/app.sock" }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    const state = this.#fd.state();
    let name: SocketName | undefined = socketNames.get(this);
    if (name === undefined && state.fd !== undefined) {
      try {
        // Adopted (fromFd): an accepted socket is bound to its server's name.
        name = boundAddress(state.fd);
      } catch {
        // Only detail for the printout.
      }
    }
    const fields = { type: this.#type, ...state, ...name };
    return inspectEndpoint("UnixSocket", fields, inspect, options);
  }

  #assertStream(doing: string): void {
    this.#fd.assertOpen();
    if (this.#type !== "stream") {
      throw new TypeError(
        `Cannot ${doing} UnixSocket: a ${this.#type} socket carries messages; use send() and recv()`,
      );
    }
  }

  // --- Bytes (stream sockets) ---

  /**
   * Stream sockets: reads what is available into `buffer`, waiting (without
   * blocking the thread) until at least one byte arrives. Fds sent along
   * are discarded; use {@linkcode recv} to receive them.
   *
   * @param buffer Where to put the bytes: a `Uint8Array`, or any other
   * typed array or `DataView`, filled byte for byte.
   * @param options How the read spins, and a `signal` to give up waiting
   * (nothing is taken then: a later read gets the data).
   * @returns The number of bytes read, or `null` at end of stream (the peer
   * closed or shut down its writing side).
   * @throws {TypeError} When `buffer` is not an `ArrayBufferView`, or its
   * buffer was transferred away (also while the read waits: the data stays
   * for the next read).
   * @throws The signal's reason when it is aborted.
   *
   * @example Read what the peer wrote
   * ```ts
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * using pair = socketpair();
   * const [a, b] = pair;
   * await a.write(new TextEncoder().encode("hi"));
   * const buf = new Uint8Array(16);
   * const n = await b.read(buf, { signal: AbortSignal.timeout(5000) });
   * console.log(new TextDecoder().decode(buf.subarray(0, n ?? 0))); // "hi"
   * ```
   */
  read(buffer: ArrayBufferView, options?: ReadOptions): Promise<number | null> {
    try {
      this.#assertStream("read from");
      if (this.#held !== undefined) {
        options?.signal?.throwIfAborted();
        const into = asBytes(buffer, READ);
        return Promise.resolve(
          into.byteLength === 0 ? 0 : this.#takeHeld(into),
        );
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return readChecked(
      this.#fd,
      recvNoWait,
      buffer,
      options,
      this.#readSpinner,
      READ,
    );
  }

  /**
   * Stream sockets: reads what is available into `buffer`, blocking the
   * thread until at least one byte arrives.
   *
   * @param buffer Where to put the bytes (any `ArrayBufferView`).
   * @returns The number of bytes read, or `null` at end of stream.
   * @throws {TypeError} When `buffer` is not an `ArrayBufferView`, or its
   * buffer was transferred away.
   *
   * @example Read with a blocking call
   * ```ts
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * using pair = socketpair();
   * const [a, b] = pair;
   * a.writeSync(new Uint8Array([1, 2, 3]));
   * console.log(b.readSync(new Uint8Array(8))); // 3
   * ```
   */
  readSync(buffer: ArrayBufferView): number | null {
    this.#assertStream("read from");
    const into = asBytes(buffer, READ);
    if (into.byteLength === 0) return 0;
    if (this.#held !== undefined) return this.#takeHeld(into);
    flushBeforeSpin(); // what this thread sent may be what the peer awaits
    const n = recvBlocking(this.#fd.fd, into);
    return n === 0 ? null : n;
  }

  /**
   * Stream sockets: writes every byte, waiting (without blocking the
   * thread) while the peer is full. Concurrent writes and sends are queued,
   * never interleaved. A `signal` gives the write up while it waits: one
   * that has not started is withdrawn; one partly out rejects at once while
   * the rest of its bytes still follow (see {@linkcode WriteOptions}).
   *
   * @param bytes The bytes to write (any `ArrayBufferView`).
   * @param options A `signal` to give up waiting for room.
   * @returns Resolves once every byte is in the socket; rejects with
   * `Deno.errors.BrokenPipe` when the peer is gone, with `TypeError` when
   * `bytes` is not an `ArrayBufferView` or its buffer was transferred
   * away, and with the signal's reason when it is aborted.
   *
   * @example Write, giving up if the peer does not read within a second
   * ```ts
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * using pair = socketpair();
   * const [a, b] = pair;
   * await a.write(new TextEncoder().encode("ping"), {
   *   signal: AbortSignal.timeout(1000),
   * });
   * console.log(await b.read(new Uint8Array(8))); // 4
   * ```
   */
  write(bytes: ArrayBufferView, options?: WriteOptions): Promise<void> {
    return this.#write(bytes, options?.signal);
  }

  #write(
    bytes: ArrayBufferView,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    let from: Uint8Array;
    try {
      this.#assertStream("write to");
      from = asBytes(bytes, WRITE);
      checkSignal(signal, WRITE);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#sends.write(from, signal);
  }

  /**
   * Stream sockets: writes every byte, blocking the thread while the peer
   * is full. Writes still queued go first (blocking too), so bytes leave in
   * call order and never land inside a pending write.
   *
   * @param bytes The bytes to write.
   *
   * @example Write without awaiting
   * ```ts
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * using pair = socketpair();
   * const [a, b] = pair;
   * a.writeSync(new TextEncoder().encode("now"));
   * console.log(await b.read(new Uint8Array(8))); // 3
   * ```
   */
  writeSync(bytes: ArrayBufferView): void {
    this.#assertStream("write to");
    const from = asBytes(bytes, WRITE);
    flushBeforeSpin(); // what this thread sent may be what the peer awaits
    this.#sends.writeSync(from);
  }

  /**
   * Stream sockets: a byte stream of everything read until the peer stops
   * writing. BYOB readers are filled in place. Cancelling it shuts down this
   * side's reading (the socket stays open for writing).
   *
   * Each read waits like {@linkcode read} with default options: the
   * socket's own spin-then-park, which spins while a peer that writes
   * continuously refills the socket sooner than a park would take.
   */
  get readable(): ReadableStream<Uint8Array> {
    this.#assertStream("read from");
    return this.#readable ??= byteReadable(
      (into) => this.read(into),
      () => this.#shutdownQuietly("read"),
    );
  }

  /**
   * Stream sockets: a byte sink with backpressure, taking any
   * `ArrayBufferView`. Closing it shuts down this side's writing once the
   * writes queued before (direct `write()` calls too) are out, so the peer
   * reads end of stream after them; the socket stays open for reading.
   * Aborting it discards, as a stream abort does: the
   * chunk that waits for room is given up and writing shut down at once,
   * so a chunk partly out is cut off there (the peer reads end of stream
   * after part of it). A write that fails errors the stream and shuts down
   * this side's writing as closing it does; the socket stays open for
   * reading until it is closed.
   */
  get writable(): WritableStream<Uint8Array> {
    this.#assertStream("write to");
    return this.#writable ??= byteWritable(
      WRITE,
      (chunk, signal) => this.#write(chunk, signal),
      () => this.#closeWriting(),
      () => this.#abortWriting(),
      () => {
        // A write refused because writing is shut (or will be once the
        // sends queued before are out) must not cut those off.
        if (!this.#sends.shut) this.#abortWriting();
      },
    );
  }

  /**
   * Ends one or both directions without closing the socket: after
   * `shutdown("write")` the peer reads end of stream (`null`) once it has
   * read everything sent before, and this side can still read. Writes and
   * sends still queued (waiting for room) go out first, and the socket's
   * writing ends after them; those made after this call reject with
   * `Deno.errors.BrokenPipe`.
   *
   * @param how `"write"` (the default), `"read"` or `"both"`.
   *
   * @example Ask, then end writing; the answer still comes
   * ```ts
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * using pair = socketpair();
   * const [a, b] = pair;
   * await a.write(new TextEncoder().encode("question"));
   * a.shutdown("write");
   * console.log(await new Response(b.readable).text()); // "question"
   * await b.write(new TextEncoder().encode("answer"));
   * console.log(await a.read(new Uint8Array(16))); // 6
   * ```
   */
  shutdown(how: ShutdownHow = "write"): void {
    if (!Object.hasOwn(SHUTDOWN, how)) {
      throw new TypeError(
        `Cannot shut down UnixSocket: how must be "read", "write" or "both", got ${
          typeof how === "string" ? JSON.stringify(how) : describe(how)
        }`,
      );
    }
    this.#fd.assertOpen();
    if (how !== "write") this.#shutdownNow(SOCK.SHUT_RD);
    if (how !== "read") {
      // A shutdown that waits for queued sends has no caller left to tell
      // of a failure: the socket closed first, or the peer went.
      this.#sends.shutWrite(() => this.#shutdownNow(SOCK.SHUT_WR))?.catch(
        () => {},
      );
    }
  }

  #shutdownNow(value: number): void {
    const result = libc().shutdown(this.#fd.fd, value);
    // The peer may have gone already; there is nothing left to end then.
    if (result === -1 && errno() !== ERRNO.ENOTCONN) {
      check("shutdown", result);
    }
  }

  #shutdownQuietly(how: ShutdownHow): void {
    if (this.#fd.closed) return;
    try {
      this.shutdown(how);
    } catch {
      // Ending a stream must not fail because the socket is gone.
    }
  }

  /**
   * The writable's abort, or its failed write: writing ends at once, sends
   * still queued are cut off.
   */
  #abortWriting(): void {
    if (this.#fd.closed) return;
    this.#sends.markShut();
    try {
      this.#shutdownNow(SOCK.SHUT_WR);
    } catch {
      // Ending a stream must not fail because the socket is gone.
    }
  }

  /**
   * The writable's close: writing ends once the sends queued before it
   * (direct writes made meanwhile) are out.
   */
  async #closeWriting(): Promise<void> {
    if (this.#fd.closed) return;
    try {
      await this.#sends.shutWrite(() => this.#shutdownNow(SOCK.SHUT_WR));
    } catch {
      // Ending a stream must not fail because the socket is gone.
    }
  }

  // --- Messages (every type) ---

  /**
   * Sends `bytes`, with `fds` attached when given. On a datagram or
   * seqpacket socket the bytes arrive as one message; on a stream socket
   * every byte is written, in order with other sends. Waits (without
   * blocking the thread) while the peer is full.
   *
   * A send that finds nothing queued goes at once; messages sent after it
   * in the same turn are gathered and leave together, in order, in as few
   * `sendmmsg` calls as fit (each still settles, or fails, on its own). A
   * send that has to wait holds its own copies of the fds it names, so the
   * caller may close them (or reuse their numbers) meanwhile: what arrives
   * is what was named at the call.
   *
   * @param bytes The message (datagram, seqpacket) or bytes (stream).
   * @param options Fds to pass, whether to close them once sent, and a
   * `signal` to give up waiting for room (see
   * {@linkcode SocketSendOptions.signal}).
   * @returns Resolves once everything is in the socket.
   * @throws {RangeError} When a message is larger than the socket can
   * carry, or too many fds are given.
   * @throws {Deno.errors.BrokenPipe} When the peer is gone.
   * @throws {TypeError} When `bytes` is not a `Uint8Array` or its buffer
   * was transferred away.
   * @throws The signal's reason when it is aborted.
   *
   * @example Send fds and close this process's copies
   * ```ts
   * import { pipe } from "@conduit/ipc/pipe";
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * const [a, b] = socketpair({ type: "seqpacket" });
   * const { reader, writer } = pipe();
   * await a.send(new TextEncoder().encode("a pipe"), {
   *   fds: [reader, writer],
   *   closeSent: true,
   * });
   * const message = await b.recv();
   * console.log(message!.fds.length); // 2
   * for (const end of [a, b, ...message!.fds]) end.close();
   * ```
   */
  send(bytes: Uint8Array, options: SocketSendOptions = {}): Promise<void> {
    return this.#sends.send(bytes, options);
  }

  /**
   * Sends like {@linkcode send}, blocking the thread while the peer is
   * full. Sends still queued go first, so bytes and messages leave in call
   * order.
   *
   * @param bytes The message or bytes.
   * @param options Fds to pass and whether to close them once sent.
   *
   * @example Send a message with a blocking call
   * ```ts
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * using pair = socketpair({ type: "seqpacket" });
   * const [a, b] = pair;
   * a.sendSync(new TextEncoder().encode("hello"));
   * console.log(b.recvSync()!.data.length); // 5
   * ```
   */
  sendSync(bytes: Uint8Array, options: SocketSendOptions = {}): void {
    flushBeforeSpin(); // what this thread sent may be what the peer awaits
    this.#sends.sendSync(bytes, options);
  }

  /**
   * Receives one message with the fds that came with it, waiting (without
   * blocking the thread) until one arrives. Datagrams and packets come
   * whole, never truncated; on a stream socket, what has arrived (at most
   * `maxBytes`). Received fds are CLOEXEC and become endpoints as
   * `fromFd()` would make them.
   *
   * A datagram socket has no end of stream: when its peer is gone, `recv()`
   * keeps waiting (and `send()` fails).
   *
   * @param options Spin time, fd and byte limits, and a `signal` to give up
   * waiting (nothing is taken then: a later receive gets the message).
   * @returns The message, or `null` at end of stream (the peer closed or shut
   * down its writing side).
   * @throws {RangeError} When a message carries more fds than `maxFds`; they
   * are closed.
   * @throws {TypeError} When a received fd fits no endpoint (a regular file,
   * a terminal, `/dev/null`: `fromFd()` takes none of them): every fd of the
   * message is closed. A datagram or packet is lost with its fds; on a
   * stream socket, whose bytes are not one message's (a receive takes
   * earlier sends' bytes along with those that came with fds), the bytes of
   * a receive that either error refuses stay in this object for the next
   * read or receive made after it (one already waiting meanwhile gets later
   * bytes first; an fd handed on, through `rawFd`, a send or `spawn()`,
   * does not carry them).
   * @throws The signal's reason when it is aborted (at once when it already
   * was).
   *
   * @example Receive whole messages
   * ```ts
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * const [a, b] = socketpair({ type: "dgram" });
   * await a.send(new Uint8Array(1000));
   * await a.send(new Uint8Array(10));
   * console.log((await b.recv())!.data.length); // 1000
   * console.log((await b.recv())!.data.length); // 10
   * a.close();
   * b.close();
   * ```
   */
  recv(options: SocketRecvOptions = {}): Promise<SocketMessage | null> {
    const { signal } = options;
    let maxFds: number;
    let maxBytes: number;
    let spinner: Spinner;
    try {
      checkSignal(signal, RECV);
      ({ maxFds, maxBytes } = recvLimits(options));
      spinner = spinnerFor(options.spin, this.#readSpinner, RECV);
      // Bytes kept from a refused receive come first, whatever the wait.
      if (this.#held !== undefined && this.#waiting === 0) {
        return Promise.resolve(this.#tryRecv(maxFds, maxBytes, false)!);
      }
      // While receives wait, a later one waits behind them without a look,
      // so that messages go out in call order. Recent waits went unanswered
      // for long (paced traffic): arm the wait at once. Its direct poll
      // still sees a message that is here already, and completes without a
      // turn of the event loop; a look first would cost a syscall that finds
      // nothing nearly every time.
      if (this.#waiting > 0 || (spinner.resting && this.#fd.waitsDirectly)) {
        return this.#recvLater(maxFds, maxBytes, spinner, signal);
      }
      const now = this.#tryRecv(maxFds, maxBytes, false);
      if (now !== undefined) {
        // A peer that keeps the socket full never lets this wait; timers
        // and other I/O get a turn after each slice of such deliveries.
        return this.#slice.delivered(now?.data.byteLength)
          ? yieldTurn().then(() => now)
          : Promise.resolve(now);
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#recvLater(maxFds, maxBytes, spinner, signal);
  }

  /**
   * A receive that found nothing at once, or skipped its look: spins, then
   * parks. One behind another does not spin either: its wait is woken
   * after the earlier one's, and looks after it.
   */
  #recvLater(
    maxFds: number,
    maxBytes: number,
    spinner: Spinner,
    signal: AbortSignal | undefined,
  ): Promise<SocketMessage | null> {
    if (this.#waiting++ > 0) spinner = NO_SPIN;
    // Whether a wait let the event loop turn: a poll that found the socket
    // ready when it was armed did not.
    const turns = poller().turns;
    // recv() tried once already, or skipped its look: go straight to the
    // spin (a resting spinner parks at once).
    return waitLoop(
      () => this.#tryRecv(maxFds, maxBytes, false),
      (ready, fail) => this.#fd.waitThen("read", ready, fail, signal),
      spinner,
      true,
      (message) => {
        if (poller().turns !== turns) this.#slice.waited();
        else if (this.#slice.delivered(message?.data.byteLength)) {
          return yieldTurn().then(() => message);
        }
        return message;
      },
      () => this.#waiting--,
    );
  }

  /**
   * Yields each message (on a stream socket, each chunk as
   * {@linkcode recv} returns it) until end of stream. Ends quietly when the
   * socket is closed meanwhile. A peer that sends without pause still lets
   * timers and other I/O run between slices of messages.
   *
   * @example Count messages until the peer closes
   * ```ts
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * const [a, b] = socketpair({ type: "seqpacket" });
   * for (const n of [1, 2, 3]) await a.send(new Uint8Array([n]));
   * a.close();
   * let count = 0;
   * for await (const message of b) count += message.data[0];
   * console.log(count); // 6
   * b.close();
   * ```
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<SocketMessage> {
    for (;;) {
      let message: SocketMessage | null;
      try {
        message = await this.recv();
      } catch (error) {
        if (this.#fd.closed) return;
        throw error;
      }
      if (message === null) return;
      yield message;
    }
  }

  /**
   * Receives like {@linkcode recv}, blocking the thread until a message
   * arrives. A message goes to the call that looks first: made while a
   * `recv()` is pending, `recvSync()` may take the message that would have
   * ended that wait.
   *
   * @param options Fd and byte limits.
   * @returns The message, or `null` at end of stream.
   *
   * @example Receive a message with a blocking call
   * ```ts
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * using pair = socketpair({ type: "dgram" });
   * const [a, b] = pair;
   * await a.send(new Uint8Array([7]));
   * console.log(b.recvSync()!.data[0]); // 7
   * ```
   */
  recvSync(options: SocketRecvOptions = {}): SocketMessage | null {
    const { maxFds, maxBytes } = recvLimits(options);
    flushBeforeSpin(); // what this thread sent may be what the peer awaits
    for (;;) {
      const message = this.#tryRecv(maxFds, maxBytes, true);
      if (message !== undefined) return message;
    }
  }

  /** One attempt: a message, `null` at the end, `undefined` if none yet. */
  #tryRecv(
    maxFds: number,
    maxBytes: number,
    wait: boolean,
  ): SocketMessage | null | undefined {
    const fd = this.#fd.fd;
    if (this.#type === "stream") {
      if (this.#held !== undefined) {
        const data = new Uint8Array(Math.min(maxBytes, this.#held.byteLength));
        this.#takeHeld(data);
        return { data, fds: [] };
      }
      streamScratch ??= new Uint8Array(DEFAULT_MAX_BYTES);
      const into = maxBytes <= streamScratch.byteLength
        ? streamScratch.subarray(0, maxBytes)
        : new Uint8Array(maxBytes);
      const got = this.#receive(fd, into, maxFds, wait);
      if (got === undefined || got === null) return got;
      // The bytes of a receive whose fds are refused may be those of
      // earlier sends too (a stream read goes on until the bytes that came
      // with fds): kept for the next read or receive.
      const data = into.slice(0, got.bytes);
      if (got.refused !== undefined) {
        if (got.bytes > 0) this.#held = data;
        throw got.refused;
      }
      if (got.bytes === 0 && got.fds.length === 0) return null;
      try {
        return this.#message(data, got.fds);
      } catch (error) {
        if (got.bytes > 0) this.#held = data;
        throw error;
      }
    }
    for (;;) {
      try {
        return this.#tryRecvPacket(fd, maxFds, wait);
      } catch (error) {
        // A peer that closed with unread messages of ours reports ECONNRESET
        // once, ahead of the messages it sent before closing: read on.
        if ((error as SystemError).errno !== ERRNO.ECONNRESET) throw error;
      }
    }
  }

  /** {@linkcode #tryRecv} of one datagram or packet, taken whole. */
  #tryRecvPacket(
    fd: number,
    maxFds: number,
    wait: boolean,
  ): SocketMessage | null | undefined {
    const whole = receiveWhole(fd, maxFds, wait);
    if (whole === null) return undefined;
    if (whole !== undefined) {
      // The reserve behind the scratch holds any packet the kernel lets a
      // peer send: none comes truncated.
      if (
        whole.data.byteLength === 0 && whole.fds.length === 0 &&
        endOfPackets(fd)
      ) {
        return null;
      }
      return this.#message(whole.data, whole.fds);
    }
    // No reserve here: measure the packet, then take it into a buffer of
    // its size.
    const size = peekSize(fd, wait);
    if (size < 0) return undefined;
    const data = new Uint8Array(size);
    const got = receiveMessage(fd, data, maxFds, wait);
    if (got === null) return undefined;
    if ((got.flags & MSG.TRUNC) !== 0) {
      // Only possible when another process took the peeked message first.
      closeAll(got.fds);
      throw new RangeError(
        "Cannot receive on UnixSocket: the message was larger than the one measured, and was truncated",
      );
    }
    // An empty read is an empty message unless this side can read no more.
    if (got.bytes === 0 && got.fds.length === 0 && endOfPackets(fd)) {
      return null;
    }
    return this.#message(
      got.bytes === size ? data : data.slice(0, got.bytes),
      got.fds,
    );
  }

  #receive(
    fd: number,
    into: Uint8Array,
    maxFds: number,
    wait: boolean,
  ): Received | null | undefined {
    try {
      return receiveMessage(fd, into, maxFds, wait, true) ?? undefined;
    } catch (error) {
      // ECONNRESET is reported once, ahead of data still queued: try again.
      if ((error as SystemError).errno === ERRNO.ECONNRESET) {
        return this.#receive(fd, into, maxFds, wait);
      }
      throw error;
    }
  }

  /**
   * Moves the first bytes kept from a refused receive into `into`: how
   * many (the rest stays for the next read).
   */
  #takeHeld(into: Uint8Array): number {
    const held = this.#held!;
    const n = Math.min(into.byteLength, held.byteLength);
    into.set(held.subarray(0, n));
    this.#held = n === held.byteLength ? undefined : held.subarray(n);
    return n;
  }

  #message(data: Uint8Array<ArrayBuffer>, fds: number[]): SocketMessage {
    const endpoints: Endpoint[] = [];
    for (let i = 0; i < fds.length; i++) {
      try {
        endpoints.push(adoptReceived(fds[i]) as Endpoint);
      } catch (error) {
        for (const endpoint of endpoints) endpoint.close();
        closeAll(fds.slice(i));
        if (shortOfFds(error)) {
          throw new RangeError(
            `Cannot receive on UnixSocket: fd ${
              i + 1
            } of ${fds.length} in the message could not be made an endpoint (this process may be out of fds: EMFILE); ` +
              `all ${fds.length} received fds were closed`,
            { cause: error },
          );
        }
        throw new TypeError(
          `Cannot receive on UnixSocket: fd ${
            i + 1
          } of ${fds.length} in the message fits no endpoint; ` +
            `all ${fds.length} received fds were closed`,
          { cause: error },
        );
      }
    }
    return { data, fds: endpoints };
  }

  // --- Peer and lifetime ---

  /**
   * The process at the other end, as the kernel recorded it when the
   * connection was made (`SO_PEERCRED`). For a {@linkcode socketpair}, the
   * process that created the pair.
   *
   * @returns The peer's pid, uid and gid.
   *
   * @example Check who is at the other end
   * ```ts
   * import { socketpair } from "@conduit/ipc/socketpair";
   *
   * using pair = socketpair();
   * // A pair's peer is the process that made it: this one.
   * console.log(pair[0].peerCredentials().pid === Deno.pid); // true
   * ```
   */
  peerCredentials(): PeerCredentials {
    return peerCredentialsOf(this.#fd.fd);
  }

  /** Lets pending waits keep the process alive (the default). */
  ref(): void {
    this.#fd.ref();
  }

  /** Lets the process exit while a receive or send is pending. */
  unref(): void {
    this.#fd.unref();
  }

  /**
   * Closes the socket; pending calls reject with `BadResource`, and the
   * peer reads end of stream. Idempotent.
   */
  close(): void {
    if (this.#fd.closed) return;
    this.#endQueue();
    this.#fd.close();
  }

  /** Closes the socket. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @ignore The kind of endpoint this is. */
  get [endpointKind](): EndpointKind {
    return "UnixSocket";
  }

  /** @ignore Gives up the fd without closing it. */
  [releaseFd](): number {
    this.#endQueue();
    return this.#fd.release();
  }

  /**
   * Before the fd goes: sends gathered this turn that fit still leave (as
   * they would have at once), the rest reject with `BadResource`.
   */
  #endQueue(): void {
    this.#sends.end();
  }
}

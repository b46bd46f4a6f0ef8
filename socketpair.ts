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
import {
  check,
  closedError,
  ERRNO,
  errno,
  retry,
  type SystemError,
  systemError,
} from "./ffi/errors.ts";
import { F, MSG, O, SOCK, UCRED } from "./ffi/layout.ts";
import { dupCloexec, OwnedFd } from "./ffi/fd.ts";
import { flushBeforeSpin, Spinner, untilReady } from "./ffi/spin.ts";
import { TurnSlice, yieldTurn } from "./_turn.ts";
import { CallQueue, type QueuedCall } from "./_call_queue.ts";
import {
  asBytes,
  byteReadable,
  byteWritable,
  readAsync,
  type ReadOptions,
  spinnerFor,
} from "./_byte_io.ts";
// Loaded for every adopter, so received fds of any kind become endpoints.
import type { Endpoint } from "./from_fd.ts";
import "./from_fd.ts";
import { adoptFd, registerAdopter } from "./_adopt.ts";
import type { FdEndpoint } from "./spawn.ts";
import {
  closeAll,
  MAX_FDS,
  peekSize,
  POLL,
  pollNow,
  readHangup,
  receiveMessage,
  recvBlocking,
  recvNoWait,
  sendAllBlocking,
  sendBlocking,
  sendMessage,
  sendMessages,
  sendNoWait,
} from "./_scm.ts";
import {
  boundAddress,
  encodeAddress,
  type FileId,
  publishPath,
  type UnixAddress,
  unpublishPath,
} from "./_unix_addr.ts";

export type { ReadOptions } from "./_byte_io.ts";
export type { Endpoint } from "./from_fd.ts";
// Every class a received fd may become. Loading the shared-memory module
// also teaches fromFd() its fds, so recv() rebuilds them whichever entry
// point was imported.
export { PipeReader, PipeWriter } from "./pipe.ts";
export { SharedMemory, ShmReceiver, ShmSender } from "./shm/mod.ts";
export type { FdEndpoint } from "./spawn.ts";
export type { UnixAddress } from "./_unix_addr.ts";

/** The kind of a Unix socket. */
export type SocketType = "stream" | "dgram" | "seqpacket";

const KERNEL_TYPES: Record<SocketType, number> = {
  stream: SOCK.STREAM,
  dgram: SOCK.DGRAM,
  seqpacket: SOCK.SEQPACKET,
};

function typeName(kernelType: number): SocketType | undefined {
  if (kernelType === SOCK.STREAM) return "stream";
  if (kernelType === SOCK.DGRAM) return "dgram";
  if (kernelType === SOCK.SEQPACKET) return "seqpacket";
  return undefined;
}

function checkType(type: unknown, doing: string): SocketType {
  if (type === "stream" || type === "dgram" || type === "seqpacket") {
    return type;
  }
  throw new TypeError(
    `Cannot ${doing}: type must be "stream", "dgram" or "seqpacket", got ${
      JSON.stringify(type)
    }`,
  );
}

const intBuf = new Int32Array(1);
const lenBuf = new Uint32Array(1);

function getIntOption(fd: number, option: number, name: string): number {
  lenBuf[0] = 4;
  check(
    `getsockopt(${name})`,
    libc().getsockopt(fd, SOCK.SOL_SOCKET, option, intBuf, lenBuf),
  );
  return intBuf[0];
}

function setIntOption(
  fd: number,
  option: number,
  name: string,
  value: number,
): void {
  intBuf[0] = value;
  check(
    `setsockopt(${name})`,
    libc().setsockopt(fd, SOCK.SOL_SOCKET, option, intBuf, 4),
  );
}

/** Options for {@linkcode UnixSocket.send}. */
export interface SocketSendOptions {
  /**
   * Endpoints (or raw fds) to pass along (SCM_RIGHTS), at most 253. The
   * receiver gets its own copies; this process keeps its own unless
   * `closeSent` is set. On a stream socket they travel with the first byte
   * of this send, so the data must not be empty.
   */
  fds?: readonly (FdEndpoint | number)[];
  /**
   * Close the endpoints in `fds` once they have been sent (raw fd numbers
   * are left alone). Default `false`.
   */
  closeSent?: boolean;
}

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

/** The credentials of a connected socket's peer (`SO_PEERCRED`). */
function peerCredentialsOf(fd: number): PeerCredentials {
  const buf = new Uint8Array(UCRED.size + 4);
  const len = new Uint32Array([UCRED.size]);
  check(
    "getsockopt(SO_PEERCRED)",
    libc().getsockopt(fd, SOCK.SOL_SOCKET, SOCK.SO_PEERCRED, buf, len),
  );
  const view = new DataView(buf.buffer);
  return {
    pid: view.getInt32(UCRED.pid, true),
    uid: view.getUint32(UCRED.uid, true),
    gid: view.getUint32(UCRED.gid, true),
  };
}

/** Which direction {@linkcode UnixSocket.shutdown} ends. */
export type ShutdownHow = "read" | "write" | "both";

const SHUTDOWN: Record<ShutdownHow, number> = {
  read: SOCK.SHUT_RD,
  write: SOCK.SHUT_WR,
  both: SOCK.SHUT_RDWR,
};

const DEFAULT_MAX_BYTES = 64 * 1024;
let streamScratch: Uint8Array<ArrayBuffer> | undefined;

function checkCount(
  value: number | undefined,
  fallback: number,
  max: number,
  what: string,
): number {
  if (value === undefined) return fallback;
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

/** One send: what is left, the fds it carries, and who waits for it. */
interface SendJob extends QueuedCall<void> {
  /** The message (datagram, seqpacket) or bytes (stream). */
  data: Uint8Array;
  /**
   * The fds to pass: the caller's own numbers while the send is tried at
   * once, this socket's private copies once it waits in the queue.
   */
  fds: number[];
  /** Whether `fds` are private copies, closed when the send is done. */
  copied: boolean;
  endpoints: FdEndpoint[];
  closeSent: boolean;
  /** Stream sockets: bytes already written. */
  offset: number;
  fdsSent: boolean;
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
  /** Sends that could not go at once, in call order. */
  #sends: CallQueue<SendJob> = new CallQueue<SendJob>({
    advance: (jobs) => this.#advance(jobs),
    park: (_head, signal) => this.#fd.wait("write", signal),
    done: (job) => {
      this.#settle(job);
      this.#finishSend(job);
    },
    failed: (job, error) => {
      this.#settle(job);
      return this.#sendError(error, job.data.byteLength);
    },
    finishBlocking: (job) => this.#sendWhole(job),
  }, new Spinner());
  #slice = new TurnSlice();
  #readable: ReadableStream<Uint8Array> | undefined;
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
      const found = typeName(getIntOption(fd, SOCK.SO_TYPE, "SO_TYPE"));
      if (found === undefined) {
        throw new TypeError(
          `Cannot adopt fd ${fd} as UnixSocket: its socket type is not stream, dgram or seqpacket`,
        );
      }
      type = found;
    }
    this.#type = checkType(type, "create UnixSocket");
    this.#fd = new OwnedFd(fd, "UnixSocket");
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
   * @param buffer Where to put the bytes.
   * @param options Read options.
   * @returns The number of bytes read, or `null` at end of stream (the peer
   * closed or shut down its writing side).
   */
  read(buffer: Uint8Array, options?: ReadOptions): Promise<number | null> {
    let spinner: Spinner;
    try {
      this.#assertStream("read from");
      spinner = spinnerFor(
        options?.spin,
        this.#readSpinner,
        "Cannot read from UnixSocket",
      );
    } catch (error) {
      return Promise.reject(error);
    }
    return readAsync(this.#fd, recvNoWait, buffer, spinner);
  }

  /**
   * Stream sockets: reads what is available into `buffer`, blocking the
   * thread until at least one byte arrives.
   *
   * @param buffer Where to put the bytes.
   * @returns The number of bytes read, or `null` at end of stream.
   */
  readSync(buffer: Uint8Array): number | null {
    this.#assertStream("read from");
    if (buffer.byteLength === 0) return 0;
    flushBeforeSpin(); // what this thread sent may be what the peer awaits
    const n = recvBlocking(this.#fd.fd, buffer);
    return n === 0 ? null : n;
  }

  /**
   * Stream sockets: writes every byte, waiting (without blocking the
   * thread) while the peer is full. Concurrent writes and sends are queued,
   * never interleaved.
   *
   * @param bytes The bytes to write.
   * @returns Resolves once every byte is in the socket; rejects with
   * `Deno.errors.BrokenPipe` when the peer is gone.
   */
  write(bytes: ArrayBufferView): Promise<void> {
    let from: Uint8Array;
    try {
      this.#assertStream("write to");
      from = asBytes(bytes, "Cannot write to UnixSocket");
    } catch (error) {
      return Promise.reject(error);
    }
    return this.send(from);
  }

  /**
   * Stream sockets: writes every byte, blocking the thread while the peer
   * is full. Writes still queued go first (blocking too), so bytes leave in
   * call order and never land inside a pending write.
   *
   * @param bytes The bytes to write.
   */
  writeSync(bytes: ArrayBufferView): void {
    this.#assertStream("write to");
    const from = asBytes(bytes, "Cannot write to UnixSocket");
    flushBeforeSpin(); // what this thread sent may be what the peer awaits
    try {
      // Writes still queued go first: bytes leave in call order.
      this.#sends.drainBlocking();
      sendAllBlocking(this.#fd.fd, from);
    } catch (error) {
      throw this.#sendError(error, from.byteLength);
    }
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
   * Stream sockets: a byte sink with backpressure. Closing or aborting it
   * shuts down this side's writing, so the peer reads end of stream; the
   * socket stays open for reading.
   */
  get writable(): WritableStream<Uint8Array> {
    this.#assertStream("write to");
    return this.#writable ??= byteWritable(
      (chunk) => this.write(chunk),
      () => this.#shutdownQuietly("write"),
    );
  }

  /**
   * Ends one or both directions without closing the socket: after
   * `shutdown("write")` the peer reads end of stream (`null`) once it has
   * read everything sent before, and this side can still read.
   *
   * @param how `"write"` (the default), `"read"` or `"both"`.
   */
  shutdown(how: ShutdownHow = "write"): void {
    const value = SHUTDOWN[how];
    if (value === undefined) {
      throw new TypeError(
        `Cannot shut down UnixSocket: how must be "read", "write" or "both", got ${
          JSON.stringify(how)
        }`,
      );
    }
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
   * @param options Fds to pass and whether to close them once sent.
   * @returns Resolves once everything is in the socket.
   * @throws {RangeError} When a message is larger than the socket can
   * carry, or too many fds are given.
   * @throws {Deno.errors.BrokenPipe} When the peer is gone.
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
    let job: SendJob;
    try {
      job = this.#prepareSend(bytes, options);
      // Nothing waits before it: try right away. Further messages of this
      // turn are gathered and leave together (sendmmsg).
      if (this.#sends.clear) {
        const done = this.#step(job);
        if (this.#type !== "stream") this.#sends.gather();
        if (done) {
          this.#finishSend(job);
          return Promise.resolve();
        }
      }
      // The caller may close or reuse its fds before this send goes out:
      // it carries copies of its own.
      this.#copyFds(job);
    } catch (error) {
      return Promise.reject(this.#sendError(error, bytes?.byteLength ?? 0));
    }
    return this.#sends.push(job);
  }

  /**
   * Sends like {@linkcode send}, blocking the thread while the peer is
   * full. Sends still queued go first, so bytes and messages leave in call
   * order.
   *
   * @param bytes The message or bytes.
   * @param options Fds to pass and whether to close them once sent.
   */
  sendSync(bytes: Uint8Array, options: SocketSendOptions = {}): void {
    try {
      const job = this.#prepareSend(bytes, options);
      flushBeforeSpin(); // what this thread sent may be what the peer awaits
      this.#sends.drainBlocking();
      this.#sendWhole(job);
      this.#finishSend(job);
    } catch (error) {
      throw this.#sendError(error, bytes?.byteLength ?? 0);
    }
  }

  #prepareSend(bytes: Uint8Array, options: SocketSendOptions): SendJob {
    this.#fd.assertOpen();
    if (!(bytes instanceof Uint8Array)) {
      throw new TypeError(
        "Cannot send on UnixSocket: bytes must be a Uint8Array",
      );
    }
    const given = options.fds ?? [];
    if (given.length > MAX_FDS) {
      throw new RangeError(
        `Cannot send on UnixSocket: ${given.length} fds in one message, at most ${MAX_FDS} allowed`,
      );
    }
    const fds: number[] = [];
    const endpoints: FdEndpoint[] = [];
    for (const [i, value] of given.entries()) {
      const fd = typeof value === "number" ? value : value?.rawFd;
      if (!Number.isInteger(fd) || fd < 0) {
        throw new TypeError(
          `Cannot send on UnixSocket: fds[${i}] is not an endpoint or an fd`,
        );
      }
      fds.push(fd);
      if (typeof value !== "number") endpoints.push(value);
    }
    if (fds.length > 0 && this.#type === "stream" && bytes.byteLength === 0) {
      throw new RangeError(
        "Cannot send on UnixSocket: fds on a stream socket need at least one byte of data to travel with",
      );
    }
    return {
      data: bytes,
      fds,
      copied: false,
      endpoints,
      closeSent: options.closeSent === true,
      offset: 0,
      fdsSent: fds.length === 0,
    };
  }

  /** Replaces the fds of a send that will wait with private copies. */
  #copyFds(job: SendJob): void {
    if (job.fdsSent || job.copied) return;
    const copies: number[] = [];
    for (const [i, fd] of job.fds.entries()) {
      try {
        copies.push(dupCloexec(fd));
      } catch (error) {
        closeAll(copies);
        throw new Deno.errors.BadResource(
          `Cannot send on UnixSocket: fds[${i}] (fd ${fd}) cannot be kept until the send: ${
            (error as Error).message
          }`,
          { cause: error },
        );
      }
    }
    job.fds = copies;
    job.copied = true;
  }

  /**
   * Sends what is queued, as far as the socket takes it now: the first
   * stream write, or as many messages as one `sendmmsg` takes. How many
   * are done; a failure is the first one's.
   */
  #advance(jobs: readonly SendJob[]): number {
    if (this.#type === "stream") return this.#step(jobs[0]) ? 1 : 0;
    const sent = sendMessages(this.#fd.fd, jobs, 0);
    return sent < 0 ? 0 : sent;
  }

  /** Ends a queued send: its copies of the fds closed. */
  #settle(job: SendJob): void {
    if (job.copied) {
      closeAll(job.fds);
      job.copied = false;
    }
  }

  /** Sends all of a job, blocking while the peer is full. */
  #sendWhole(job: SendJob): void {
    const fd = this.#fd.fd;
    if (!job.fdsSent || (this.#type !== "stream" && job.offset === 0)) {
      const n = job.fds.length > 0
        ? sendMessage(fd, job.data, job.fds, true)
        : sendBlocking(fd, job.data);
      job.offset = n;
      job.fdsSent = true;
      if (this.#type !== "stream") {
        this.#checkWhole(n, job);
        return;
      }
    }
    if (job.offset < job.data.byteLength) {
      sendAllBlocking(fd, job.data.subarray(job.offset));
      job.offset = job.data.byteLength;
    }
  }

  /** One attempt without blocking; true when the whole send is done. */
  #step(job: SendJob): boolean {
    const fd = this.#fd.fd;
    if (this.#type !== "stream") {
      const n = job.fds.length > 0
        ? sendMessage(fd, job.data, job.fds, false)
        : sendNoWait(fd, job.data);
      if (n < 0) return false;
      this.#checkWhole(n, job);
      return true;
    }
    if (!job.fdsSent) {
      const n = sendMessage(fd, job.data, job.fds, false);
      if (n < 0) return false;
      job.fdsSent = true;
      job.offset = n;
    }
    while (job.offset < job.data.byteLength) {
      const n = sendNoWait(fd, job.data.subarray(job.offset));
      if (n < 0) return false;
      job.offset += n;
    }
    return true;
  }

  #checkWhole(n: number, job: SendJob): void {
    // The kernel sends datagrams and packets whole or not at all.
    if (n !== job.data.byteLength) {
      throw new RangeError(
        `Cannot send on UnixSocket: only ${n} of ${job.data.byteLength} bytes of the message were sent`,
      );
    }
  }

  #finishSend(job: SendJob): void {
    if (!job.closeSent) return;
    for (const endpoint of job.endpoints) {
      (endpoint as { close?: () => void }).close?.();
    }
  }

  #sendError(error: unknown, size: number): unknown {
    const code = (error as Partial<SystemError>)?.errno;
    if (code === undefined) return error;
    if (
      code === ERRNO.EPIPE || code === ERRNO.ECONNREFUSED ||
      code === ERRNO.ECONNRESET || code === ERRNO.ENOTCONN
    ) {
      return new Deno.errors.BrokenPipe(
        `Cannot send on UnixSocket: the peer is gone (${
          (error as SystemError).code
        })`,
        { cause: error },
      );
    }
    if (code === ERRNO.EMSGSIZE) {
      let limit = "";
      try {
        const sndbuf = getIntOption(this.#fd.fd, SOCK.SO_SNDBUF, "SO_SNDBUF");
        limit = ` of ${sndbuf - 32} bytes (SO_SNDBUF ${sndbuf})`;
      } catch {
        // The limit is only detail for the message.
      }
      return new RangeError(
        `Cannot send on UnixSocket: message of ${size} bytes exceeds the socket's limit${limit}`,
        { cause: error },
      );
    }
    if (code === ERRNO.ETOOMANYREFS) {
      return new RangeError(
        "Cannot send on UnixSocket: too many fds are in flight to unread sockets (ETOOMANYREFS)",
        { cause: error },
      );
    }
    return error;
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
   * @param options Spin time, fd and byte limits.
   * @returns The message, or `null` at end of stream (the peer closed or shut
   * down its writing side).
   * @throws {RangeError} When a message carries more fds than `maxFds`; they
   * are closed.
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
    let maxFds: number;
    let maxBytes: number;
    let spinner: Spinner;
    try {
      ({ maxFds, maxBytes } = recvLimits(options));
      spinner = spinnerFor(
        options.spin,
        this.#readSpinner,
        "Cannot receive on UnixSocket",
      );
      const now = this.#tryRecv(maxFds, maxBytes, false);
      if (now !== undefined) {
        // A peer that keeps the socket full never lets this wait; timers
        // and other I/O get a turn after each slice of such deliveries.
        return this.#slice.delivered()
          ? yieldTurn().then(() => now)
          : Promise.resolve(now);
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#recvLater(maxFds, maxBytes, spinner);
  }

  /** A receive that found nothing at once: spins, then parks. */
  async #recvLater(
    maxFds: number,
    maxBytes: number,
    spinner: Spinner,
  ): Promise<SocketMessage | null> {
    let waited = false;
    // recv() tried once already: go straight to the spin.
    const message = await untilReady(
      () => this.#tryRecv(maxFds, maxBytes, false),
      () => {
        waited = true;
        return this.#fd.wait("read");
      },
      spinner,
      true,
    );
    if (waited) this.#slice.waited();
    else if (this.#slice.delivered()) await yieldTurn();
    return message;
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
   * arrives.
   *
   * @param options Fd and byte limits.
   * @returns The message, or `null` at end of stream.
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
      streamScratch ??= new Uint8Array(DEFAULT_MAX_BYTES);
      const into = maxBytes <= streamScratch.byteLength
        ? streamScratch.subarray(0, maxBytes)
        : new Uint8Array(maxBytes);
      const got = this.#receive(fd, into, maxFds, wait);
      if (got === undefined || got === null) return got;
      if (got.bytes === 0 && got.fds.length === 0) return null;
      return this.#message(into.slice(0, got.bytes), got.fds);
    }
    let size: number;
    try {
      size = peekSize(fd, wait);
    } catch (error) {
      // A peer that closed with unread messages of ours reports ECONNRESET
      // once, ahead of the messages it sent before closing: read on.
      if ((error as SystemError).errno === ERRNO.ECONNRESET) {
        return this.#tryRecv(maxFds, maxBytes, wait);
      }
      throw error;
    }
    if (size < 0) return undefined;
    const data = new Uint8Array(size);
    const got = this.#receive(fd, data, maxFds, wait);
    if (got === undefined || got === null) return got;
    if ((got.flags & MSG.TRUNC) !== 0) {
      // Only possible when another process took the peeked message first.
      closeAll(got.fds);
      throw new RangeError(
        "Cannot receive on UnixSocket: the message was larger than the one measured, and was truncated",
      );
    }
    // An empty read is an empty message unless this side can read no more.
    if (got.bytes === 0 && got.fds.length === 0 && readHangup(fd)) {
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
  ): { bytes: number; fds: number[]; flags: number } | null | undefined {
    try {
      return receiveMessage(fd, into, maxFds, wait) ?? undefined;
    } catch (error) {
      // ECONNRESET is reported once, ahead of data still queued: try again.
      if ((error as SystemError).errno === ERRNO.ECONNRESET) {
        return this.#receive(fd, into, maxFds, wait);
      }
      throw error;
    }
  }

  #message(data: Uint8Array<ArrayBuffer>, fds: number[]): SocketMessage {
    const endpoints: Endpoint[] = [];
    for (let i = 0; i < fds.length; i++) {
      try {
        endpoints.push(adoptFd(fds[i]));
      } catch (error) {
        for (const endpoint of endpoints) endpoint.close();
        closeAll(fds.slice(i));
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

  /** @internal Gives up the fd without closing it. */
  _release(): number {
    this.#endQueue();
    return this.#fd.release();
  }

  /**
   * Before the fd goes: sends gathered this turn that fit still leave (as
   * they would have at once), the rest reject with `BadResource`.
   */
  #endQueue(): void {
    this.#sends.end(closedError("UnixSocket"));
  }
}

/** Options for {@linkcode socketpair}. */
export interface SocketPairOptions {
  /** `"stream"` (the default), `"dgram"` or `"seqpacket"`. */
  type?: SocketType;
  /**
   * Send and receive buffer sizes in bytes for both ends (`SO_SNDBUF`,
   * `SO_RCVBUF`). The kernel caps them at `net.core.wmem_max` and
   * `rmem_max`. The send buffer bounds the largest datagram or packet.
   * Default: the kernel's.
   */
  bufferSize?: number;
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
  const type = checkType(options.type ?? "stream", "create socket pair");
  const { bufferSize } = options;
  if (
    bufferSize !== undefined &&
    (!Number.isInteger(bufferSize) || bufferSize <= 0 ||
      bufferSize > 2 ** 30)
  ) {
    throw new RangeError(
      `Cannot create socket pair: bufferSize must be a positive integer, got ${bufferSize}`,
    );
  }
  const lib = libc();
  const fds = new Int32Array(2);
  check(
    "socketpair",
    lib.socketpair(SOCK.AF_UNIX, KERNEL_TYPES[type] | SOCK.CLOEXEC, 0, fds),
  );
  try {
    if (bufferSize !== undefined) {
      for (const fd of fds) {
        setIntOption(fd, SOCK.SO_SNDBUF, "SO_SNDBUF", bufferSize);
        setIntOption(fd, SOCK.SO_RCVBUF, "SO_RCVBUF", bufferSize);
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

// --- Named sockets ---

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

  /**
   * Takes ownership of a listening Unix socket. Prefer
   * {@linkcode listen} or `fromFd()`; a listener adopted this way never
   * removes its socket file.
   *
   * @param fd A listening `AF_UNIX` socket (stream or seqpacket).
   */
  constructor(fd: number) {
    const type = typeName(getIntOption(fd, SOCK.SO_TYPE, "SO_TYPE"));
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

  /** @internal Records the socket file to remove at close. */
  _own(path: string, published: FileId): void {
    this.#path = path;
    this.#published = published;
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
    for (;;) {
      const fd = this.#fd.fd;
      if (pollNow(fd, POLL.IN) === 0) return -1;
      const result = lib.accept4(fd, null, null, SOCK.CLOEXEC);
      if (result >= 0) return result;
      const code = errno();
      if (code === ERRNO.EINTR || code === ERRNO.ECONNABORTED) continue;
      if (code === ERRNO.EAGAIN) return -1;
      check("accept4", result);
    }
  }

  /**
   * Waits (without blocking the thread) for the next connection.
   *
   * @param options An abort signal.
   * @returns The connected socket.
   * @throws The signal's reason when it is aborted; `BadResource` when the
   * listener is closed meanwhile.
   */
  async accept(options: AcceptOptions = {}): Promise<UnixSocket> {
    const { signal } = options;
    signal?.throwIfAborted();
    for (;;) {
      const fd = this.#tryAccept();
      if (fd >= 0) return new UnixSocket(fd, this.#type);
      await this.#fd.wait("read", signal);
    }
  }

  /**
   * Waits for the next connection, blocking the thread.
   *
   * @returns The connected socket.
   */
  acceptSync(): UnixSocket {
    flushBeforeSpin(); // what this thread sent may be what a client awaits
    const fd = retry(
      "accept4",
      () => libc().accept4(this.#fd.fd, null, null, SOCK.CLOEXEC),
    );
    return new UnixSocket(fd, this.#type);
  }

  /** Yields each accepted connection until the listener is closed. */
  async *[Symbol.asyncIterator](): AsyncGenerator<UnixSocket> {
    for (;;) {
      let socket: UnixSocket;
      try {
        socket = await this.accept();
      } catch (error) {
        if (this.#fd.closed) return;
        throw error;
      }
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

  /** @internal Gives up the fd without closing it (or removing the file). */
  _release(): number {
    this.#published = undefined;
    return this.#fd.release();
  }
}

/** The socket type of a named socket: datagram sockets do not connect. */
export type ListenType = "stream" | "seqpacket";

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

function listenType(type: unknown, doing: string): ListenType {
  const checked = checkType(type ?? "stream", doing);
  if (checked === "dgram") {
    throw new TypeError(
      `Cannot ${doing}: a dgram socket does not connect; use "stream" or "seqpacket"`,
    );
  }
  return checked;
}

/**
 * Listens on a named local socket: a filesystem path, or a name in Linux's
 * abstract namespace (no file; gone when the listener closes).
 *
 * A socket file left behind by a server that died is detected (nothing
 * accepts on it) and replaced; a live server's socket is never taken over.
 * The file appears with its final permissions, already listening: it is
 * bound and given its mode in a private directory made next to it (named
 * `.ipc-` and 12 random characters, removed again before `listen()`
 * returns), then renamed into place. So `path` may be at most 89 bytes,
 * and its directory must be writable. No lock is taken: nothing another
 * user does can make `listen()` wait.
 *
 * @param options `{ path }` or `{ abstract }`, type, mode and backlog.
 * @returns The listener.
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
  const type = listenType(options?.type, "listen");
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
  const lib = libc();
  const fd = check(
    "socket",
    lib.socket(SOCK.AF_UNIX, KERNEL_TYPES[type] | SOCK.CLOEXEC, 0),
  );
  try {
    if (options.path !== undefined) {
      const published = publishPath(fd, options.path, mode, backlog);
      const listener = new UnixListener(fd);
      listener._own(options.path, published);
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

/**
 * Who the server must be, checked by {@linkcode connect} before it returns
 * (so before anything is sent): the credentials the kernel recorded when
 * the server called `listen()` (`SO_PEERCRED`).
 */
export interface ExpectedServer {
  /**
   * The server's user id. Default: this process's own, so that a name
   * released by its server and taken over by another user (abstract names
   * have no permissions; a path in a shared directory can be replaced)
   * never receives this process's messages. `"any"` skips the check.
   */
  expectUid?: number | "any";
  /** The server's process id, when it is known. Default: any. */
  expectPid?: number;
}

/** Options for {@linkcode connect}: an address and the socket type. */
export type ConnectOptions = UnixAddress & ExpectedServer & {
  /** `"stream"` (the default) or `"seqpacket"`: the listener's type. */
  type?: ListenType;
  /** Aborting it while the server's queue is full gives up. */
  signal?: AbortSignal;
};

/** The checks of {@linkcode ExpectedServer}, validated. */
interface ServerCheck {
  uid: number | undefined;
  pid: number | undefined;
}

function serverCheck(expected: ExpectedServer): ServerCheck {
  const { expectUid, expectPid } = expected;
  let uid: number | undefined;
  if (expectUid === undefined) {
    uid = libc().getuid();
  } else if (expectUid !== "any") {
    if (
      !Number.isInteger(expectUid) || expectUid < 0 || expectUid > 2 ** 32 - 1
    ) {
      throw new TypeError(
        `Cannot connect: expectUid must be a user id or "any", got ${
          JSON.stringify(expectUid)
        }`,
      );
    }
    uid = expectUid;
  }
  if (
    expectPid !== undefined &&
    (!Number.isInteger(expectPid) || expectPid <= 0)
  ) {
    throw new TypeError(
      `Cannot connect: expectPid must be a process id, got ${
        JSON.stringify(expectPid)
      }`,
    );
  }
  return { uid, pid: expectPid };
}

/**
 * Throws `PermissionDenied` unless the server at the other end of `fd`
 * matches `expected`.
 */
function checkServer(fd: number, expected: ServerCheck, label: string): void {
  const { pid, uid } = peerCredentialsOf(fd);
  if (expected.uid !== undefined && uid !== expected.uid) {
    throw new Deno.errors.PermissionDenied(
      `Cannot connect to ${label}: the server runs as uid ${uid}, not the expected uid ${expected.uid}; nothing was sent`,
    );
  }
  if (expected.pid !== undefined && pid !== expected.pid) {
    throw new Deno.errors.PermissionDenied(
      `Cannot connect to ${label}: the server is process ${pid}, not the expected process ${expected.pid}; nothing was sent`,
    );
  }
}

function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function connectError(code: number, label: string): Error {
  const cause = { cause: systemError("connect", code) };
  if (code === ERRNO.ENOENT) {
    return new Deno.errors.NotFound(
      `Cannot connect to ${label}: no socket exists there`,
      cause,
    );
  }
  if (code === ERRNO.ECONNREFUSED) {
    return new Deno.errors.ConnectionRefused(
      `Cannot connect to ${label}: no server is listening`,
      cause,
    );
  }
  if (code === ERRNO.EACCES || code === ERRNO.EPERM) {
    return new Deno.errors.PermissionDenied(
      `Cannot connect to ${label}: permission denied`,
      cause,
    );
  }
  if (code === ERRNO.EPROTOTYPE) {
    return new TypeError(
      `Cannot connect to ${label}: the server's socket is of another type`,
      cause,
    );
  }
  return cause.cause;
}

/**
 * Connects to a named local socket. Waits (without blocking the thread)
 * while the server's queue of pending connections is full.
 *
 * The server is authenticated before the socket is returned: by default it
 * must run as this process's user (`SO_PEERCRED`), so a name taken over by
 * another user gets nothing; `expectUid` and `expectPid` say who else to
 * accept.
 *
 * @param options `{ path }` or `{ abstract }`, the type, who the server
 * must be, and an abort signal.
 * @returns The connected socket.
 * @throws {Deno.errors.NotFound} When nothing is at the path.
 * @throws {Deno.errors.ConnectionRefused} When no server listens there.
 * @throws {Deno.errors.PermissionDenied} When the server is not the
 * expected user or process; the connection is closed unused.
 *
 * @example Connect by path
 * ```ts ignore
 * import { connect } from "@conduit/ipc/socketpair";
 *
 * using conn = await connect({ path: "/tmp/app.sock" });
 * await conn.write(new TextEncoder().encode("hello"));
 * ```
 *
 * @example Connect to a service that runs as root
 * ```ts ignore
 * import { connect } from "@conduit/ipc/socketpair";
 *
 * using conn = await connect({ path: "/run/app.sock", expectUid: 0 });
 * ```
 */
export async function connect(options: ConnectOptions): Promise<UnixSocket> {
  const type = listenType(options?.type, "connect");
  const address = encodeAddress(options, "connect to");
  const expected = serverCheck(options);
  const { signal } = options;
  signal?.throwIfAborted();
  const lib = libc();
  // Nonblocking only while private to this call: cleared before anyone else
  // can hold the socket.
  const fd = check(
    "socket",
    lib.socket(
      SOCK.AF_UNIX,
      KERNEL_TYPES[type] | SOCK.CLOEXEC | SOCK.NONBLOCK,
      0,
    ),
  );
  try {
    let backoff = 1;
    for (;;) {
      if (lib.connect(fd, address.bytes, address.length) === 0) break;
      const code = errno();
      if (code === ERRNO.EINTR) continue;
      if (code !== ERRNO.EAGAIN) throw connectError(code, address.label);
      // The backlog is full; a unix socket gives no readiness for room.
      await pause(backoff, signal);
      backoff = Math.min(backoff * 2, 50);
    }
    checkServer(fd, expected, address.label);
    const flags = check("fcntl(F_GETFL)", lib.fcntl(fd, F.GETFL, 0));
    check("fcntl(F_SETFL)", lib.fcntl(fd, F.SETFL, flags & ~O.NONBLOCK));
    return new UnixSocket(fd, type);
  } catch (error) {
    lib.close(fd);
    throw error;
  }
}

registerAdopter((fd, kind) => {
  if (kind !== "socket") return null;
  if (getIntOption(fd, SOCK.SO_DOMAIN, "SO_DOMAIN") !== SOCK.AF_UNIX) {
    return null;
  }
  const type = typeName(getIntOption(fd, SOCK.SO_TYPE, "SO_TYPE"));
  if (type === undefined) return null;
  if (getIntOption(fd, SOCK.SO_ACCEPTCONN, "SO_ACCEPTCONN") === 1) {
    return new UnixListener(fd);
  }
  return new UnixSocket(fd, type);
});

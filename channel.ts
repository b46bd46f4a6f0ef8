/**
 * Typed channels between processes, in the spirit of Servo's ipc-channel:
 * {@linkcode channel} gives a {@linkcode Sender} and a {@linkcode Receiver}
 * of structured-clone values (plus endpoints, which travel as fds and arrive
 * live), {@linkcode bytesChannel} carries `Uint8Array`s without
 * serialization, and {@linkcode ReceiverSet} waits on many receivers.
 *
 * - Each sender has its own `SOCK_SEQPACKET` connection to the receiver:
 *   a frame arrives whole or not at all, even when its sender is killed.
 *   Frames above 64 KiB travel in a sealed memfd, so messages of any size
 *   (up to `maxMessageBytes`, 1 GiB by default) arrive whole.
 * - Capacity is per sender: a sender may have `capacity` messages that the
 *   receiver has not taken yet; then `send()` waits until the receiver
 *   acknowledges some (credit-based flow control).
 * - `tx.clone()` makes another sender of the same channel; the receiver
 *   reports {@linkcode ChannelClosedError} once every sender, in every
 *   process, is closed.
 * - Values are encoded by a compact binary codec (not `node:v8`); the bytes
 *   of typed arrays, `DataView`s and `ArrayBuffer`s travel beside the
 *   encoded header, written straight from the caller's buffers.
 * - Sending a `Sender` sends a new sender of its channel (the original stays
 *   usable); sending a `Receiver` moves it: this process's copy is closed.
 *   Other endpoints (pipe ends, sockets, shared memory, queue ends) arrive
 *   as copies of the same open file; this process keeps its own unless they
 *   are listed in `transfer`.
 * - Nothing from the peer is trusted: a malformed frame rejects the receive
 *   with `Deno.errors.InvalidData`, closes every fd that came with it, and
 *   drops that sender's connection.
 *
 * @example Values across a channel
 * ```ts
 * import { channel } from "@conduit/ipc/channel";
 *
 * const [tx, rx] = channel<{ n: number; when: Date }>();
 * await tx.send({ n: 1, when: new Date(0) });
 * console.log(await rx.recv()); // { n: 1, when: 1970-01-01T00:00:00.000Z }
 * tx.close();
 * rx.close();
 * ```
 *
 * @module
 */

import { OwnedFd } from "./ffi/fd.ts";
import { closedError, ERRNO, type SystemError } from "./ffi/errors.ts";
import { MSG } from "./ffi/layout.ts";
import { libc } from "./ffi/libc.ts";
import { closeAll, receiveMessage } from "./_scm.ts";
import {
  type BlobSpec,
  decode,
  type DecodeLimits,
  DEFAULT_LIMITS,
  encode,
  type EndpointHooks,
  invalid,
  readBlobTable,
  type Reader,
  resolveLimits,
  type Writer,
} from "./_channel_codec.ts";
import {
  FRAME,
  HEADER,
  header,
  INLINE_MAX,
  markSocket,
  MAX_FDS,
  memfdSize,
  preadAll,
  readMark,
  sendFrame,
  seqpacketPair,
  VERSION,
  writeMemfd,
} from "./_channel_wire.ts";
import { boundAddress } from "./_unix_addr.ts";
import "./from_fd.ts";
import { adoptFd, registerAdopter } from "./_adopt.ts";
import { PipeReader, PipeWriter } from "./pipe.ts";
import { UnixListener, UnixSocket } from "./socketpair.ts";
import { SharedMemory, ShmReceiver, ShmSender } from "./shm/mod.ts";

/**
 * Thrown by a receive once every sender of the channel is closed (and every
 * message they sent was taken), and by a send once the receiver is closed.
 *
 * @example Drain until the senders are gone
 * ```ts
 * import { channel, ChannelClosedError } from "@conduit/ipc/channel";
 *
 * const [tx, rx] = channel<number>();
 * await tx.send(1);
 * tx.close();
 * console.log(await rx.recv()); // 1
 * try {
 *   await rx.recv();
 * } catch (error) {
 *   console.log(error instanceof ChannelClosedError); // true
 * }
 * rx.close();
 * ```
 */
export class ChannelClosedError extends Error {
  /**
   * Creates the error.
   *
   * @param message What was attempted and why it failed.
   * @param options The cause, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ChannelClosedError";
  }
}

/** Options for {@linkcode channel} and {@linkcode bytesChannel}. */
export interface ChannelOptions {
  /**
   * Messages each sender may have in flight (sent but not yet taken by the
   * receiver) before `send()` waits. Default 64, at most 1_000_000.
   */
  capacity?: number;
}

export type { DecodeLimits };

/** Options for {@linkcode channel}. */
export interface ValueChannelOptions extends ChannelOptions {
  /**
   * What decoding one message may build, for the receiver: see
   * {@linkcode Receiver.limits}. Fields left out keep their defaults.
   */
  limits?: DecodeLimits;
}

/** Options for {@linkcode Sender.send}. */
export interface ChannelSendOptions {
  /**
   * Endpoints inside the value that this process gives up: closed once the
   * message is sent. (Receivers in a message are always moved.)
   */
  transfer?: readonly { close(): void }[];
  /** Aborting it while the send still waits for room gives the send up. */
  signal?: AbortSignal;
}

/** Options for {@linkcode Receiver.recv}. */
export interface ChannelRecvOptions {
  /** Aborting it rejects the pending receive with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Microseconds to keep looking before parking in the poller: cuts
   * round-trip latency when the peer answers quickly, at the cost of CPU.
   * Default 0. ({@linkcode ReceiverSet.select} ignores it.)
   */
  spin?: number;
}

const DEFAULT_CAPACITY = 64;
const MAX_CAPACITY = 1_000_000;
/** The largest message a receiver takes (it refuses bigger memfds). */
const MAX_MESSAGE = 2 ** 30;
/** The most sender connections one receiver keeps. */
const MAX_CONNECTIONS = 4096;

const MODE_VALUE = 0;
const MODE_BYTES = 1;

/** Endpoint kinds in the value codec. */
const KIND = {
  PIPE_READER: 1,
  PIPE_WRITER: 2,
  UNIX_SOCKET: 3,
  UNIX_LISTENER: 4,
  SHARED_MEMORY: 5,
  SHM_SENDER: 6,
  SHM_RECEIVER: 7,
  SENDER: 8,
  RECEIVER: 9,
} as const;

function checkCapacity(value: number | undefined, doing: string): number {
  if (value === undefined) return DEFAULT_CAPACITY;
  if (!Number.isInteger(value) || value < 1 || value > MAX_CAPACITY) {
    throw new RangeError(
      `Cannot ${doing}: capacity must be an integer from 1 to ${MAX_CAPACITY}, got ${value}`,
    );
  }
  return value;
}

function ackEvery(capacity: number): number {
  return Math.max(1, Math.floor(capacity / 4));
}

function isGone(error: unknown): boolean {
  const code = (error as Partial<SystemError>)?.errno;
  return code === ERRNO.EPIPE || code === ERRNO.ECONNRESET ||
    code === ERRNO.ENOTCONN || code === ERRNO.ECONNREFUSED;
}

function sendClosed(cause?: unknown): ChannelClosedError {
  return new ChannelClosedError(
    "Cannot send on channel: the receiver is closed",
    cause === undefined ? undefined : { cause },
  );
}

/** Waits for any of `fds` to be readable (or one to close). */
async function waitAny(
  fds: readonly OwnedFd[],
  signal: AbortSignal | undefined,
): Promise<void> {
  if (fds.length === 1) return await fds[0].wait("read", signal);
  const stop = new AbortController();
  const both = signal === undefined
    ? stop.signal
    : AbortSignal.any([stop.signal, signal]);
  try {
    await Promise.any(fds.map((fd) => fd.wait("read", both)));
  } catch (error) {
    signal?.throwIfAborted();
    throw (error as AggregateError).errors?.[0] ?? error;
  } finally {
    stop.abort();
  }
}

// --- Frames being sent ---

/** One encoded message and what must happen once it is sent or given up. */
interface Frame {
  parts: Uint8Array[];
  fds: number[];
  /** Runs once the frame is in the socket. */
  sent(): void;
  /** Runs when the frame will never be sent. */
  abandon(): void;
}

/** Collects the fds of the endpoints in one value while it is encoded. */
class Outgoing implements EndpointHooks {
  fds: number[] = [];
  clones: Sender<unknown>[] = [];
  moving: Receiver<unknown>[] = [];

  #fd(endpoint: { rawFd: number }): number {
    const index = this.fds.length;
    this.fds.push(endpoint.rawFd);
    if (this.fds.length > MAX_FDS - 1) {
      throw new RangeError(
        `Cannot send on channel: the value holds more than ${MAX_FDS - 1} fds`,
      );
    }
    return index;
  }

  encode(value: object, out: Writer): boolean {
    let kind: number;
    if (value instanceof Sender) {
      const clone = value.clone();
      this.clones.push(clone);
      out.u8(KIND.SENDER);
      out.varint(this.#fd(clone));
      out.varint(clone._capacity);
      out.u8(clone._mode);
      return true;
    }
    if (value instanceof Receiver) {
      const connections = value._beginMove();
      this.moving.push(value);
      out.u8(KIND.RECEIVER);
      out.varint(connections.length);
      for (const conn of connections) {
        out.varint(this.#fd({ rawFd: conn.fd.fd }));
        out.varint(conn.capacity);
        out.varint(conn.unacked);
      }
      return true;
    }
    if (value instanceof PipeReader) kind = KIND.PIPE_READER;
    else if (value instanceof PipeWriter) kind = KIND.PIPE_WRITER;
    else if (value instanceof UnixSocket) kind = KIND.UNIX_SOCKET;
    else if (value instanceof UnixListener) kind = KIND.UNIX_LISTENER;
    else if (value instanceof SharedMemory) kind = KIND.SHARED_MEMORY;
    else if (value instanceof ShmSender) kind = KIND.SHM_SENDER;
    else if (value instanceof ShmReceiver) kind = KIND.SHM_RECEIVER;
    else return false;
    out.u8(kind);
    out.varint(this.#fd(value as { rawFd: number }));
    return true;
  }

  decode(): unknown {
    throw new Error("unreachable");
  }

  /** The message is out: local copies of sent clones and moved receivers go. */
  finish(transfer: readonly { close(): void }[] | undefined): void {
    for (const clone of this.clones) clone.close();
    for (const receiver of this.moving) receiver._endMove(true);
    for (const endpoint of transfer ?? []) endpoint.close();
  }

  abandon(): void {
    for (const clone of this.clones) clone.close();
    for (const receiver of this.moving) receiver._endMove(false);
  }
}

function valueFrame(
  value: unknown,
  transfer: readonly { close(): void }[] | undefined,
): Frame {
  const outgoing = new Outgoing();
  let encoded;
  try {
    encoded = encode(value, outgoing);
  } catch (error) {
    outgoing.abandon();
    throw error;
  }
  const { head, treeLength, blobs, blobBytes } = encoded;
  const total = HEADER + head.byteLength + blobBytes;
  let frame: Frame;
  if (total <= INLINE_MAX) {
    frame = {
      parts: [
        header(
          FRAME.MESSAGE,
          outgoing.fds.length,
          head.byteLength,
          treeLength,
        ),
        head,
        ...blobs,
      ],
      fds: outgoing.fds,
      sent: () => outgoing.finish(transfer),
      abandon: () => outgoing.abandon(),
    };
  } else {
    let memfd: number;
    try {
      memfd = writeMemfd([head, ...blobs]);
    } catch (error) {
      outgoing.abandon();
      throw error;
    }
    frame = {
      parts: [
        header(
          FRAME.MESSAGE_MEMFD,
          outgoing.fds.length,
          head.byteLength,
          treeLength,
        ),
      ],
      fds: [...outgoing.fds, memfd],
      sent: () => {
        libc().close(memfd);
        outgoing.finish(transfer);
      },
      abandon: () => {
        libc().close(memfd);
        outgoing.abandon();
      },
    };
  }
  return frame;
}

function bytesFrame(bytes: Uint8Array): Frame {
  if (!(bytes instanceof Uint8Array)) {
    throw new TypeError(
      "Cannot send on bytes channel: the message must be a Uint8Array",
    );
  }
  if (HEADER + bytes.byteLength <= INLINE_MAX) {
    return {
      parts: [header(FRAME.BYTES), bytes],
      fds: [],
      sent() {},
      abandon() {},
    };
  }
  const memfd = writeMemfd([bytes]);
  const close = () => libc().close(memfd);
  return {
    parts: [header(FRAME.BYTES_MEMFD)],
    fds: [memfd],
    sent: close,
    abandon: close,
  };
}

// --- Sender ---

/**
 * The sending end of a channel from {@linkcode channel} or
 * {@linkcode bytesChannel} (or `connectOneShot()`). Send it inside a message
 * to give another process a sender of the same channel; `clone()` makes
 * another one here.
 *
 * @typeParam T The message type.
 *
 * @example Several senders, one receiver
 * ```ts
 * import { channel } from "@conduit/ipc/channel";
 *
 * const [tx, rx] = channel<string>();
 * const tx2 = tx.clone();
 * await tx.send("a");
 * await tx2.send("b");
 * tx.close();
 * tx2.close();
 * for await (const s of rx) console.log(s); // "a", "b" in some order
 * rx.close();
 * ```
 */
export class Sender<T> implements Disposable {
  #fd: OwnedFd;
  #capacity: number;
  #mode: number;
  #credits: number;
  #tail: Promise<unknown> = Promise.resolve();
  #queued = 0;
  #registering = 0;
  #closed = false;
  #closing = new AbortController();
  #ackBuf = new Uint8Array(new ArrayBuffer(64));

  /**
   * @internal Use {@linkcode channel}, {@linkcode Sender.clone} or
   * `fromFd()`.
   */
  constructor(fd: number, capacity: number, mode: number) {
    this.#fd = new OwnedFd(fd, "Sender");
    this.#capacity = capacity;
    this.#credits = capacity;
    this.#mode = mode;
  }

  /** @internal */
  get _capacity(): number {
    return this.#capacity;
  }

  /** @internal */
  get _mode(): number {
    return this.#mode;
  }

  /** Messages this sender may have in flight before `send()` waits. */
  get capacity(): number {
    return this.#capacity;
  }

  /** The connection socket, for interop; the sender still owns it. */
  get rawFd(): number {
    if (this.#closed) throw closedError("Sender");
    return this.#fd.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError("Sender");
  }

  /**
   * Sends one message. The value is encoded at once (later changes to it do
   * not travel). Resolves once the message is in the channel; waits
   * (without blocking the thread) while `capacity` messages of this sender
   * are not yet taken. Sends of one sender arrive in order.
   *
   * @param value The message: anything structured clone takes, plus
   * endpoints.
   * @param options Endpoints to give up once sent; an abort signal.
   * @returns Resolves when sent.
   * @throws {ChannelClosedError} When the receiver is closed.
   * @throws {DOMException} `DataCloneError` when the value holds something
   * that cannot travel (a function, a symbol, a `WeakMap`, ...).
   *
   * @example Send endpoints along
   * ```ts
   * import { channel } from "@conduit/ipc/channel";
   * import { pipe } from "@conduit/ipc/pipe";
   *
   * const [tx, rx] = channel<{ out: unknown }>();
   * const { reader, writer } = pipe();
   * await tx.send({ out: writer }, { transfer: [writer] });
   * const { out } = await rx.recv();
   * (out as { close(): void }).close();
   * reader.close();
   * tx.close();
   * rx.close();
   * ```
   */
  send(value: T, options: ChannelSendOptions = {}): Promise<void> {
    let frame: Frame;
    try {
      this.#assertOpen();
      options.signal?.throwIfAborted();
      frame = this.#mode === MODE_BYTES
        ? bytesFrame(value as Uint8Array)
        : valueFrame(value, options.transfer);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.#queued === 0) {
      try {
        if (this.#trySend(frame)) return Promise.resolve();
      } catch (error) {
        frame.abandon();
        return Promise.reject(this.#sendError(error));
      }
    }
    this.#queued++;
    const signal = options.signal === undefined
      ? this.#closing.signal
      : AbortSignal.any([this.#closing.signal, options.signal]);
    const run = async () => {
      try {
        for (;;) {
          this.#assertOpen();
          signal.throwIfAborted();
          if (this.#trySend(frame)) return;
          await this.#fd.wait(this.#credits === 0 ? "read" : "write", signal);
        }
      } catch (error) {
        frame.abandon();
        if (this.#closed) throw closedError("Sender");
        throw this.#sendError(error);
      } finally {
        this.#queued--;
      }
    };
    const result = this.#tail.then(run);
    this.#tail = result.catch(() => {});
    return result;
  }

  /** One attempt without waiting; true once the frame is in the socket. */
  #trySend(frame: Frame): boolean {
    if (this.#credits === 0) {
      this.#takeAcks();
      if (this.#credits === 0) return false;
    }
    if (!sendFrame(this.#fd.fd, frame.parts, frame.fds)) return false;
    this.#credits--;
    frame.sent();
    return true;
  }

  /** Reads every acknowledgement that arrived, returning credits. */
  #takeAcks(): void {
    for (;;) {
      let got;
      try {
        got = receiveMessage(this.#fd.fd, this.#ackBuf, 1, false);
      } catch (error) {
        if (isGone(error)) throw sendClosed(error);
        throw error;
      }
      if (got === null) return;
      if (got.bytes === 0 && got.fds.length === 0) throw sendClosed();
      closeAll(got.fds);
      const buf = this.#ackBuf;
      if (
        got.bytes !== HEADER || buf[0] !== FRAME.ACK || buf[1] !== VERSION ||
        got.fds.length > 0
      ) {
        throw invalid("the receiver sent something other than an ack");
      }
      const n = new DataView(buf.buffer).getUint32(4, true);
      this.#credits = Math.min(this.#capacity, this.#credits + n);
    }
  }

  #sendError(error: unknown): unknown {
    if (isGone(error)) return sendClosed(error);
    if ((error as Partial<SystemError>)?.errno === 109) {
      return new RangeError(
        "Cannot send on channel: too many fds are in flight (ETOOMANYREFS)",
        { cause: error },
      );
    }
    return error;
  }

  /**
   * Makes another sender of the same channel, with its own connection and
   * its own `capacity`. The receiver reports the channel closed only once
   * every sender is closed.
   *
   * @returns The new sender.
   *
   * @example Hand a clone to a helper
   * ```ts
   * import { channel } from "@conduit/ipc/channel";
   *
   * const [tx, rx] = channel<number>();
   * using helper = tx.clone();
   * await helper.send(7);
   * console.log(await rx.recv()); // 7
   * tx.close();
   * rx.close();
   * ```
   */
  clone(): Sender<T> {
    this.#assertOpen();
    const [mine, theirs] = seqpacketPair();
    try {
      markSocket(mine, "s", this.#mode, this.#capacity);
      markSocket(theirs, "r", this.#mode, this.#capacity);
    } catch (error) {
      closeAll([mine, theirs]);
      throw error;
    }
    const clone = new Sender<T>(mine, this.#capacity, this.#mode);
    const parts = [header(FRAME.ADD_PEER, this.#capacity, this.#mode)];
    const done = () => libc().close(theirs);
    let sent: boolean;
    try {
      sent = sendFrame(this.#fd.fd, parts, [theirs]);
    } catch {
      // The receiver is gone: so is the clone's channel, as sends will say.
      sent = true;
    }
    if (sent) {
      done();
      return clone;
    }
    // The socket is full: register once there is room. Closing this sender
    // meanwhile waits for the registration to go out.
    this.#registering++;
    (async () => {
      try {
        for (;;) {
          if (sendFrame(this.#fd.fd, parts, [theirs])) return;
          await this.#fd.wait("write");
        }
      } catch {
        // The receiver is gone; the clone's sends will say so.
      } finally {
        done();
        this.#registering--;
        if (this.#closed && this.#registering === 0) this.#fd.close();
      }
    })();
    return clone;
  }

  /** Lets pending sends keep the process alive (the default). */
  ref(): void {
    this.#fd.ref();
  }

  /** Lets the process exit while a send is pending. */
  unref(): void {
    this.#fd.unref();
  }

  /**
   * Closes this sender; pending sends reject with `BadResource`. Once every
   * sender of the channel is closed, the receiver's next `recv()` (after
   * the messages already sent) throws {@linkcode ChannelClosedError}.
   * Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.abort(closedError("Sender"));
    if (this.#registering === 0) this.#fd.close();
  }

  /** Closes the sender. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @internal Gives up the fd without closing it. */
  _release(): number {
    this.#assertOpen();
    this.#closed = true;
    return this.#fd.release();
  }
}

// --- Receiver ---

/** One sender's connection, as the receiver sees it. */
interface Connection {
  fd: OwnedFd;
  capacity: number;
  /** Messages taken since the last acknowledgement. */
  unacked: number;
}

/** What one look at a receiver found. */
export type Polled<T> =
  | { kind: "value"; value: T }
  | { kind: "closed" }
  | { kind: "empty" };

const AGAIN = Symbol("again");
const scratch = new Uint8Array(new ArrayBuffer(INLINE_MAX + 64));
const ackFrame = header(FRAME.ACK);

function sendAck(conn: Connection): void {
  if (conn.unacked === 0) return;
  new DataView(ackFrame.buffer).setUint32(4, conn.unacked, true);
  try {
    if (sendFrame(conn.fd.fd, [ackFrame], [])) conn.unacked = 0;
  } catch {
    // The sender is gone; nobody waits for credits.
    conn.unacked = 0;
  }
}

/** Rebuilds the endpoints of a received value from the fds that came. */
class Incoming implements EndpointHooks {
  fds: number[];
  used: boolean[];
  made: { close(): void }[] = [];

  constructor(fds: number[]) {
    this.fds = fds;
    this.used = fds.map(() => false);
  }

  #take(index: number): number {
    if (index >= this.fds.length) {
      throw invalid(`endpoint names fd ${index} of ${this.fds.length}`);
    }
    if (this.used[index]) throw invalid(`fd ${index} used twice`);
    this.used[index] = true;
    return this.fds[index];
  }

  encode(): boolean {
    return false;
  }

  decode(input: Reader): unknown {
    const kind = input.u8();
    // An fd is taken only once its endpoint is sure to be made: an fd not
    // taken is closed by fail().
    if (kind === KIND.SENDER) {
      const index = input.varint();
      const capacity = input.varint();
      const mode = input.u8();
      if (capacity < 1 || capacity > MAX_CAPACITY || mode > MODE_BYTES) {
        throw invalid("bad sender");
      }
      const sender = new Sender(this.#take(index), capacity, mode);
      this.made.push(sender);
      return sender;
    }
    if (kind === KIND.RECEIVER) {
      const count = input.count();
      if (count > MAX_FDS) throw invalid("bad receiver");
      const conns: Connection[] = [];
      try {
        for (let i = 0; i < count; i++) {
          const index = input.varint();
          const capacity = input.varint();
          const unacked = input.varint();
          if (capacity < 1 || capacity > MAX_CAPACITY || unacked > capacity) {
            throw invalid("bad receiver");
          }
          const fd = new OwnedFd(this.#take(index), "Receiver");
          conns.push({ fd, capacity, unacked });
        }
      } catch (error) {
        for (const conn of conns) conn.fd.close();
        throw error;
      }
      const receiver = new Receiver(conns);
      this.made.push(receiver);
      return receiver;
    }
    const expected = [
      undefined,
      PipeReader,
      PipeWriter,
      UnixSocket,
      UnixListener,
      SharedMemory,
      ShmSender,
      ShmReceiver,
    ][kind];
    if (expected === undefined) throw invalid(`unknown endpoint kind ${kind}`);
    const fd = this.#take(input.varint());
    let endpoint: { close(): void };
    try {
      endpoint = adoptFd(fd);
    } catch (error) {
      closeAll([fd]);
      throw invalid(`fd fits no endpoint: ${(error as Error).message}`);
    }
    this.made.push(endpoint);
    if (!(endpoint instanceof expected)) {
      throw invalid(`fd is not the ${expected.name} the message says`);
    }
    return endpoint;
  }

  /** Closes every fd not yet owned by an endpoint, and every endpoint. */
  fail(): void {
    for (const endpoint of this.made) endpoint.close();
    closeAll(this.fds.filter((_, i) => !this.used[i]));
  }
}

/**
 * The receiving end of a channel. Takes messages from every sender of the
 * channel, fairly; {@linkcode recv} throws {@linkcode ChannelClosedError}
 * once every sender is closed and everything they sent is taken.
 *
 * A receiver has one connection per sender; sending it inside a message
 * moves all of them to the other process (this copy is closed), so a
 * receiver can change process any number of times.
 *
 * @typeParam T The message type.
 *
 * @example Iterate until the senders are gone
 * ```ts
 * import { channel } from "@conduit/ipc/channel";
 *
 * const [tx, rx] = channel<number>({ capacity: 4 });
 * const producing = (async () => {
 *   for (let i = 0; i < 10; i++) await tx.send(i);
 *   tx.close();
 * })();
 * let sum = 0;
 * for await (const n of rx) sum += n;
 * await producing;
 * console.log(sum); // 45
 * rx.close();
 * ```
 */
export class Receiver<T> implements Disposable, AsyncIterable<T> {
  #conns: Connection[];
  #next = 0;
  #closed = false;
  #moving = false;
  #pending = 0;
  #ref = true;
  #maxMessage = MAX_MESSAGE;
  #limits = DEFAULT_LIMITS;
  #readable: ReadableStream<T> | undefined;

  /** @internal Use {@linkcode channel} or `fromFd()`. */
  constructor(conns: Connection[]) {
    this.#conns = conns;
  }

  /** The first connection's socket, for interop; the receiver owns it. */
  get rawFd(): number {
    this.#assertOpen();
    if (this.#conns.length === 0) {
      throw new ChannelClosedError(
        "Cannot get fd of Receiver: every sender is closed",
      );
    }
    return this.#conns[0].fd.fd;
  }

  /** Whether {@linkcode close} was called (or the receiver was sent). */
  get closed(): boolean {
    return this.#closed;
  }

  /** How many sender connections are open (for diagnostics). */
  get senders(): number {
    return this.#conns.length;
  }

  /**
   * The largest message this receiver takes, in bytes (default 1 GiB). A
   * larger one fails with `InvalidData` and drops its sender.
   */
  get maxMessageBytes(): number {
    return this.#maxMessage;
  }

  set maxMessageBytes(value: number) {
    if (!Number.isInteger(value) || value < HEADER) {
      throw new RangeError(
        `Cannot set maxMessageBytes: must be an integer of at least ${HEADER}, got ${value}`,
      );
    }
    this.#maxMessage = value;
  }

  /**
   * What decoding one message may build: its estimated memory
   * (`maxBytes`, default 256 MiB, not counting the bytes of typed arrays
   * and `ArrayBuffer`s), its elements (`maxElements`, default 2^24) and
   * its nesting (`maxDepth`, default and at most 1000). A few bytes on the
   * wire can ask for much more (an empty object is 2 bytes), so a message
   * that would build more fails with `InvalidData`, before it is built,
   * and drops its sender. Setting it checks every field (a positive
   * integer); fields left out take their defaults.
   *
   * @example Accept larger values
   * ```ts
   * import { channel } from "@conduit/ipc/channel";
   *
   * const [tx, rx] = channel<number[]>();
   * rx.limits = { maxElements: 100_000_000, maxBytes: 2 ** 31 };
   * await tx.send([1, 2, 3]);
   * console.log(await rx.recv()); // [ 1, 2, 3 ]
   * tx.close();
   * rx.close();
   * ```
   */
  get limits(): Readonly<Required<DecodeLimits>> {
    return this.#limits;
  }

  set limits(value: DecodeLimits) {
    this.#limits = resolveLimits(value, "set limits of Receiver");
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError("Receiver");
    if (this.#moving) {
      throw new Deno.errors.Busy(
        "Cannot use Receiver: it is being sent to another process",
      );
    }
  }

  /**
   * Takes the next message, waiting (without blocking the thread) until
   * one arrives.
   *
   * @param options An abort signal.
   * @returns The message.
   * @throws {ChannelClosedError} Once every sender is closed and every
   * message taken.
   * @throws {Deno.errors.InvalidData} When a sender sent a malformed frame
   * (that sender is dropped; the receiver stays usable).
   *
   * @example Receive one message
   * ```ts
   * import { channel } from "@conduit/ipc/channel";
   *
   * const [tx, rx] = channel<Map<string, number>>();
   * await tx.send(new Map([["a", 1]]));
   * console.log(await rx.recv()); // Map(1) { "a" => 1 }
   * tx.close();
   * rx.close();
   * ```
   */
  async recv(options: ChannelRecvOptions = {}): Promise<T> {
    const { signal, spin = 0 } = options;
    this.#assertOpen();
    signal?.throwIfAborted();
    this.#pending++;
    let deadline = spin > 0 ? performance.now() + spin / 1000 : 0;
    try {
      for (;;) {
        const polled = this._poll();
        if (polled.kind === "value") return polled.value;
        if (polled.kind === "closed") throw recvClosed();
        if (deadline > 0) {
          if (performance.now() < deadline) continue;
          deadline = 0;
        }
        await this._wait(signal);
        this.#assertOpen();
      }
    } finally {
      this.#pending--;
    }
  }

  /**
   * Takes a message if one is ready, never waiting.
   *
   * @returns The message, or `undefined` when none has arrived.
   * @throws {ChannelClosedError} Once every sender is closed and every
   * message taken.
   *
   * @example Poll without waiting
   * ```ts
   * import { channel } from "@conduit/ipc/channel";
   *
   * const [tx, rx] = channel<string>();
   * console.log(rx.tryRecv()); // undefined
   * await tx.send("now");
   * console.log(rx.tryRecv()); // "now"
   * tx.close();
   * rx.close();
   * ```
   */
  tryRecv(): T | undefined {
    this.#assertOpen();
    const polled = this._poll();
    if (polled.kind === "value") return polled.value;
    if (polled.kind === "closed") throw recvClosed();
    return undefined;
  }

  /**
   * @internal One look at every connection, fairly rotated: the first
   * message found, "closed" when no connection is left, else "empty".
   */
  _poll(): Polled<T> {
    const conns = this.#conns.slice();
    const n = conns.length;
    for (let k = 0; k < n; k++) {
      const conn = conns[(this.#next + k) % n];
      for (;;) {
        const got = this.#read(conn);
        if (got === undefined) break;
        if (got !== AGAIN) {
          this.#next = (this.#next + k + 1) % Math.max(1, this.#conns.length);
          return { kind: "value", value: got.value as T };
        }
        // A control frame was taken, or the connection closed.
        if (conn.fd.closed) break;
      }
    }
    return this.#conns.length === 0 ? { kind: "closed" } : { kind: "empty" };
  }

  /** @internal Waits until some connection may have something. */
  _wait(signal?: AbortSignal): Promise<void> {
    return waitAny(this.#conns.map((conn) => conn.fd), signal);
  }

  #drop(conn: Connection): void {
    const at = this.#conns.indexOf(conn);
    if (at !== -1) this.#conns.splice(at, 1);
    conn.fd.close();
  }

  #adopt(fd: number, capacity: number): void {
    const owned = new OwnedFd(fd, "Receiver");
    if (!this.#ref) owned.unref();
    this.#conns.push({ fd: owned, capacity, unacked: 0 });
  }

  /**
   * Reads one frame from `conn`: a value, `AGAIN` after dropping the
   * connection or taking a control frame, `undefined` when nothing is
   * there. A malformed frame drops the connection and throws.
   */
  #read(conn: Connection): { value: unknown } | typeof AGAIN | undefined {
    let got;
    try {
      got = receiveMessage(conn.fd.fd, scratch, MAX_FDS, false);
    } catch (error) {
      // A sender that closed with unread acks makes the kernel report
      // ECONNRESET once, ahead of the frames still queued: read on, end of
      // stream follows them.
      if ((error as Partial<SystemError>)?.errno === ERRNO.ECONNRESET) {
        return AGAIN;
      }
      this.#drop(conn);
      if (isGone(error)) return AGAIN;
      throw invalid((error as Error).message);
    }
    if (got === null) return undefined;
    if (got.bytes === 0 && got.fds.length === 0) {
      this.#drop(conn);
      return AGAIN;
    }
    // Until the fds are handed on (adopted, or to #message, which closes
    // them on failure), a refused frame closes them here.
    let handedOn = false;
    try {
      if ((got.flags & MSG.TRUNC) !== 0) {
        throw invalid(`frame larger than ${INLINE_MAX} bytes`);
      }
      if (got.bytes < HEADER || scratch[1] !== VERSION) {
        throw invalid("bad frame header");
      }
      const dv = new DataView(scratch.buffer);
      const a = dv.getUint32(4, true);
      const b = dv.getUint32(8, true);
      const c = dv.getUint32(12, true);
      const type = scratch[0];
      if (type === FRAME.ADD_PEER) {
        if (got.fds.length !== 1 || got.bytes !== HEADER) {
          throw invalid("a new sender must come with one fd");
        }
        if (a < 1 || a > MAX_CAPACITY) throw invalid("bad capacity");
        handedOn = true;
        if (this.#conns.length >= MAX_CONNECTIONS) {
          // Too many senders: the new one is refused (it sees the channel
          // closed), the frame itself was fine.
          closeAll(got.fds);
        } else {
          this.#adopt(got.fds[0], a);
        }
        return AGAIN;
      }
      if (type === FRAME.HELLO) {
        if (got.fds.length !== 0 || got.bytes !== HEADER) {
          throw invalid("a hello carries nothing but its header");
        }
        if (a < 1 || a > MAX_CAPACITY) throw invalid("bad capacity");
        conn.capacity = a;
        return AGAIN;
      }
      handedOn = true;
      const value = this.#message(type, got.bytes, got.fds, a, b, c);
      conn.unacked++;
      if (conn.unacked >= ackEvery(conn.capacity)) sendAck(conn);
      return { value };
    } catch (error) {
      if (!handedOn) closeAll(got.fds);
      this.#drop(conn);
      throw error;
    }
  }

  #message(
    type: number,
    size: number,
    fds: number[],
    a: number,
    headLength: number,
    treeLength: number,
  ): unknown {
    if (type === FRAME.BYTES) {
      closeAll(fds);
      if (fds.length !== 0) throw invalid("a bytes frame carries no fds");
      return scratch.slice(HEADER, size);
    }
    if (type === FRAME.BYTES_MEMFD) {
      try {
        if (fds.length !== 1 || size !== HEADER) {
          throw invalid("a large bytes frame carries exactly its memfd");
        }
        const length = memfdSize(fds[0], this.#maxMessage);
        const out = new Uint8Array(length);
        preadAll(fds[0], out, 0);
        return out;
      } finally {
        closeAll(fds);
      }
    }
    if (type !== FRAME.MESSAGE && type !== FRAME.MESSAGE_MEMFD) {
      closeAll(fds);
      throw invalid(`unexpected frame type ${type}`);
    }
    const memfd = type === FRAME.MESSAGE_MEMFD ? fds.pop() : undefined;
    const incoming = new Incoming(fds);
    try {
      if (fds.length !== a) {
        throw invalid(`frame says ${a} fds, ${fds.length} came`);
      }
      let head: Uint8Array;
      let blobsAt: number;
      let blobBytes: number;
      let source: Uint8Array | number;
      if (memfd === undefined) {
        if (HEADER + headLength > size) throw invalid("head past the frame");
        head = scratch.subarray(HEADER, HEADER + headLength);
        blobsAt = HEADER + headLength;
        blobBytes = size - blobsAt;
        source = scratch;
      } else {
        if (size !== HEADER) throw invalid("a large frame carries no data");
        const total = memfdSize(memfd, this.#maxMessage);
        if (headLength > total) throw invalid("head past the memfd");
        head = new Uint8Array(headLength);
        preadAll(memfd, head, 0);
        blobsAt = headLength;
        blobBytes = total - headLength;
        source = memfd;
      }
      const specs: BlobSpec[] = readBlobTable(
        head,
        treeLength,
        blobBytes,
        this.#limits,
      );
      const offsets: number[] = [];
      let at = blobsAt;
      for (const spec of specs) {
        offsets.push(at);
        at += spec.length;
      }
      const blob = (index: number): ArrayBuffer => {
        const { length } = specs[index];
        if (typeof source === "number") {
          const out = new Uint8Array(length);
          preadAll(source, out, offsets[index]);
          return out.buffer;
        }
        return source.slice(offsets[index], offsets[index] + length).buffer;
      };
      const value = decode(
        head,
        treeLength,
        specs,
        blob,
        incoming,
        this.#limits,
      );
      if (incoming.used.some((used) => !used)) {
        throw invalid("fds that no endpoint in the value names");
      }
      return value;
    } catch (error) {
      incoming.fail();
      if (error instanceof Deno.errors.InvalidData) throw error;
      throw invalid((error as Error)?.message ?? String(error));
    } finally {
      if (memfd !== undefined) closeAll([memfd]);
    }
  }

  /** Yields each message until every sender is closed. */
  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    for (;;) {
      let value: T;
      try {
        value = await this.recv();
      } catch (error) {
        if (error instanceof ChannelClosedError) return;
        throw error;
      }
      yield value;
    }
  }

  /**
   * The messages as a stream, which ends once every sender is closed.
   * Messages are taken only as the stream is read. Cancelling it closes
   * the receiver.
   */
  get readable(): ReadableStream<T> {
    return this.#readable ??= new ReadableStream<T>({
      pull: async (controller) => {
        try {
          controller.enqueue(await this.recv());
        } catch (error) {
          if (error instanceof ChannelClosedError) controller.close();
          else throw error;
        }
      },
      cancel: () => this.close(),
    }, { highWaterMark: 0 });
  }

  /** Lets pending receives keep the process alive (the default). */
  ref(): void {
    this.#ref = true;
    for (const conn of this.#conns) conn.fd.ref();
  }

  /** Lets the process exit while a receive is pending. */
  unref(): void {
    this.#ref = false;
    for (const conn of this.#conns) conn.fd.unref();
  }

  /**
   * Closes the receiver: every sender's next send throws
   * {@linkcode ChannelClosedError}; pending receives reject with
   * `BadResource`. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const conn of this.#conns) conn.fd.close();
    this.#conns = [];
  }

  /** Closes the receiver. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @internal Connections to send along; the receiver is frozen meanwhile. */
  _beginMove(): Connection[] {
    this.#assertOpen();
    if (this.#pending > 0) {
      throw new Deno.errors.Busy(
        "Cannot send Receiver: a recv() on it is pending",
      );
    }
    this.#moving = true;
    return this.#conns;
  }

  /** @internal The move is over: sent (close this copy) or given up. */
  _endMove(sent: boolean): void {
    this.#moving = false;
    if (sent) this.close();
  }

  /** @internal Gives up the first connection's fd (a one-sender receiver). */
  _release(): number {
    this.#assertOpen();
    if (this.#conns.length !== 1) {
      throw new TypeError(
        `Cannot release Receiver: it has ${this.#conns.length} sender connections, not one`,
      );
    }
    const fd = this.#conns[0].fd.release();
    this.#conns = [];
    this.#closed = true;
    return fd;
  }
}

function recvClosed(): ChannelClosedError {
  return new ChannelClosedError(
    "Cannot receive on channel: every sender is closed",
  );
}

function makePair<T>(capacity: number, mode: number): [Sender<T>, Receiver<T>] {
  const [s, r] = seqpacketPair();
  try {
    markSocket(s, "s", mode, capacity);
    markSocket(r, "r", mode, capacity);
  } catch (error) {
    closeAll([s, r]);
    throw error;
  }
  return [
    new Sender<T>(s, capacity, mode),
    new Receiver<T>([{
      fd: new OwnedFd(r, "Receiver"),
      capacity,
      unacked: 0,
    }]),
  ];
}

/** A sender and its receiver; `using` closes both. */
export type Channel<T> = [Sender<T>, Receiver<T>] & Disposable;

function withDispose<T>(pair: [Sender<T>, Receiver<T>]): Channel<T> {
  return Object.assign(pair, {
    [Symbol.dispose]() {
      pair[0].close();
      pair[1].close();
    },
  });
}

/**
 * Creates a channel of structured-clone values (and endpoints). Keep one
 * end, send the other to another process inside a message, or hand it to a
 * child (`spawn({ fds })`, rebuilt there by `fromFd()`).
 *
 * @typeParam T The message type.
 * @param options The capacity of each sender, the receiver's limits.
 * @returns The sender and the receiver; `using` closes both.
 *
 * @example A bounded channel
 * ```ts
 * import { channel } from "@conduit/ipc/channel";
 *
 * using ch = channel<{ n: number; bytes: Uint8Array }>({ capacity: 2 });
 * const [tx, rx] = ch;
 * await tx.send({ n: 1, bytes: new Uint8Array(8) });
 * console.log((await rx.recv()).bytes.length); // 8
 * ```
 */
export function channel<T>(options: ValueChannelOptions = {}): Channel<T> {
  const capacity = checkCapacity(options.capacity, "create channel");
  const limits = resolveLimits(options.limits, "create channel");
  const pair = makePair<T>(capacity, MODE_VALUE);
  pair[1].limits = limits;
  return withDispose(pair);
}

/**
 * Creates a channel of `Uint8Array` messages: no serialization, each
 * message arrives whole as one `Uint8Array`, whatever its size.
 *
 * @param options The capacity of each sender.
 * @returns The sender and the receiver; `using` closes both.
 *
 * @example Bytes through a channel
 * ```ts
 * import { bytesChannel } from "@conduit/ipc/channel";
 *
 * using ch = bytesChannel();
 * const [tx, rx] = ch;
 * await tx.send(new Uint8Array([1, 2, 3]));
 * console.log(await rx.recv()); // Uint8Array(3) [ 1, 2, 3 ]
 * ```
 */
export function bytesChannel(
  options: ChannelOptions = {},
): Channel<Uint8Array> {
  const capacity = checkCapacity(options.capacity, "create bytes channel");
  return withDispose(makePair<Uint8Array>(capacity, MODE_BYTES));
}

/** What {@linkcode ReceiverSet.select} returns. */
export type SelectResult<T> =
  | { id: number; value: T; closed?: false }
  | { id: number; closed: true; value?: undefined };

/**
 * Waits on many receivers at once: {@linkcode select} returns the next
 * message of any of them, or reports one whose senders are all gone (it
 * then leaves the set).
 *
 * @typeParam T The message type.
 *
 * @example Select over two channels
 * ```ts
 * import { channel, ReceiverSet } from "@conduit/ipc/channel";
 *
 * const [tx1, rx1] = channel<string>();
 * const [tx2, rx2] = channel<string>();
 * const set = new ReceiverSet<string>();
 * const id1 = set.add(rx1);
 * set.add(rx2);
 * await tx1.send("one");
 * console.log(await set.select()); // { id: id1, value: "one" }
 * tx1.close();
 * console.log(await set.select()); // { id: id1, closed: true }
 * tx2.close();
 * set.close();
 * ```
 */
export class ReceiverSet<T = unknown> implements Disposable {
  #entries = new Map<number, Receiver<T>>();
  #nextId = 1;
  #start = 0;

  /**
   * Adds a receiver; the set now owns it (closing the set closes it).
   *
   * @param receiver The receiver.
   * @returns Its id in {@linkcode select} results.
   */
  add(receiver: Receiver<T>): number {
    if (!(receiver instanceof Receiver)) {
      throw new TypeError("Cannot add to ReceiverSet: not a Receiver");
    }
    if (receiver.closed) throw closedError("Receiver");
    const id = this.#nextId++;
    this.#entries.set(id, receiver);
    return id;
  }

  /**
   * Takes a receiver out of the set without closing it.
   *
   * @param id Its id.
   * @returns The receiver, or `undefined` when the id is not in the set.
   */
  remove(id: number): Receiver<T> | undefined {
    const receiver = this.#entries.get(id);
    this.#entries.delete(id);
    return receiver;
  }

  /** How many receivers are in the set. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Waits for the next message of any receiver in the set (taken fairly),
   * or for one whose every sender is gone.
   *
   * @param options An abort signal.
   * @returns `{ id, value }`, or `{ id, closed: true }` (that receiver is
   * then closed and out of the set).
   * @throws {ChannelClosedError} When the set is empty.
   */
  async select(options: ChannelRecvOptions = {}): Promise<SelectResult<T>> {
    const { signal } = options;
    signal?.throwIfAborted();
    for (;;) {
      const entries = [...this.#entries];
      if (entries.length === 0) {
        throw new ChannelClosedError(
          "Cannot select: the receiver set is empty",
        );
      }
      for (let i = 0; i < entries.length; i++) {
        const [id, receiver] = entries[(this.#start + i) % entries.length];
        if (receiver.closed) {
          this.#entries.delete(id);
          continue;
        }
        const polled = receiver._poll();
        if (polled.kind === "value") {
          this.#start = (this.#start + i + 1) % entries.length;
          return { id, value: polled.value };
        }
        if (polled.kind === "closed") {
          this.#entries.delete(id);
          receiver.close();
          return { id, closed: true };
        }
      }
      const live = [...this.#entries.values()];
      if (live.length === 0) continue;
      const stop = new AbortController();
      const both = signal === undefined
        ? stop.signal
        : AbortSignal.any([stop.signal, signal]);
      try {
        await Promise.any(live.map((receiver) => receiver._wait(both)));
      } catch {
        signal?.throwIfAborted();
      } finally {
        stop.abort();
      }
    }
  }

  /** Closes every receiver in the set and empties it. */
  close(): void {
    for (const receiver of this.#entries.values()) receiver.close();
    this.#entries.clear();
  }

  /** Closes the set. */
  [Symbol.dispose](): void {
    this.close();
  }
}

function receiverOf<T>(fd: number, capacity: number): Receiver<T> {
  return new Receiver<T>([{
    fd: new OwnedFd(fd, "Receiver"),
    capacity,
    unacked: 0,
  }]);
}

// Channel ends handed over by spawn or raw fd passing carry a mark (their
// socket's abstract name) that says which end, mode and capacity they are.
registerAdopter((fd, kind) => {
  if (kind !== "socket") return null;
  let mark;
  try {
    mark = readMark(boundAddress(fd).abstract);
  } catch {
    return null;
  }
  if (mark === null) return null;
  if (mark.role === "s") {
    return new Sender(fd, mark.capacity, mark.mode);
  }
  return receiverOf(fd, mark.capacity);
}, true);

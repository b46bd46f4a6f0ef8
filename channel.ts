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
 * - Capacity is per sender: a sender may have `capacity` messages in the
 *   channel that the receiving process has not read yet; then `send()`
 *   waits until the receiver acknowledges some (credit-based flow control,
 *   acknowledged a quarter of the capacity at a time). Messages that
 *   travelled together count as read once their packet is read, though
 *   `recv()` hands them out one at a time.
 * - Messages sent back to back travel together: the first send of a turn
 *   goes out at once, the ones right after it are gathered and leave in
 *   one packet (in order) when the sends stop, when a packet is full, or
 *   before this thread spins waiting for anything. A receiver takes a
 *   whole packet per read and hands its messages out one by one.
 * - Waits spin briefly before parking, only while recent spins were
 *   answered (`spin: 0` turns that off, a number of µs makes it fixed),
 *   and a receive loop fed faster than it reads still yields a macrotask
 *   turn every 64 messages or 2 ms, so timers and other I/O run.
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
 *   drops that sender's connection. Every connection a peer hands over
 *   must be a unix seqpacket socket; the same socket handed over twice is
 *   kept once, and one sender may add at most 1024 others (a receiver
 *   holds at most 4096). A receive does a bounded amount of work per
 *   wake-up, however fast a peer writes.
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

import {
  ChannelClosedError,
  invalid,
  streamUntilClosed,
  untilClosed,
} from "./_channel_error.ts";
import { dupCloexec, OwnedFd } from "./ffi/fd.ts";
import { closedError, ERRNO, type SystemError } from "./ffi/errors.ts";
import { MSG } from "./ffi/layout.ts";
import { libc } from "./ffi/libc.ts";
import {
  cancelBeforeSpin,
  checkSpin,
  runBeforeSpin,
  Spinner,
  untilReady,
} from "./ffi/spin.ts";
import { closeAll, receiveMessage } from "./_scm.ts";
import type { Reader, Writer } from "./channel/_codec_bytes.ts";
import {
  type BlobSpec,
  decode,
  readBlobTable,
} from "./channel/_codec_decode.ts";
import { encode } from "./channel/_codec_encode.ts";
import {
  type DecodeLimits,
  DEFAULT_LIMITS,
  resolveLimits,
} from "./channel/_codec_limits.ts";
import type { EndpointHooks } from "./channel/_codec_tags.ts";
import {
  checkBatch,
  FRAME,
  getU32,
  HEADER,
  header,
  INLINE_MAX,
  markSocket,
  MAX_FDS,
  memfdSize,
  preadAll,
  putU32,
  readMark,
  RECORD_PREFIX,
  REFUSAL,
  sendFrame,
  seqpacketPair,
  seqpacketProblem,
  socketIdentity,
  VERSION,
  writeHeader,
  writeMemfd,
} from "./_channel_wire.ts";
import { boundAddress } from "./_unix_addr.ts";
import "./from_fd.ts";
import { ConnSet } from "./_conn_set.ts";
import { TurnSlice, yieldTurn } from "./_turn.ts";
import { adoptFd, registerAdopter } from "./_adopt.ts";
import { PipeReader, PipeWriter } from "./pipe.ts";
import { UnixListener, UnixSocket } from "./socketpair.ts";
import { SharedMemory, ShmReceiver, ShmSender } from "./shm/mod.ts";

export { ChannelClosedError };

/** Options for {@linkcode channel} and {@linkcode bytesChannel}. */
export interface ChannelOptions {
  /**
   * Messages each sender may have in flight (sent but not yet read by the
   * receiving process) before `send()` waits. Default 64, at most
   * 1_000_000.
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
  /**
   * Microseconds to spin while this send waits for room, before parking
   * in the poller: `0` never spins, a number spins that long each time.
   * By default the sender spins only while recent spins were answered.
   */
  spin?: number;
}

/** Options for {@linkcode Receiver.recv}. */
export interface ChannelRecvOptions {
  /** Aborting it rejects the pending receive with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Microseconds to keep looking before parking in the poller: `0` never
   * spins, a number spins that long each time. By default the receiver
   * spins (up to 100 µs, yielding the CPU each pass) only while recent
   * spins were answered, so a quick peer is caught without a wake-up and
   * paced or one-way traffic costs no spinning.
   * ({@linkcode ReceiverSet.select} ignores it.)
   */
  spin?: number;
}

const DEFAULT_CAPACITY = 64;
const MAX_CAPACITY = 1_000_000;
/** The largest message a receiver takes (it refuses bigger memfds). */
const MAX_MESSAGE = 2 ** 30;
/** The most sender connections one receiver keeps. */
const MAX_CONNECTIONS = 4096;
/**
 * The most connections one sender may add (clones of it, clones of those,
 * ...) while they are open.
 */
const MAX_ADDED = 1024;
/** Frames one look at a receiver reads at most (wake-up work bound). */
const POLL_BUDGET = 64;
/**
 * Connections from which a receiver keeps its own epoll set: it waits on
 * that alone and reads only the connections it names.
 */
const SET_FROM = 8;
/** Acknowledgements one look at a sender reads at most. */
const ACK_BUDGET = 64;
/**
 * Microtask turns without a send after which a gathered batch goes. A loop
 * of `await tx.send()` takes fewer between two sends, so its sends travel
 * together; a request awaited before the next send (a round trip, or a
 * `for await` echo loop, about 10 turns) leaves alone, without waiting.
 * (16 made round trips a quarter slower and one-way sends no faster.)
 */
const IDLE_TICKS = 4;

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

function refused(why: number): ChannelClosedError {
  return new ChannelClosedError(
    why === REFUSAL.PER_SENDER
      ? `Cannot send on channel: the receiver refused this sender: the sender it was cloned from already added ${MAX_ADDED} open senders`
      : `Cannot send on channel: the receiver refused this sender: it already holds ${MAX_CONNECTIONS} senders`,
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

// --- Bursts: sends of one turn leave together ---
//
// One microtask chain, the ticker, runs while senders are busy: it counts
// microtask turns and asks each sender with a burst under way whether it
// has been idle for IDLE_TICKS turns; then that sender's batch leaves. The
// chain ends once no burst is left.

/** Microtask turns counted by the ticker. */
let ticks = 0;
let ticking = false;
/** Bursts under way: each returns true once its sender's burst ended. */
const bursts = new Set<() => boolean>();

function ticker(): void {
  ticks++;
  for (const ended of bursts) {
    if (ended()) bursts.delete(ended);
  }
  if (bursts.size > 0) queueMicrotask(ticker);
  else ticking = false;
}

/** Registers a sender's burst with the ticker (started if it sleeps). */
function burstStarted(ended: () => boolean): void {
  bursts.add(ended);
  if (!ticking) {
    ticking = true;
    queueMicrotask(ticker);
  }
}

// --- Frames being sent ---

/** One encoded message and what must happen once it is sent or given up. */
interface Frame {
  /** The header's type and fields. */
  type: number;
  a: number;
  b: number;
  c: number;
  /** What follows the header: head and blobs (none for a memfd frame). */
  body: Uint8Array[];
  /** How many leading parts of `body` are this frame's own copies. */
  owned: number;
  /**
   * Bytes of an inline frame, header included; -1 for a frame whose body
   * is in a memfd (it travels alone).
   */
  size: number;
  fds: number[];
  /** Runs once the frame is in the socket. */
  sent(): void;
  /** Runs when the frame will never be sent. */
  abandon(): void;
}

/** Whether a frame may travel in a batch: inline, without fds. */
function batchable(frame: Frame): boolean {
  return frame.size >= 0 && frame.fds.length === 0;
}

/** The frame as parts to send: header, then body. */
function partsOf(frame: Frame): Uint8Array[] {
  const head = header(frame.type, frame.a, frame.b, frame.c);
  return frame.body.length === 0 ? [head] : [head, ...frame.body];
}

function nothing(): void {}

/**
 * Collects the fds of the endpoints in one value while it is encoded. The
 * fd of every endpoint the caller holds is duplicated at once: should the
 * caller close the endpoint before the message leaves, and its number be
 * reused, the message still carries the file the caller meant.
 */
class Outgoing implements EndpointHooks {
  fds: number[] = [];
  clones: Sender<unknown>[] = [];
  moving: Receiver<unknown>[] = [];
  #dups: number[] = [];

  #fd(fd: number, owned: boolean): number {
    if (this.fds.length >= MAX_FDS - 1) {
      throw new RangeError(
        `Cannot send on channel: the value holds more than ${MAX_FDS - 1} fds`,
      );
    }
    const sent = owned ? fd : dupCloexec(fd);
    if (!owned) this.#dups.push(sent);
    this.fds.push(sent);
    return this.fds.length - 1;
  }

  encode(value: object, out: Writer): boolean {
    let kind: number;
    if (value instanceof Sender) {
      const clone = value.clone();
      this.clones.push(clone);
      out.u8(KIND.SENDER);
      out.varint(this.#fd(clone.rawFd, true));
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
        out.varint(this.#fd(conn.fd.fd, false));
        out.varint(conn.capacity);
        out.varint(Math.min(conn.unacked, conn.capacity));
        // Messages of a batch that arrived here but were not taken go
        // along, ahead of what is still in the connection.
        const left = conn.batch === undefined ? 0 : conn.left ?? 0;
        out.varint(left);
        if (left > 0) {
          const rest = conn.batch!.subarray(conn.at);
          out.varint(rest.byteLength);
          out.ensure(rest.byteLength);
          out.buf.set(rest, out.pos);
          out.pos += rest.byteLength;
        }
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
    out.varint(this.#fd((value as { rawFd: number }).rawFd, false));
    return true;
  }

  decode(): unknown {
    throw new Error("unreachable");
  }

  /** The message is out: local copies of sent clones and moved receivers go. */
  finish(transfer: readonly { close(): void }[] | undefined): void {
    closeAll(this.#dups);
    for (const clone of this.clones) clone.close();
    for (const receiver of this.moving) receiver._endMove(true);
    for (const endpoint of transfer ?? []) endpoint.close();
  }

  abandon(): void {
    closeAll(this.#dups);
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
  if (total <= INLINE_MAX) {
    const plain = outgoing.fds.length === 0 && outgoing.clones.length === 0 &&
      outgoing.moving.length === 0 && (transfer?.length ?? 0) === 0;
    return {
      type: FRAME.MESSAGE,
      a: outgoing.fds.length,
      b: head.byteLength,
      c: treeLength,
      body: blobs.length === 0 ? [head] : [head, ...blobs],
      owned: 1,
      size: total,
      fds: outgoing.fds,
      sent: plain ? nothing : () => outgoing.finish(transfer),
      abandon: plain ? nothing : () => outgoing.abandon(),
    };
  }
  let memfd: number;
  try {
    memfd = writeMemfd([head, ...blobs]);
  } catch (error) {
    outgoing.abandon();
    throw error;
  }
  return {
    type: FRAME.MESSAGE_MEMFD,
    a: outgoing.fds.length,
    b: head.byteLength,
    c: treeLength,
    body: [],
    owned: 0,
    size: -1,
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

function bytesFrame(bytes: Uint8Array): Frame {
  if (!(bytes instanceof Uint8Array)) {
    throw new TypeError(
      "Cannot send on bytes channel: the message must be a Uint8Array",
    );
  }
  if (HEADER + bytes.byteLength <= INLINE_MAX) {
    return {
      type: FRAME.BYTES,
      a: 0,
      b: 0,
      c: 0,
      body: [bytes],
      owned: 0,
      size: HEADER + bytes.byteLength,
      fds: [],
      sent: nothing,
      abandon: nothing,
    };
  }
  const memfd = writeMemfd([bytes]);
  const close = () => libc().close(memfd);
  return {
    type: FRAME.BYTES_MEMFD,
    a: 0,
    b: 0,
    c: 0,
    body: [],
    owned: 0,
    size: -1,
    fds: [memfd],
    sent: close,
    abandon: close,
  };
}
// --- Sender ---

/** A send that waits for its frame to leave. */
interface SendWaiter {
  resolve(): void;
  reject(error: unknown): void;
  /** The spin this send asked for, if any. */
  spinner?: Spinner;
}

/** A frame that waits for credit or room, and its send. */
interface Outbound {
  frame: Frame;
  waiter: SendWaiter;
}

/** Where sending stopped: all out, no credit, no room, or failed. */
type DrainState = "done" | "credit" | "write" | "failed";

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
  /** Messages the receiver has room for, less those already sent. */
  #credits: number;
  /**
   * Messages of sends that already resolved, not yet in the socket: `#accepted`
   * batch records in `#batch[HEADER, #batchEnd)` (room for the batch header
   * in front), a credit held for each. They go before anything queued.
   */
  #batch: Uint8Array | undefined;
  #batchEnd = HEADER;
  #accepted = 0;
  /** Sends that wait for credit or room, in order. */
  #queue: Outbound[] = [];
  /** A burst of sends is under way: later sends of the turn are gathered. */
  #burst = false;
  /** The ticker's count at this sender's last send of the burst. */
  #lastSend = 0;
  #pumping = false;
  #stopPump: AbortController | undefined;
  /** Why every later send fails (the receiver went away under a batch). */
  #failed: unknown = undefined;
  #registering = 0;
  #closed = false;
  #spinner = new Spinner();
  /** Sends resolved without waiting since the last turn. */
  #slice = new TurnSlice();
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
   * not travel). Resolves once the message is on its way: in the channel,
   * or gathered with the other sends of this turn into one packet that
   * leaves when the sends stop (within the same turn), and always before
   * this thread spins waiting for anything, blocks in a `*Sync` call of
   * this module, or exits. Another way of blocking the thread
   * (`Atomics.wait`, a `Deno.*Sync` call) does not send it: close the
   * sender or let a macrotask turn pass first. Waits (without blocking the
   * thread) while `capacity` messages of this sender are not yet read.
   * Sends of one sender arrive in order.
   *
   * A message that carries endpoints or is larger than 64 KiB resolves only
   * once it is in the channel.
   *
   * @param value The message: anything structured clone takes, plus
   * endpoints.
   * @param options Endpoints to give up once sent; an abort signal; the
   * spin while waiting for room.
   * @returns Resolves when sent.
   * @throws {ChannelClosedError} When the receiver is closed (or refused
   * this sender).
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
    let spinner: Spinner | undefined;
    try {
      this.#assertOpen();
      options.signal?.throwIfAborted();
      if (options.spin !== undefined) {
        spinner = new Spinner(
          checkSpin(options.spin, "Cannot send on channel"),
        );
      }
      if (this.#failed !== undefined) throw this.#failed;
      frame = this.#mode === MODE_BYTES
        ? bytesFrame(value as Uint8Array)
        : valueFrame(value, options.transfer);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.#queue.length === 0) {
      // Nothing waits for room: the frame goes now, or joins the batch.
      try {
        if (this.#sendNow(frame)) return this.#resolved();
      } catch (error) {
        frame.abandon();
        return Promise.reject(this.#sendError(error));
      }
    }
    return this.#enqueue(frame, options.signal, spinner);
  }

  /** A resolved send; after a slice of sends without waiting, a turn first. */
  #resolved(): Promise<void> {
    return this.#slice.delivered() ? yieldTurn() : Promise.resolve();
  }

  /**
   * Sends `frame` at once or adds it to the batch. Returns false when it
   * has to wait (no credit, or the socket is full).
   */
  #sendNow(frame: Frame): boolean {
    this.#lastSend = ticks;
    if (!this.#burst) {
      // The first send of a burst leaves at once: a lone message (say, a
      // request whose reply is awaited next) never waits for the turn.
      this.#burst = true;
      burstStarted(this.#burstEnded);
      if (this.#accepted === 0) return this.#trySend(frame);
    }
    if (!batchable(frame)) {
      // Fds and memfds travel alone, after what was gathered before them.
      if (this.#accepted > 0 && this.#drainOrThrow() !== "done") return false;
      return this.#trySend(frame);
    }
    const bytes = RECORD_PREFIX + frame.size;
    if (this.#accepted > 0 && this.#batchEnd + bytes > INLINE_MAX) {
      // The batch is full: it goes now, this frame starts the next one.
      if (this.#drainOrThrow() !== "done") return false;
    }
    if (this.#credits === this.#accepted) {
      this.#takeAcks();
      if (this.#credits === this.#accepted) {
        // Out of credit: what was gathered goes now, so that the receiver
        // can take it and acknowledge.
        if (this.#accepted > 0) this.#drainOrThrow();
        return false;
      }
    }
    this.#append(frame);
    return true;
  }

  /** Copies a frame into the batch, behind its record length. */
  #append(frame: Frame): void {
    const end = this.#batchEnd + RECORD_PREFIX + frame.size;
    let batch = this.#batch;
    if (batch === undefined || batch.byteLength < end) {
      let size = batch?.byteLength ?? 4096;
      while (size < end) size *= 2;
      const grown = new Uint8Array(size);
      if (batch !== undefined) grown.set(batch.subarray(0, this.#batchEnd));
      this.#batch = batch = grown;
    }
    let at = this.#batchEnd;
    putU32(batch, at, frame.size);
    writeHeader(
      batch,
      at + RECORD_PREFIX,
      frame.type,
      frame.a,
      frame.b,
      frame.c,
    );
    at += RECORD_PREFIX + HEADER;
    for (const part of frame.body) {
      batch.set(part, at);
      at += part.byteLength;
    }
    this.#batchEnd = at;
    this.#accepted++;
    frame.sent();
    runBeforeSpin(this.#flushBatch);
  }

  /** One attempt at a lone frame, nothing being queued or gathered. */
  #trySend(frame: Frame): boolean {
    if (this.#credits === 0) {
      this.#takeAcks();
      if (this.#credits === 0) return false;
    }
    if (!sendFrame(this.#fd.fd, partsOf(frame), frame.fds)) return false;
    this.#credits--;
    frame.sent();
    return true;
  }

  /** Asked by the ticker each turn: once idle long enough, the batch goes. */
  #burstEnded = (): boolean => {
    if (ticks - this.#lastSend < IDLE_TICKS) return false;
    this.#burst = false;
    this.#flushBatch();
    return true;
  };

  /** Sends what resolved sends left behind; waits in the pump if full. */
  #flushBatch = (): void => {
    if (this.#accepted === 0) return;
    const state = this.#drain();
    if (state === "credit" || state === "write") this.#pump();
  };

  #drainOrThrow(): DrainState {
    const state = this.#drain();
    if (state === "failed") throw this.#failed;
    return state;
  }

  /**
   * Sends the batch, then queued frames, as many per packet as fit, until
   * everything is out or the credits or the socket run out. Never throws:
   * a failure that ends the channel fails every queued send and later ones.
   */
  #drain(): DrainState {
    if (this.#accepted > 0) {
      const state = this.#sendBatch();
      if (state !== "done") return state;
    }
    while (this.#queue.length > 0) {
      if (this.#credits === 0) {
        try {
          this.#takeAcks();
        } catch (error) {
          this.#fail(error);
          return "failed";
        }
        if (this.#credits === 0) return "credit";
      }
      const n = this.#batchLength();
      let parts: Uint8Array[];
      let fds: number[] = [];
      if (n === 1) {
        const { frame } = this.#queue[0];
        parts = partsOf(frame);
        fds = frame.fds;
      } else {
        parts = [header(FRAME.BATCH, n)];
        for (let i = 0; i < n; i++) {
          const { frame } = this.#queue[i];
          const length = new Uint8Array(RECORD_PREFIX);
          putU32(length, 0, frame.size);
          parts.push(length, ...partsOf(frame));
        }
      }
      let sent: boolean;
      try {
        sent = sendFrame(this.#fd.fd, parts, fds);
      } catch (error) {
        if (isGone(error)) {
          this.#fail(error);
          return "failed";
        }
        // Only this packet fails (too many fds in flight, ...).
        const reason = this.#sendError(error);
        for (const out of this.#queue.splice(0, n)) {
          out.frame.abandon();
          out.waiter.reject(reason);
        }
        continue;
      }
      if (!sent) return "write";
      this.#credits -= n;
      for (const out of this.#queue.splice(0, n)) {
        out.frame.sent();
        out.waiter.resolve();
      }
    }
    return "done";
  }

  /** Sends the gathered batch (its credits are held). */
  #sendBatch(): DrainState {
    const batch = this.#batch!;
    const n = this.#accepted;
    let sent: boolean;
    try {
      if (n === 1) {
        sent = sendFrame(
          this.#fd.fd,
          [batch.subarray(HEADER + RECORD_PREFIX, this.#batchEnd)],
          [],
        );
      } else {
        writeHeader(batch, 0, FRAME.BATCH, n, 0, 0);
        sent = sendFrame(this.#fd.fd, [batch.subarray(0, this.#batchEnd)], []);
      }
    } catch (error) {
      // Sends that resolved are lost: every later send says why.
      this.#dropBatch();
      this.#fail(error);
      return "failed";
    }
    if (!sent) return "write";
    this.#credits -= n;
    this.#dropBatch();
    return "done";
  }

  #dropBatch(): void {
    this.#accepted = 0;
    this.#batchEnd = HEADER;
    cancelBeforeSpin(this.#flushBatch);
  }

  /** How many frames from the head of the queue go in the next packet. */
  #batchLength(): number {
    const queue = this.#queue;
    if (!batchable(queue[0].frame)) return 1;
    let n = 0;
    let bytes = HEADER;
    while (n < queue.length && n < this.#credits) {
      const { frame } = queue[n];
      if (!batchable(frame)) break;
      bytes += RECORD_PREFIX + frame.size;
      if (n > 0 && bytes > INLINE_MAX) break;
      n++;
    }
    return n;
  }

  /** The channel is over for this sender: every queued send fails. */
  #fail(error: unknown): void {
    const reason = this.#sendError(error);
    this.#failed = reason;
    this.#dropBatch();
    for (const out of this.#queue.splice(0)) {
      out.frame.abandon();
      out.waiter.reject(reason);
    }
  }

  /** Queues a send that waits for credit or room; the pump sends it. */
  #enqueue(
    frame: Frame,
    signal: AbortSignal | undefined,
    spinner: Spinner | undefined,
  ): Promise<void> {
    // The caller's buffers may change before the frame leaves: it takes
    // copies of them now.
    if (frame.owned < frame.body.length) {
      frame.body = frame.body.map((part, i) =>
        i < frame.owned ? part : part.slice()
      );
      frame.owned = frame.body.length;
    }
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    const out: Outbound = { frame, waiter: { resolve, reject, spinner } };
    if (signal !== undefined) {
      const onAbort = () => {
        const at = this.#queue.indexOf(out);
        if (at === -1) return;
        this.#queue.splice(at, 1);
        frame.abandon();
        reject(signal.reason);
        if (!this.#pending()) this.#stopPump?.abort();
      };
      signal.addEventListener("abort", onAbort, { once: true });
      const done = () => signal.removeEventListener("abort", onAbort);
      out.waiter = {
        resolve() {
          done();
          resolve();
        },
        reject(error) {
          done();
          reject(error);
        },
        spinner,
      };
    }
    this.#queue.push(out);
    this.#pump();
    return promise;
  }

  /**
   * Sends the queue as credit and room come, spinning and then parking
   * between attempts. One pump per sender.
   */
  async #pump(): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    const stop = new AbortController();
    this.#stopPump = stop;
    let state: DrainState = "done";
    const spinner = this.#queue[0]?.waiter.spinner ?? this.#spinner;
    try {
      // Sends queued while the last attempt's result was on its way to
      // here are picked up by the next round.
      while (this.#pending() && !stop.signal.aborted) {
        await untilReady(
          () => {
            state = this.#drain();
            return state === "credit" || state === "write" ? undefined : true;
          },
          async () => {
            await this.#fd.wait(
              state === "credit" ? "read" : "write",
              stop.signal,
            );
            this.#slice.waited();
          },
          spinner,
        );
      }
    } catch (error) {
      // Given up on purpose (nothing left to send), or the fd was closed.
      if (!stop.signal.aborted) this.#fail(error);
    } finally {
      this.#pumping = false;
      this.#stopPump = undefined;
      // A send queued after the pump was told to stop still needs one.
      if (this.#pending()) this.#pump();
      else this.#closeIfDone();
    }
  }

  /** Reads the acknowledgements that arrived (at most ACK_BUDGET). */
  #takeAcks(): void {
    for (let i = 0; i < ACK_BUDGET; i++) {
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
      if (got.bytes !== HEADER || buf[1] !== VERSION || got.fds.length > 0) {
        throw invalid("the receiver sent something other than an ack");
      }
      const n = getU32(buf, 4);
      if (buf[0] === FRAME.REFUSED) throw refused(n);
      if (buf[0] !== FRAME.ACK) {
        throw invalid("the receiver sent something other than an ack");
      }
      this.#credits = Math.min(this.#capacity, this.#credits + n);
    }
  }

  #sendError(error: unknown): unknown {
    if (isGone(error)) {
      // A receiver that refused this sender said why before it closed.
      try {
        this.#takeAcks();
      } catch (reason) {
        if (reason instanceof ChannelClosedError) return reason;
      }
      return sendClosed(error);
    }
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
        this.#closeIfDone();
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
   * Closes this sender; sends still waiting for room reject with
   * `BadResource`. Messages of sends that already resolved still go out
   * (the socket stays open until they are in it). Once every sender of
   * the channel is closed, the receiver's next `recv()` (after the
   * messages already sent) throws {@linkcode ChannelClosedError}.
   * Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const error = closedError("Sender");
    for (const out of this.#queue.splice(0)) {
      out.frame.abandon();
      out.waiter.reject(error);
    }
    this.#flushBatch();
    if (!this.#pending()) this.#stopPump?.abort();
    this.#closeIfDone();
  }

  #closeIfDone(): void {
    if (
      this.#closed && this.#registering === 0 && !this.#pending() &&
      !this.#pumping
    ) {
      this.#fd.close();
    }
  }

  /** Whether anything waits to go out. */
  #pending(): boolean {
    return this.#accepted > 0 || this.#queue.length > 0;
  }

  /** Closes the sender. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @internal Gives up the fd without closing it. */
  _release(): number {
    this.#assertOpen();
    if (this.#accepted > 0) this.#drain();
    if (this.#pending() || this.#registering > 0) {
      throw new Deno.errors.Busy(
        "Cannot release Sender: messages are still waiting to go out",
      );
    }
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
  /**
   * The records of a batch not yet taken: `left` of them in `batch` from
   * `at` on (checked when the batch arrived).
   */
  batch?: Uint8Array;
  at?: number;
  left?: number;
  /** Whether a frame came already (a hello comes first or not at all). */
  started?: boolean;
  /** For a connection a sender added: the connection it all began with. */
  origin?: Connection;
  /** The socket's identity, once the receiver needed it. */
  identity?: string;
  /** Open connections added through this one and those it added. */
  added?: number;
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
  putU32(ackFrame, 4, conn.unacked);
  try {
    if (sendFrame(conn.fd.fd, [ackFrame], [])) conn.unacked = 0;
  } catch {
    // The sender is gone; nobody waits for credits.
    conn.unacked = 0;
  }
}

/** Why a peer's fd cannot be a channel connection, as InvalidData. */
function notSeqpacket(what: string, fd: number): Deno.errors.InvalidData {
  return invalid(
    `${what} is ${seqpacketProblem(fd)}, not a unix seqpacket socket`,
  );
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

  /** The fd at `index`, checked to be a seqpacket socket, not yet taken. */
  #socket(index: number, what: string): number {
    if (index >= this.fds.length) {
      throw invalid(`endpoint names fd ${index} of ${this.fds.length}`);
    }
    const fd = this.fds[index];
    if (seqpacketProblem(fd) !== undefined) {
      throw notSeqpacket(
        `${what} (fd ${index} of the message, ${fd} here)`,
        fd,
      );
    }
    return fd;
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
      this.#socket(index, "a Sender");
      const sender = new Sender(this.#take(index), capacity, mode);
      this.made.push(sender);
      return sender;
    }
    if (kind === KIND.RECEIVER) {
      const count = input.count();
      if (count > MAX_FDS) throw invalid("bad receiver");
      const conns: Connection[] = [];
      const seen = new Set<string>();
      try {
        for (let i = 0; i < count; i++) {
          const index = input.varint();
          const capacity = input.varint();
          const unacked = input.varint();
          const left = input.varint();
          if (capacity < 1 || capacity > MAX_CAPACITY || unacked > capacity) {
            throw invalid("bad receiver");
          }
          let batch: Uint8Array | undefined;
          if (left > 0) {
            const length = input.count();
            batch = input.bytes(length).slice();
            checkBatch(batch, 0, length, left);
          }
          const identity = socketIdentity(
            this.#socket(index, "a Receiver's connection"),
          );
          if (seen.has(identity)) {
            throw invalid("a Receiver names one connection twice");
          }
          seen.add(identity);
          const fd = new OwnedFd(this.#take(index), "Receiver");
          conns.push({
            fd,
            capacity,
            unacked,
            identity,
            batch,
            at: 0,
            left: batch === undefined ? undefined : left,
            started: true,
          });
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

  /** Forgets the endpoints of the last message (for a reused instance). */
  reset(): this {
    this.made = [];
    return this;
  }

  /** Closes every fd not yet owned by an endpoint, and every endpoint. */
  fail(): void {
    for (const endpoint of this.made) endpoint.close();
    closeAll(this.fds.filter((_, i) => !this.used[i]));
  }
}

/**
 * The hooks of a message without fds: an endpoint in it fails, but for a
 * receiver without connections (one serves every such message, reset
 * before each).
 */
const noFds = new Incoming([]);

/**
 * The receiving end of a channel. Takes messages from every sender of the
 * channel, fairly; {@linkcode recv} throws {@linkcode ChannelClosedError}
 * once every sender is closed and everything they sent is taken.
 *
 * A receiver has one connection per sender; sending it inside a message
 * moves all of them to the other process (this copy is closed), so a
 * receiver can change process any number of times. Messages that arrived
 * here but were not taken move with it.
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
  #spinner = new Spinner();
  /** Messages handed out without waiting since the last turn. */
  #slice = new TurnSlice();
  /** The connections by socket identity, once a sender added one. */
  #identities: Map<string, Connection> | undefined;
  /** The epoll set over the connections, once there are many. */
  #set: ConnSet<Connection> | undefined;
  /** Connections holding messages of a batch, in turn order. */
  #batched = new Set<Connection>();
  #socketsFirst = false;

  /** @internal Use {@linkcode channel} or `fromFd()`. */
  constructor(conns: Connection[]) {
    this.#conns = conns;
    for (const conn of conns) {
      if (conn.batch !== undefined) this.#batched.add(conn);
    }
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
   * one arrives. A run of messages that are ready at once yields a
   * macrotask turn every 64 messages or 2 ms, so timers and other I/O still
   * run while a fast peer keeps the receiver busy.
   *
   * @param options An abort signal; the spin before parking.
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
    const { signal } = options;
    const spinner = options.spin === undefined
      ? this.#spinner
      : new Spinner(checkSpin(options.spin, "Cannot receive on channel"));
    this.#assertOpen();
    signal?.throwIfAborted();
    // A message that is here already needs no wait loop.
    const ready = this._poll();
    if (ready.kind === "value") {
      if (this.#slice.delivered()) await yieldTurn();
      return ready.value;
    }
    if (ready.kind === "closed") throw recvClosed();
    this.#pending++;
    let parked = false;
    try {
      const polled = await untilReady<Polled<T>>(
        () => {
          const polled = this._poll();
          return polled.kind === "empty" ? undefined : polled;
        },
        async () => {
          await this._wait(signal);
          parked = true;
          this.#assertOpen();
        },
        spinner,
      );
      if (parked) this.#slice.waited();
      else if (polled.kind === "value" && this.#slice.delivered()) {
        await yieldTurn();
      }
      if (polled.kind !== "value") throw recvClosed();
      return polled.value;
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
   * @internal One look at the connections, fairly rotated: the first
   * message found, "closed" when no connection is left, else "empty". It
   * reads at most {@linkcode POLL_BUDGET} frames (control frames and empty
   * reads included); the next look goes on where this one stopped.
   */
  _poll(): Polled<T> {
    if (this.#set === undefined && this.#conns.length >= SET_FROM) {
      this.#makeSet();
    }
    return this.#set === undefined ? this.#pollEach() : this.#pollReady();
  }

  /** A look at each connection in turn. */
  #pollEach(): Polled<T> {
    const conns = this.#conns.slice();
    const n = conns.length;
    let budget = POLL_BUDGET;
    let k = 0;
    for (; k < n && budget > 0; k++) {
      const conn = conns[(this.#next + k) % n];
      while (budget > 0) {
        budget--;
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
    if (this.#conns.length === 0) return { kind: "closed" };
    if (budget === 0) {
      this.#next = (this.#next + k) % this.#conns.length;
    }
    return { kind: "empty" };
  }

  /**
   * A look at the connections the epoll set names ready, after the
   * messages of batches already here.
   */
  #pollReady(): Polled<T> {
    // Batches already here and ready sockets take turns: neither starves.
    this.#socketsFirst = !this.#socketsFirst;
    if (this.#socketsFirst) {
      const polled = this.#pollSockets();
      if (polled.kind !== "empty") return polled;
    }
    for (const conn of this.#batched) {
      this.#batched.delete(conn);
      return { kind: "value", value: this.#record(conn).value as T };
    }
    if (!this.#socketsFirst) return this.#pollSockets();
    return this.#conns.length === 0 ? { kind: "closed" } : { kind: "empty" };
  }

  /** Reads the connections the epoll set names ready. */
  #pollSockets(): Polled<T> {
    let budget = POLL_BUDGET;
    for (const conn of this.#set!.ready()) {
      if (conn.fd.closed) continue;
      while (budget > 0) {
        budget--;
        const got = this.#read(conn);
        if (got === undefined) break;
        if (got !== AGAIN) return { kind: "value", value: got.value as T };
        if (conn.fd.closed) break;
      }
      if (budget === 0) break;
    }
    return this.#conns.length === 0 ? { kind: "closed" } : { kind: "empty" };
  }

  /** Puts the connections in an epoll set (or goes on without one). */
  #makeSet(): void {
    let set: ConnSet<Connection> | undefined;
    try {
      set = new ConnSet<Connection>("Receiver");
      for (const conn of this.#conns) set.add(conn.fd.fd, conn);
    } catch {
      // Out of fds or memory: each connection is looked at in turn.
      set?.close();
      return;
    }
    if (!this.#ref) set.unref();
    this.#set = set;
  }

  /** @internal Waits until some connection may have something. */
  _wait(signal?: AbortSignal): Promise<void> {
    if (this.#set !== undefined) return this.#set.wait(signal);
    return waitAny(this.#conns.map((conn) => conn.fd), signal);
  }

  #drop(conn: Connection): void {
    const at = this.#conns.indexOf(conn);
    if (at === -1) return;
    this.#conns.splice(at, 1);
    conn.batch = undefined;
    this.#batched.delete(conn);
    this.#set?.remove(conn.fd.fd, conn);
    if (conn.origin !== undefined) conn.origin.added!--;
    if (conn.identity !== undefined) this.#identities?.delete(conn.identity);
    conn.fd.close();
  }

  /**
   * Takes in the connection a sender added through `via`: once per socket,
   * within the limits (a refused sender is told why).
   */
  #addPeer(via: Connection, fd: number, capacity: number): void {
    const identities = this.#identities ??= new Map(
      this.#conns.map((conn) => {
        conn.identity ??= socketIdentity(conn.fd.fd);
        return [conn.identity, conn];
      }),
    );
    const identity = socketIdentity(fd);
    if (identities.has(identity)) {
      // The same socket again: the receiver holds it already.
      closeAll([fd]);
      return;
    }
    const origin = via.origin ?? via;
    const refusal = this.#conns.length >= MAX_CONNECTIONS
      ? REFUSAL.FULL
      : (origin.added ?? 0) >= MAX_ADDED
      ? REFUSAL.PER_SENDER
      : 0;
    if (refusal !== 0) {
      try {
        sendFrame(fd, [header(FRAME.REFUSED, refusal)], []);
      } catch {
        // The new sender is gone already.
      }
      closeAll([fd]);
      return;
    }
    const owned = new OwnedFd(fd, "Receiver");
    if (!this.#ref) owned.unref();
    origin.added = (origin.added ?? 0) + 1;
    const conn = { fd: owned, capacity, unacked: 0, origin, identity };
    identities.set(identity, conn);
    this.#conns.push(conn);
    try {
      this.#set?.add(owned.fd, conn);
    } catch {
      // The set cannot take it (out of memory): the sender is refused.
      this.#drop(conn);
    }
  }

  /**
   * Reads one frame from `conn`, or takes the next message of the batch it
   * is in: a value, `AGAIN` after dropping the connection or taking a
   * control frame, `undefined` when nothing is there. A malformed frame
   * drops the connection and throws.
   */
  #read(conn: Connection): { value: unknown } | typeof AGAIN | undefined {
    if (conn.batch !== undefined) return this.#record(conn);
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
      const a = getU32(scratch, 4);
      const type = scratch[0];
      const first = conn.started !== true;
      conn.started = true;
      if (type === FRAME.ADD_PEER) {
        if (got.fds.length !== 1 || got.bytes !== HEADER) {
          throw invalid("a new sender must come with one fd");
        }
        if (a < 1 || a > MAX_CAPACITY) throw invalid("bad capacity");
        if (seqpacketProblem(got.fds[0]) !== undefined) {
          throw notSeqpacket(
            `a new sender's connection (fd ${got.fds[0]} here)`,
            got.fds[0],
          );
        }
        handedOn = true;
        this.#addPeer(conn, got.fds[0], a);
        return AGAIN;
      }
      if (type === FRAME.HELLO) {
        if (got.fds.length !== 0 || got.bytes !== HEADER) {
          throw invalid("a hello carries nothing but its header");
        }
        if (!first) throw invalid("a hello after the first frame");
        if (a < 1 || a > MAX_CAPACITY) throw invalid("bad capacity");
        conn.capacity = a;
        return AGAIN;
      }
      if (type === FRAME.BATCH) {
        if (got.fds.length !== 0) throw invalid("a batch carries no fds");
        checkBatch(scratch, HEADER, got.bytes, a);
        conn.batch = scratch.slice(HEADER, got.bytes);
        conn.at = 0;
        conn.left = a;
        // Its messages are out of the channel: the sender may send more
        // while they are taken from here.
        this.#took(conn, a);
        return this.#record(conn);
      }
      handedOn = true;
      const value = this.#message(scratch, 0, got.bytes, got.fds);
      this.#took(conn);
      return { value };
    } catch (error) {
      if (!handedOn) closeAll(got.fds);
      this.#drop(conn);
      throw error;
    }
  }

  /** Takes the next message of the batch `conn` is in. */
  #record(conn: Connection): { value: unknown } {
    const batch = conn.batch!;
    const at = conn.at!;
    const start = at + RECORD_PREFIX;
    const end = start + getU32(batch, at);
    conn.left!--;
    if (conn.left === 0) {
      conn.batch = undefined;
      this.#batched.delete(conn);
    } else {
      conn.at = end;
      // Behind the other connections with batches: they take turns.
      this.#batched.delete(conn);
      this.#batched.add(conn);
    }
    let value;
    try {
      value = this.#message(batch, start, end, []);
    } catch (error) {
      this.#drop(conn);
      throw error;
    }
    return { value };
  }

  /** Counts messages taken; acknowledges a quarter of the capacity at once. */
  #took(conn: Connection, n = 1): void {
    conn.unacked += n;
    if (conn.unacked >= ackEvery(conn.capacity)) sendAck(conn);
  }

  /**
   * Decodes the message frame in `buf[start, end)`, with the fds that came
   * with it (closed on failure).
   */
  #message(
    buf: Uint8Array,
    start: number,
    end: number,
    fds: number[],
  ): unknown {
    const type = buf[start];
    const a = getU32(buf, start + 4);
    const headLength = getU32(buf, start + 8);
    const treeLength = getU32(buf, start + 12);
    const size = end - start;
    if (type === FRAME.BYTES) {
      closeAll(fds);
      if (fds.length !== 0) throw invalid("a bytes frame carries no fds");
      return buf.slice(start + HEADER, end);
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
    const incoming = fds.length === 0 ? noFds.reset() : new Incoming(fds);
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
        head = buf.subarray(start + HEADER, start + HEADER + headLength);
        blobsAt = start + HEADER + headLength;
        blobBytes = end - blobsAt;
        source = buf;
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
  [Symbol.asyncIterator](): AsyncGenerator<T> {
    return untilClosed(() => this.recv());
  }

  /**
   * The messages as a stream, which ends once every sender is closed.
   * Messages are taken only as the stream is read. Cancelling it closes
   * the receiver.
   */
  get readable(): ReadableStream<T> {
    return this.#readable ??= streamUntilClosed(
      () => this.recv(),
      () => this.close(),
    );
  }

  /** Lets pending receives keep the process alive (the default). */
  ref(): void {
    this.#ref = true;
    this.#set?.ref();
    for (const conn of this.#conns) conn.fd.ref();
  }

  /** Lets the process exit while a receive is pending. */
  unref(): void {
    this.#ref = false;
    this.#set?.unref();
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
    this.#set?.close();
    this.#set = undefined;
    for (const conn of this.#conns) conn.fd.close();
    this.#conns = [];
    this.#batched.clear();
    this.#identities = undefined;
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
    if (this.#conns[0].batch !== undefined) {
      throw new Deno.errors.Busy(
        "Cannot release Receiver: it holds messages that were not taken",
      );
    }
    this.#set?.close();
    this.#set = undefined;
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
  #slice = new TurnSlice();
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
   * or for one whose every sender is gone. Like {@linkcode Receiver.recv},
   * a run of messages that are ready at once yields a macrotask turn every
   * 64 messages or 2 ms.
   *
   * @param options An abort signal.
   * @returns `{ id, value }`, or `{ id, closed: true }` (that receiver is
   * then closed and out of the set).
   * @throws {ChannelClosedError} When the set is empty.
   */
  async select(options: ChannelRecvOptions = {}): Promise<SelectResult<T>> {
    const { signal } = options;
    signal?.throwIfAborted();
    let parked = false;
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
          if (parked) this.#slice.waited();
          else if (this.#slice.delivered()) await yieldTurn();
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
        parked = true;
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
  const problem = seqpacketProblem(fd);
  if (problem !== undefined) {
    throw new TypeError(
      `Cannot adopt fd ${fd} as a channel ${
        mark.role === "s" ? "Sender" : "Receiver"
      }: it is ${problem}, not a unix seqpacket socket`,
    );
  }
  if (mark.role === "s") {
    return new Sender(fd, mark.capacity, mark.mode);
  }
  return receiverOf(fd, mark.capacity);
}, true);

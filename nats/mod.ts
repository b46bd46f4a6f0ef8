/**
 * Channels beyond one machine: {@linkcode natsSender} and
 * {@linkcode natsReceiver} carry the values of a typed channel over
 * [NATS](https://nats.io), on a subject, with the same codec as local
 * channels (maps, dates, bigints, typed arrays, nested objects, cycles) and
 * the same surface: `send`, `recv`, `tryRecv`, `for await`, `readable`,
 * `close`, and {@linkcode ChannelClosedError} once every sender is closed.
 * {@linkcode natsChannel} makes both ends on one connection.
 *
 * Endpoints (pipe ends, sockets, shared memory, local channel ends) are file
 * descriptors of one machine: a value that holds one fails at `send` with a
 * `DOMException` named `DataCloneError`.
 *
 * Delivery, as NATS gives it:
 *
 * - **Core NATS (the default): at most once.** A value reaches the receivers
 *   subscribed when it is published; nothing is stored. A receiver must be
 *   open before the values it should get are sent. Values in flight when the
 *   connection drops are lost (the receiver counts the gaps it sees in
 *   {@linkcode NatsReceiver.lost}); values sent while it is down wait in
 *   the sender (up to `capacity`, then `send()` waits), and both ends
 *   reconnect by themselves. The sender paces itself on round trips to the
 *   server, but nothing flows back from the receiver: one more than
 *   `maxPendingBytes` behind drops what comes next (counted in
 *   {@linkcode NatsReceiver.dropped}).
 * - **JetStream (`jetstream: true`): at least once, durable.** Values are
 *   stored in a stream on the server's disk (a work-queue stream of the
 *   subject, made on first use, unless one already binds the subject) and
 *   read through a durable consumer, so a receiver that starts later, or
 *   dies and comes back, gets everything not yet acknowledged. `send()`
 *   waits while `capacity` values are not yet acknowledged by the server
 *   (backpressure through acknowledgements); after a reconnection, once
 *   the stream answers again, values it did not acknowledge are sent again,
 *   in order (it drops the copies within its two-minute duplicate window).
 *   The receiver acknowledges what it has taken as it asks for more: every
 *   64 values while they keep coming, at once when it has to wait, and when
 *   it closes. A receiver that dies gets again what it took since its last
 *   acknowledgement (the value it was handling, and at most 63 before it).
 * - **Order:** per subject, the order the server received them; each
 *   sender's values arrive in the order sent. Values of different senders
 *   interleave.
 *
 * End of stream: each sender's `close()` publishes an end-of-stream marker;
 * a receiver reports {@linkcode ChannelClosedError} once every sender it
 * has heard from has closed (set `endWithSenders: false` for a receiver
 * that outlives its senders). With core NATS the marker can be lost like any
 * message: pass a signal to bound a wait.
 *
 * Needs `--allow-net` for the server's address only.
 *
 * @example Both ends on one connection
 * ```ts ignore
 * import { natsChannel } from "@conduit/ipc/nats";
 *
 * const [tx, rx] = await natsChannel<{ n: number; when: Date }>("jobs", {
 *   servers: "127.0.0.1:4222",
 * });
 * await tx.send({ n: 1, when: new Date(0) });
 * console.log(await rx.recv()); // { n: 1, when: 1970-01-01T00:00:00.000Z }
 * await tx.close();
 * await rx.close();
 * ```
 *
 * @module
 */

import {
  createInbox,
  headers,
  type JetStreamManager,
  type Msg,
  type NatsError,
  type Subscription,
} from "nats";
import {
  ChannelClosedError,
  invalid,
  streamUntilClosed,
  untilClosed,
} from "../_channel_error.ts";
import {
  type DecodeLimits,
  DEFAULT_LIMITS,
  resolveLimits,
} from "../channel/_codec_limits.ts";
import { Link, type LinkListener } from "./_link.ts";
import {
  type ConsumerSpec,
  ensureStream,
  isRefusal,
  parsePubAck,
  pull,
  resetConsumer,
  type StreamRef,
  streamSeqOf,
} from "./_jetstream.ts";
import {
  decodeValue,
  encodeEnd,
  encodeValue,
  idText,
  KIND,
  newSenderId,
  parse,
  setSeq,
} from "./_wire.ts";

export { ChannelClosedError };
export type { DecodeLimits };

/** How to reach the NATS server. */
export interface NatsConnectOptions {
  /**
   * The server or servers, such as `"nats.example.com:4222"`. Default
   * `"127.0.0.1:4222"`.
   */
  servers?: string | string[];
  /**
   * A connection to use instead: a `NatsConnection` from `connect()` of the
   * `nats` package (`npm:nats@2.29`), for credentials, TLS and the like.
   * The ends never close it.
   */
  connection?: object;
  /** The connection's name, as the server's monitoring shows it. */
  name?: string;
  /** Milliseconds between attempts to reconnect. Default 250. */
  reconnectTimeWait?: number;
  /** Attempts to reconnect before giving up; -1 (the default) never gives up. */
  maxReconnectAttempts?: number;
}

/** JetStream settings of a channel. */
export interface NatsJetStreamOptions {
  /**
   * The stream. Default: the stream that already binds the subject, else a
   * new work-queue stream named after the subject.
   */
  stream?: string;
  /** The receiver's durable consumer. Default `"receiver"`. */
  durable?: string;
  /**
   * Milliseconds the server waits for a delivered value's acknowledgement
   * before it delivers the value again. Default 30_000.
   */
  ackWait?: number;
}

/** Options for {@linkcode natsSender}. */
export interface NatsSenderOptions extends NatsConnectOptions {
  /** Store values in a JetStream stream (at least once, durable). */
  jetstream?: boolean | NatsJetStreamOptions;
  /**
   * With JetStream, the values `send()` may have unacknowledged before it
   * waits; with core NATS, the values between two round trips to the server
   * (which bound what the client buffers). Default 256.
   */
  capacity?: number;
}

/** Options for {@linkcode natsReceiver}. */
export interface NatsReceiverOptions extends NatsConnectOptions {
  /** Read from a JetStream stream through a durable consumer. */
  jetstream?: boolean | NatsJetStreamOptions;
  /** With JetStream, the values fetched ahead of `recv()`. Default 256. */
  capacity?: number;
  /**
   * With core NATS, the bytes a receiver holds that `recv()` has not taken;
   * beyond it, arriving values are dropped. Default 64 MiB.
   */
  maxPendingBytes?: number;
  /**
   * Report {@linkcode ChannelClosedError} once every sender heard from has
   * closed. Default true.
   */
  endWithSenders?: boolean;
  /**
   * What decoding one value may build: see {@linkcode NatsReceiver.limits}.
   * Fields left out keep their defaults.
   */
  limits?: DecodeLimits;
}

/** Options for {@linkcode natsChannel}. */
export interface NatsChannelOptions
  extends NatsSenderOptions, NatsReceiverOptions {}

/** Options for {@linkcode NatsSender.send}. */
export interface NatsSendOptions {
  /** Aborting it while the send still waits gives the send up. */
  signal?: AbortSignal;
}

/** Options for {@linkcode NatsReceiver.recv}. */
export interface NatsRecvOptions {
  /** Aborting it rejects the pending receive with the signal's reason. */
  signal?: AbortSignal;
}

const DEFAULT_CAPACITY = 256;
const MAX_CAPACITY = 1_000_000;
const DEFAULT_MAX_PENDING_BYTES = 64 << 20;
/** The most senders a receiver keeps track of at once. */
const MAX_SENDERS = 4096;
/** How long a pull request for JetStream values waits on the server. */
const PULL_EXPIRES_MS = 5_000;
/** Pause before trying a JetStream set-up step again. */
const RETRY_MS = 250;
/** A receiver acknowledges at least every this many values taken. */
const ACK_EVERY = 64;
/** A subject token: no whitespace, no wildcard. */
const TOKEN = /^[^\s.*>]+$/;

function checkSubject(subject: string, doing: string): void {
  if (
    typeof subject !== "string" || subject.length === 0 ||
    !subject.split(".").every((token) => TOKEN.test(token))
  ) {
    throw new TypeError(
      `Cannot ${doing}: the subject must be dot-separated tokens without spaces or wildcards, got ${
        JSON.stringify(subject)
      }`,
    );
  }
}

function checkCapacity(value: number | undefined, doing: string): number {
  if (value === undefined) return DEFAULT_CAPACITY;
  if (!Number.isInteger(value) || value < 1 || value > MAX_CAPACITY) {
    throw new RangeError(
      `Cannot ${doing}: capacity must be an integer from 1 to ${MAX_CAPACITY}, got ${value}`,
    );
  }
  return value;
}

function jetstreamOptions(
  value: boolean | NatsJetStreamOptions | undefined,
): NatsJetStreamOptions | undefined {
  if (value === undefined || value === false) return undefined;
  return value === true ? {} : value;
}

function closedError(what: string): Deno.errors.BadResource {
  return new Deno.errors.BadResource(`Cannot use ${what}: it is closed`);
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ??
    new DOMException("The operation was aborted", "AbortError");
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Races `promise` against `signal`. */
function abortable<T>(
  promise: Promise<T>,
  signal: AbortSignal | undefined,
): Promise<T> {
  if (signal === undefined) return promise;
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() =>
      signal.removeEventListener("abort", onAbort)
    );
  });
}

// --- Sender ---

/** Where a JetStream sender's values go, and the API to ask after it. */
interface Stored {
  ref: StreamRef;
  jsm: JetStreamManager;
}

/**
 * The sending end of a NATS channel, from {@linkcode natsSender} or
 * {@linkcode natsChannel}. Sends of one sender arrive in order.
 *
 * @typeParam T The message type.
 *
 * @example Send and close
 * ```ts ignore
 * import { natsSender } from "@conduit/ipc/nats";
 *
 * await using tx = await natsSender<Map<string, bigint>>("totals", {
 *   servers: "nats.example.com:4222",
 *   jetstream: true,
 * });
 * await tx.send(new Map([["a", 1n]]));
 * ```
 */
export class NatsSender<T> implements AsyncDisposable {
  #link: Link;
  #subject: string;
  #capacity: number;
  #stream: Stored | undefined;
  #id = newSenderId();
  #idText = idText(this.#id);
  #seq = 0;
  #tail: Promise<unknown> = Promise.resolve();
  #queued = 0;
  #closed = false;
  #closing: Promise<void> | undefined;
  #failure: Error | undefined;
  /**
   * Values accepted and numbered but not yet published: held while an
   * earlier publish is unanswered, then published together (one write to
   * the socket instead of one per value).
   */
  #held: { seq: number; payload: Uint8Array }[] = [];
  /** Core: a round trip to the server is under way. */
  #pinging = false;
  /**
   * JetStream: after a reconnection (or a stream that did not answer),
   * nothing goes out until the stream answers again; then everything
   * unacknowledged goes, in order.
   */
  #recovering: Promise<void> | undefined;
  #stop = new AbortController();
  #ackInbox = "";
  #ackSub: Subscription | undefined;
  /** JetStream: every value not yet acknowledged (held ones included). */
  #unacked = new Map<number, Uint8Array>();
  #room = new Set<() => void>();
  #listener: LinkListener;

  /** @internal Use {@linkcode natsSender} or {@linkcode natsChannel}. */
  constructor(
    link: Link,
    subject: string,
    capacity: number,
    stream: Stored | undefined,
  ) {
    this.#link = link;
    this.#subject = subject;
    this.#capacity = capacity;
    this.#stream = stream;
    this.#listener = {
      disconnected: () => {},
      reconnected: () => this.#reconnected(),
      closed: () => {
        this.#stop.abort();
        this.#wakeAll();
      },
    };
    if (stream !== undefined) {
      this.#ackInbox = createInbox();
      this.#ackSub = link.nc.subscribe(`${this.#ackInbox}.*`, {
        callback: (error, msg) => this.#onAck(error, msg),
      });
    }
    link.acquire(this.#listener);
  }

  /** The subject it sends on. */
  get subject(): string {
    return this.#subject;
  }

  /** Whether values are stored in a JetStream stream. */
  get jetstream(): boolean {
    return this.#stream !== undefined;
  }

  /** See {@linkcode NatsSenderOptions.capacity}. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Sends one value. It is encoded at once (later changes to it do not
   * travel). Resolves once the value is accepted: with core NATS, while
   * fewer than `capacity` values wait for the server to answer a round
   * trip; with JetStream, while fewer than `capacity` values are
   * unacknowledged by the server. While the connection is down, values are
   * held (up to `capacity`, then `send()` waits) and go out when it is back.
   *
   * @param value The value: anything structured clone takes.
   * @param options An abort signal.
   * @returns Resolves when sent.
   * @throws {DOMException} `DataCloneError` when the value holds something
   * that cannot travel: a function, a symbol, an endpoint.
   * @throws {RangeError} When the encoded value is larger than the server
   * takes (its `max_payload`, 1 MiB by default).
   * @throws {ChannelClosedError} When the connection is closed for good.
   *
   * @example Send a structured value
   * ```ts ignore
   * import { natsSender } from "@conduit/ipc/nats";
   *
   * await using tx = await natsSender<object>("events");
   * await tx.send({ at: new Date(), ids: new Uint32Array([1, 2]) });
   * ```
   */
  send(value: T, options: NatsSendOptions = {}): Promise<void> {
    const { signal } = options;
    let payload: Uint8Array;
    try {
      this.#assertUsable();
      signal?.throwIfAborted();
      payload = encodeValue(value, this.#id);
      this.#checkSize(payload);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#enqueue(payload, signal);
  }

  #checkSize(payload: Uint8Array): void {
    const max = this.#link.maxPayload;
    if (payload.byteLength > max) {
      throw new RangeError(
        `Cannot send on NATS channel: the value takes ${payload.byteLength} bytes, more than the server's max_payload of ${max}`,
      );
    }
  }

  #enqueue(payload: Uint8Array, signal: AbortSignal | undefined) {
    if (this.#queued === 0 && this.#accept(payload)) return Promise.resolve();
    this.#queued++;
    const run = async () => {
      try {
        for (;;) {
          this.#assertUsable(true);
          signal?.throwIfAborted();
          if (this.#accept(payload)) return;
          await this.#waitRoom(signal);
        }
      } finally {
        this.#queued--;
      }
    };
    const result = this.#tail.then(run);
    this.#tail = result.catch(() => {});
    return result;
  }

  /** Throws unless sends can go out (`closing`: queued before close). */
  #assertUsable(closing = false): void {
    if (this.#closed && !closing) throw closedError("NatsSender");
    if (this.#failure !== undefined) throw this.#failure;
    const closed = this.#link.closedError;
    if (closed !== undefined) throw closed;
  }

  /** Values accepted and not yet answered for. */
  get #waiting(): number {
    return this.#stream === undefined ? this.#held.length : this.#unacked.size;
  }

  /** Takes a value if there is room; it goes out now or with the next batch. */
  #accept(payload: Uint8Array): boolean {
    if (this.#waiting >= this.#capacity) return false;
    const seq = ++this.#seq;
    setSeq(payload, seq);
    if (this.#stream !== undefined) this.#unacked.set(seq, payload);
    this.#held.push({ seq, payload });
    // Nothing unanswered: out at once (no delay for a lone value).
    const idle = this.#stream === undefined
      ? !this.#pinging
      : this.#unacked.size === this.#held.length &&
        this.#recovering === undefined;
    if (idle) this.#release();
    return true;
  }

  /** Publishes the held values together. */
  #release(): void {
    if (
      this.#held.length === 0 || !this.#link.up ||
      this.#recovering !== undefined
    ) {
      return;
    }
    const held = this.#held;
    this.#held = [];
    const nc = this.#link.nc;
    if (this.#stream === undefined) {
      for (const { payload } of held) nc.publish(this.#subject, payload);
      this.#ping();
    } else {
      for (const { seq, payload } of held) this.#publishStored(seq, payload);
    }
    this.#wakeAll();
  }

  /**
   * Core: a round trip to the server paces the sender (what it published
   * reached the server); values sent meanwhile are held and go out
   * together when the answer comes.
   */
  #ping(): void {
    this.#pinging = true;
    this.#link.nc.flush().then(
      () => {
        this.#pinging = false;
        this.#release();
        this.#wakeAll();
      },
      () => {
        // The connection dropped: held values go once it is back.
        this.#pinging = false;
        this.#wakeAll();
      },
    );
  }

  #publishStored(seq: number, payload: Uint8Array): void {
    const h = headers();
    // The stream drops a second copy with the same id (a re-send).
    h.set("Nats-Msg-Id", `${this.#idText}-${seq}`);
    h.set("Nats-Expected-Stream", this.#stream!.ref.stream);
    this.#link.nc.publish(this.#subject, payload, {
      reply: `${this.#ackInbox}.${seq}`,
      headers: h,
    });
  }

  /** Waits until a value may be accepted (or the state changes). */
  async #waitRoom(signal: AbortSignal | undefined): Promise<void> {
    await abortable(
      new Promise<void>((resolve) => this.#room.add(resolve)),
      signal,
    );
  }

  #wakeAll(): void {
    const room = [...this.#room];
    this.#room.clear();
    for (const wake of room) wake();
  }

  #onAck(error: NatsError | null, msg: Msg): void {
    if (error !== null) return;
    const seq = Number(msg.subject.slice(this.#ackInbox.length + 1));
    if (!this.#unacked.has(seq)) return;
    const code = msg.headers?.code ?? 0;
    if (code === 503) {
      // No responders: the server runs but its stream does not answer yet
      // (it is coming back up). Try again once it does.
      this.#recover();
      return;
    }
    const ack = parsePubAck(msg.data);
    if (!ack.ok) {
      this.#fail(`the stream refused value ${seq}: ${ack.error}`);
      return;
    }
    this.#unacked.delete(seq);
    this.#release();
    this.#wakeAll();
  }

  #fail(detail: string): void {
    this.#failure ??= new Error(`Cannot send on NATS channel: ${detail}`);
    this.#wakeAll();
  }

  /** After a reconnection. Core: the held values go. */
  #reconnected(): void {
    if (this.#failure !== undefined) return;
    if (this.#stream === undefined) {
      this.#pinging = false;
      this.#release();
      this.#wakeAll();
      return;
    }
    this.#recover();
  }

  /**
   * JetStream: waits until the stream answers (a server that is back may
   * accept clients before its streams do), then sends everything it has
   * not acknowledged again, in order, before any new value. Values the
   * stream stored already are dropped by it as copies.
   */
  #recover(): void {
    if (this.#recovering !== undefined || this.#failure !== undefined) return;
    const { ref, jsm } = this.#stream!;
    const signal = this.#stop.signal;
    this.#recovering = (async () => {
      while (!signal.aborted) {
        try {
          await this.#link.waitUp(signal);
          await jsm.streams.info(ref.stream);
          break;
        } catch (error) {
          if (signal.aborted || this.#link.closedError !== undefined) break;
          if (isRefusal(error)) {
            this.#fail(
              `the stream ${ref.stream} is gone: ${(error as Error).message}`,
            );
            break;
          }
          await pause(RETRY_MS, signal);
        }
      }
    })().finally(() => {
      this.#recovering = undefined;
      // Down again: the next reconnection recovers.
      if (
        signal.aborted || this.#failure !== undefined || !this.#link.up
      ) {
        return;
      }
      this.#held = [];
      for (const [seq, payload] of this.#unacked) {
        this.#publishStored(seq, payload);
      }
      this.#wakeAll();
    });
  }

  /**
   * Resolves once everything sent so far has reached the server (with
   * JetStream: is stored and acknowledged).
   *
   * @param options An abort signal.
   * @returns Resolves when flushed.
   *
   * @example Make sure values are stored before going on
   * ```ts ignore
   * import { natsSender } from "@conduit/ipc/nats";
   *
   * await using tx = await natsSender<number>("readings", { jetstream: true });
   * await tx.send(42);
   * await tx.flush();
   * ```
   */
  flush(options: NatsSendOptions = {}): Promise<void> {
    try {
      this.#assertUsable();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#flush(options.signal);
  }

  async #flush(signal: AbortSignal | undefined): Promise<void> {
    await abortable(this.#tail, signal);
    for (;;) {
      this.#assertUsable(true);
      signal?.throwIfAborted();
      if (this.#waiting === 0 && !this.#pinging) {
        if (this.#stream !== undefined) return;
        if (this.#link.up) {
          try {
            await abortable(this.#link.nc.flush(), signal);
            return;
          } catch {
            signal?.throwIfAborted();
            continue;
          }
        }
      }
      await this.#waitRoom(signal);
    }
  }

  /**
   * Makes another sender of the same subject on the same connection, with
   * its own sequence: the receiver's stream ends only once every sender is
   * closed.
   *
   * @returns The new sender.
   *
   * @example Two senders
   * ```ts ignore
   * import { natsChannel } from "@conduit/ipc/nats";
   *
   * const [tx, rx] = await natsChannel<string>("words");
   * const tx2 = tx.clone();
   * await tx.send("a");
   * await tx2.send("b");
   * await tx.close();
   * await tx2.close();
   * for await (const word of rx) console.log(word); // "a", "b"
   * await rx.close();
   * ```
   */
  clone(): NatsSender<T> {
    this.#assertUsable();
    return new NatsSender<T>(
      this.#link,
      this.#subject,
      this.#capacity,
      this.#stream,
    );
  }

  /**
   * Closes the sender: waits for the sends already made, publishes this
   * sender's end-of-stream marker, waits until the server has it all (with
   * JetStream: acknowledged), then lets go of the connection (closing it
   * when the sender opened it). New sends throw `BadResource`. Idempotent.
   *
   * @returns Resolves once closed.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      try {
        await this.#tail;
        if (this.#failure === undefined && !this.#link.closedError) {
          const end = encodeEnd(this.#id);
          await this.#enqueue(end, undefined);
          await this.#flush(undefined);
        }
      } catch {
        // The connection or the stream failed: nothing more can go out.
      } finally {
        this.#stop.abort();
        this.#ackSub?.unsubscribe();
        this.#wakeAll();
        await this.#link.release(this.#listener);
      }
    })();
    return this.#closing;
  }

  /** Closes the sender ({@linkcode close}). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

// --- Receiver ---

/** One message as it arrived, before `recv()` takes it. */
interface Entry {
  data: Uint8Array;
  /** JetStream: the subject that acknowledges it. */
  ack?: string;
  /** JetStream: its stream sequence. */
  sseq?: number;
}

/** The JetStream state of a receiver. */
interface Pulling {
  jsm: JetStreamManager;
  ref: StreamRef;
  spec: ConsumerSpec;
  /**
   * Where pulled values arrive: a fresh inbox for every consumer reset, so
   * that deliveries to older pull requests find no subscriber.
   */
  inbox: string;
  sub: Subscription | undefined;
  /** Bumped on every consumer reset. */
  generation: number;
  ready: boolean;
  /** Values the current pull request may still deliver. */
  outstanding: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  resetting: Promise<void>;
  /** The highest stream sequence queued or taken (drops redeliveries). */
  highest: number;
  /** The stream sequence of the message taken last. */
  taken: number;
  /**
   * Ack subjects of the messages taken and not yet acknowledged, by stream
   * sequence. They go out together, in one write.
   */
  unacked: Map<number, string>;
}

interface SenderState {
  next: number;
  ended: boolean;
}

/**
 * The receiving end of a NATS channel, from {@linkcode natsReceiver} or
 * {@linkcode natsChannel}.
 *
 * @typeParam T The message type.
 *
 * @example Iterate until every sender is closed
 * ```ts ignore
 * import { natsReceiver } from "@conduit/ipc/nats";
 *
 * await using rx = await natsReceiver<string>("words", { jetstream: true });
 * for await (const word of rx) console.log(word);
 * ```
 */
export class NatsReceiver<T> implements AsyncDisposable, AsyncIterable<T> {
  #link: Link;
  #subject: string;
  #capacity: number;
  #maxPendingBytes: number;
  #endWithSenders: boolean;
  #limits = DEFAULT_LIMITS;
  #queue: (Entry | undefined)[] = [];
  #head = 0;
  #bytes = 0;
  #wake: PromiseWithResolvers<void> | undefined;
  #senders = new Map<string, SenderState>();
  #live = 0;
  #ended = false;
  #closed = false;
  #closing: Promise<void> | undefined;
  #stop = new AbortController();
  #failure: Error | undefined;
  #lost = 0;
  #dropped = 0;
  #sub: Subscription | undefined;
  #js: Pulling | undefined;
  #readable: ReadableStream<T> | undefined;
  #listener: LinkListener;

  /** @internal Use {@linkcode natsReceiver} or {@linkcode natsChannel}. */
  constructor(
    link: Link,
    subject: string,
    options: NatsReceiverOptions,
    js:
      | { jsm: JetStreamManager; ref: StreamRef; spec: ConsumerSpec }
      | undefined,
  ) {
    this.#link = link;
    this.#subject = subject;
    this.#capacity = checkCapacity(options.capacity, "open NATS receiver");
    this.#maxPendingBytes = options.maxPendingBytes ??
      DEFAULT_MAX_PENDING_BYTES;
    this.#endWithSenders = options.endWithSenders ?? true;
    this.#limits = resolveLimits(options.limits, "open NATS receiver");
    this.#listener = {
      disconnected: () => {},
      reconnected: () => {
        if (this.#js !== undefined) this.#reset();
      },
      closed: () => this.#notify(),
    };
    if (js === undefined) {
      this.#sub = link.nc.subscribe(subject, {
        callback: (error, msg) => {
          if (error === null) this.#onCore(msg);
        },
      });
    } else {
      this.#js = {
        ...js,
        inbox: "",
        sub: undefined,
        generation: 0,
        ready: false,
        outstanding: 0,
        timer: undefined,
        resetting: Promise.resolve(),
        highest: 0,
        taken: 0,
        unacked: new Map(),
      };
    }
    link.acquire(this.#listener);
  }

  /** The subject it receives from. */
  get subject(): string {
    return this.#subject;
  }

  /** Whether values come from a JetStream stream. */
  get jetstream(): boolean {
    return this.#js !== undefined;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Senders heard from that have not closed yet. */
  get senders(): number {
    return this.#live;
  }

  /**
   * Values known to be lost: gaps in a sender's sequence, such as core NATS
   * values in flight when the connection dropped (with JetStream, 0).
   */
  get lost(): number {
    return this.#lost;
  }

  /** Core NATS: values dropped because `maxPendingBytes` were waiting. */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * What decoding one value may build (memory, elements, nesting), as for
   * a local channel's `Receiver.limits`: a value beyond them fails its
   * `recv()` with `InvalidData`. Setting it checks every field (a positive
   * integer); fields left out take their defaults.
   *
   * @example Accept larger values
   * ```ts ignore
   * import { natsReceiver } from "@conduit/ipc/nats";
   *
   * await using rx = await natsReceiver<number[]>("samples");
   * rx.limits = { maxElements: 100_000_000 };
   * ```
   */
  get limits(): Readonly<Required<DecodeLimits>> {
    return this.#limits;
  }

  set limits(value: DecodeLimits) {
    this.#limits = resolveLimits(value, "set limits of NatsReceiver");
  }

  /** Values that arrived and are not taken yet. */
  get pending(): number {
    return this.#queue.length - this.#head;
  }

  /** @internal Resolves once the consumer is ready (JetStream). */
  async _start(): Promise<void> {
    if (this.#js === undefined) return;
    this.#reset();
    await this.#js.resetting;
    if (this.#failure !== undefined) throw this.#failure;
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError("NatsReceiver");
  }

  #push(entry: Entry): void {
    this.#queue.push(entry);
    this.#bytes += entry.data.byteLength;
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.resolve();
  }

  #onCore(msg: Msg): void {
    const data = msg.data;
    if (this.#bytes + data.byteLength > this.#maxPendingBytes) {
      this.#dropped++;
      return;
    }
    this.#push({ data });
  }

  // --- JetStream: pulling, acknowledging, resetting ---

  /**
   * Makes the consumer deliver again from the first unacknowledged value,
   * dropping what was fetched and not taken (it comes again, in order).
   */
  #reset(): void {
    const js = this.#js!;
    if (this.#closed) return;
    js.ready = false;
    js.generation++;
    js.sub?.unsubscribe();
    js.inbox = createInbox();
    js.sub = this.#link.nc.subscribe(js.inbox, {
      callback: (error, msg) => {
        if (error === null) this.#onPulled(sub, msg);
      },
    });
    const sub = js.sub;
    js.outstanding = 0;
    clearTimeout(js.timer);
    js.timer = undefined;
    for (let i = this.#head; i < this.#queue.length; i++) {
      this.#queue[i] = undefined;
    }
    this.#queue = [];
    this.#head = 0;
    this.#bytes = 0;
    js.highest = js.taken;
    js.resetting = js.resetting.then(async () => {
      const signal = this.#stop.signal;
      while (!signal.aborted && this.#failure === undefined) {
        try {
          await this.#link.waitUp(signal);
          await resetConsumer(js.jsm, js.ref, js.spec);
          js.ready = true;
          this.#pump();
          return;
        } catch (error) {
          if (signal.aborted || this.#link.closedError !== undefined) return;
          if (isRefusal(error)) {
            this.#failure = error as Error;
            this.#notify();
            return;
          }
          await pause(RETRY_MS, signal);
        }
      }
    });
  }

  /** Asks for more values when there is room and no request is open. */
  #pump(): void {
    const js = this.#js;
    if (
      js === undefined || !js.ready || js.outstanding > 0 || this.#closed ||
      this.#ended || !this.#link.up
    ) {
      return;
    }
    const room = this.#capacity - this.pending;
    if (room < Math.ceil(this.#capacity / 2)) return;
    js.outstanding = room;
    const generation = js.generation;
    pull(
      this.#link.nc,
      js.ref,
      js.spec.durable,
      js.inbox,
      room,
      PULL_EXPIRES_MS,
    );
    // A request lost with its connection is replaced on reconnection; this
    // covers one that is never answered on a live connection.
    clearTimeout(js.timer);
    js.timer = setTimeout(() => {
      if (js.generation !== generation) return;
      js.timer = undefined;
      js.outstanding = 0;
      this.#pump();
    }, PULL_EXPIRES_MS + 2_000);
  }

  #requestDone(js: Pulling): void {
    js.outstanding = 0;
    clearTimeout(js.timer);
    js.timer = undefined;
    this.#pump();
  }

  #onPulled(sub: Subscription, msg: Msg): void {
    const js = this.#js!;
    if (sub !== js.sub) return;
    const code = msg.headers?.code ?? 0;
    if (code !== 0 && msg.data.byteLength === 0) {
      // 100: heartbeat; 404/408: the request is over. 409 (the consumer
      // changed or is busy): ask again after a pause, not in a tight loop.
      if (code === 409) {
        js.outstanding = 0;
        clearTimeout(js.timer);
        js.timer = setTimeout(() => {
          js.timer = undefined;
          this.#pump();
        }, RETRY_MS);
      } else if (code !== 100) {
        this.#requestDone(js);
      }
      return;
    }
    const sseq = streamSeqOf(msg.reply);
    // Only what a pull request asked for is taken in: JetStream never sends
    // more, so anything beyond is not from it.
    if (sseq === undefined || this.pending >= 2 * this.#capacity) return;
    if (js.outstanding > 0 && --js.outstanding === 0) this.#requestDone(js);
    if (sseq <= js.highest) {
      // Delivered again: the value was queued or taken already.
      this.#redelivered(js, sseq, msg.reply!);
      return;
    }
    js.highest = sseq;
    this.#push({ data: msg.data, ack: msg.reply, sseq });
  }

  #redelivered(js: Pulling, sseq: number, ack: string): void {
    if (sseq <= js.taken) {
      // Taken already: acknowledge this delivery (with the rest when its
      // first acknowledgement has not gone out yet).
      if (js.unacked.has(sseq)) js.unacked.set(sseq, ack);
      else this.#ack(ack);
      return;
    }
    for (let i = this.#head; i < this.#queue.length; i++) {
      const entry = this.#queue[i]!;
      if (entry.sseq === sseq) {
        entry.ack = ack;
        return;
      }
    }
  }

  #ack(subject: string): void {
    if (this.#link.closedError !== undefined) return;
    this.#link.nc.publish(subject);
  }

  /** Acknowledges every message taken so far. */
  #ackTaken(): void {
    const js = this.#js;
    if (js === undefined || js.unacked.size === 0) return;
    for (const subject of js.unacked.values()) this.#ack(subject);
    js.unacked.clear();
  }

  // --- Taking values ---

  /** The next value, `undefined` when none is here; throws at the end. */
  #take(): { value: T } | undefined {
    this.#assertOpen();
    const js = this.#js;
    while (!this.#ended && this.#head < this.#queue.length) {
      const entry = this.#queue[this.#head]!;
      this.#queue[this.#head++] = undefined;
      this.#bytes -= entry.data.byteLength;
      if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
        this.#queue = this.#queue.slice(this.#head);
        this.#head = 0;
      }
      if (js !== undefined) {
        // The caller asks for the next value: what it took before is
        // handled. Acknowledged in batches (or before waiting, below).
        if (js.unacked.size >= ACK_EVERY) this.#ackTaken();
        js.taken = entry.sseq!;
        js.unacked.set(entry.sseq!, entry.ack!);
      }
      const value = this.#open(entry);
      if (js !== undefined && this.pending < this.#capacity / 2) this.#pump();
      if (value !== undefined) return value;
    }
    // Nothing left to take: acknowledge before waiting (or ending).
    this.#ackTaken();
    if (this.#failure !== undefined) throw this.#failure;
    if (this.#ended) {
      throw new ChannelClosedError(
        "Cannot receive on NATS channel: every sender is closed",
      );
    }
    const closed = this.#link.closedError;
    if (closed !== undefined) throw closed;
    return undefined;
  }

  /**
   * Reads one entry: its value, or `undefined` for an end-of-stream marker
   * or a stale value. A malformed one throws (with JetStream it counts as
   * taken, and is acknowledged with the rest).
   */
  #open(entry: Entry): { value: T } | undefined {
    const parsed = parse(entry.data);
    let sender = this.#senders.get(parsed.sender);
    if (sender === undefined) {
      sender = this.#track(parsed.sender, parsed.seq);
    }
    if (parsed.seq >= sender.next) {
      // A higher number than the next expected: values were lost between.
      this.#lost += parsed.seq - sender.next;
      sender.next = parsed.seq + 1;
    } else if (this.#js === undefined) {
      // Core NATS neither repeats nor reorders one connection's messages:
      // a lower number is stale.
      return undefined;
    }
    // JetStream: a lower number is a copy the stream stored twice (a
    // re-send after its duplicate window): at least once, it goes on.
    if (parsed.kind === KIND.END) {
      if (!sender.ended) {
        sender.ended = true;
        this.#live--;
      }
      if (this.#endWithSenders && this.#live === 0) this.#ended = true;
      return undefined;
    }
    return { value: decodeValue(entry.data, parsed, this.#limits) as T };
  }

  #track(id: string, seq: number): SenderState {
    if (this.#senders.size >= MAX_SENDERS) {
      for (const [known, state] of this.#senders) {
        if (state.ended) this.#senders.delete(known);
      }
      if (this.#senders.size >= MAX_SENDERS) {
        throw invalid(`more than ${MAX_SENDERS} senders are open`);
      }
    }
    const state = { next: seq, ended: false };
    this.#senders.set(id, state);
    this.#live++;
    return state;
  }

  /**
   * Takes the next value, waiting (without blocking the thread) until one
   * arrives. With JetStream, asking for a value means the values taken
   * before it are handled: they are acknowledged (in batches).
   *
   * @param options An abort signal.
   * @returns The value.
   * @throws {ChannelClosedError} Once every sender heard from is closed
   * and every value taken, or when the connection is closed for good.
   * @throws {Deno.errors.InvalidData} For a malformed message (the receiver
   * stays usable).
   *
   * @example Receive with a deadline
   * ```ts ignore
   * import { natsReceiver } from "@conduit/ipc/nats";
   *
   * await using rx = await natsReceiver<string>("words");
   * console.log(await rx.recv({ signal: AbortSignal.timeout(5000) }));
   * ```
   */
  async recv(options: NatsRecvOptions = {}): Promise<T> {
    const { signal } = options;
    for (;;) {
      signal?.throwIfAborted();
      const got = this.#take();
      if (got !== undefined) return got.value;
      this.#wake ??= Promise.withResolvers<void>();
      await abortable(this.#wake.promise, signal);
    }
  }

  /**
   * Takes a value if one is here, never waiting.
   *
   * @returns The value, or `undefined` when none has arrived.
   * @throws {ChannelClosedError} Once every sender heard from is closed
   * and every value taken.
   *
   * @example Poll
   * ```ts ignore
   * import { natsReceiver } from "@conduit/ipc/nats";
   *
   * await using rx = await natsReceiver<number>("ticks");
   * console.log(rx.tryRecv()); // undefined until a tick arrives
   * ```
   */
  tryRecv(): T | undefined {
    return this.#take()?.value;
  }

  /** Yields each value until every sender is closed. */
  [Symbol.asyncIterator](): AsyncGenerator<T> {
    return untilClosed(() => this.recv());
  }

  /**
   * The values as a stream, which ends once every sender is closed. Values
   * are taken only as the stream is read. Cancelling it closes the receiver.
   */
  get readable(): ReadableStream<T> {
    return this.#readable ??= streamUntilClosed(
      () => this.recv(),
      () => this.close(),
    );
  }

  /**
   * Closes the receiver: pending receives reject with `BadResource`; with
   * JetStream, the value taken last is acknowledged, and values fetched but
   * not taken stay in the stream for the next receiver. Lets go of the
   * connection (closing it when the receiver opened it). Idempotent.
   *
   * @returns Resolves once closed.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      this.#stop.abort();
      const wake = this.#wake;
      this.#wake = undefined;
      wake?.reject(closedError("NatsReceiver"));
      wake?.promise.catch(() => {});
      const js = this.#js;
      if (js !== undefined) {
        clearTimeout(js.timer);
        js.timer = undefined;
        await js.resetting;
        if (this.#link.up) this.#ackTaken();
        js.sub?.unsubscribe();
      }
      this.#sub?.unsubscribe();
      this.#queue = [];
      this.#head = 0;
      await this.#link.release(this.#listener);
    })();
    return this.#closing;
  }

  /** Closes the receiver ({@linkcode close}). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

// --- Opening ---

async function openReceiver<T>(
  link: Link,
  subject: string,
  options: NatsReceiverOptions,
): Promise<NatsReceiver<T>> {
  const jsOptions = jetstreamOptions(options.jetstream);
  if (jsOptions === undefined) {
    const receiver = new NatsReceiver<T>(link, subject, options, undefined);
    // The subscription is on the server before anyone is told to send.
    await link.nc.flush();
    return receiver;
  }
  const capacity = checkCapacity(options.capacity, "open NATS receiver");
  const jsm = await link.nc.jetstreamManager();
  const ref = await ensureStream(jsm, subject, jsOptions.stream);
  const spec: ConsumerSpec = {
    subject,
    durable: jsOptions.durable ?? "receiver",
    maxAckPending: Math.max(1000, capacity * 4),
    ackWaitMs: jsOptions.ackWait ?? 30_000,
  };
  const receiver = new NatsReceiver<T>(link, subject, options, {
    jsm,
    ref,
    spec,
  });
  try {
    await receiver._start();
  } catch (error) {
    await receiver.close();
    throw error;
  }
  return receiver;
}

async function openSender<T>(
  link: Link,
  subject: string,
  options: NatsSenderOptions,
): Promise<NatsSender<T>> {
  const capacity = checkCapacity(options.capacity, "open NATS sender");
  const jsOptions = jetstreamOptions(options.jetstream);
  let stored: Stored | undefined;
  if (jsOptions !== undefined) {
    const jsm = await link.nc.jetstreamManager();
    stored = { ref: await ensureStream(jsm, subject, jsOptions.stream), jsm };
  }
  return new NatsSender<T>(link, subject, capacity, stored);
}

async function withLink<R>(
  options: NatsConnectOptions,
  open: (link: Link) => Promise<R>,
): Promise<R> {
  const link = await Link.open(options);
  try {
    return await open(link);
  } catch (error) {
    await link.abandon();
    throw error;
  }
}

/**
 * Opens the sending end of a channel on `subject`.
 *
 * @typeParam T The message type.
 * @param subject The NATS subject, such as `"orders.eu"` (no wildcards).
 * @param options The server, JetStream, capacity.
 * @returns The sender.
 * @throws {TypeError} For an invalid subject.
 *
 * @example A producer on one machine
 * ```ts ignore
 * import { natsSender } from "@conduit/ipc/nats";
 *
 * await using tx = await natsSender<{ id: number }>("orders", {
 *   servers: "nats.example.com:4222",
 *   jetstream: true,
 * });
 * for (let id = 0; id < 10; id++) await tx.send({ id });
 * ```
 */
export function natsSender<T>(
  subject: string,
  options: NatsSenderOptions = {},
): Promise<NatsSender<T>> {
  try {
    checkSubject(subject, "open NATS sender");
    checkCapacity(options.capacity, "open NATS sender");
  } catch (error) {
    return Promise.reject(error);
  }
  return withLink(options, (link) => openSender<T>(link, subject, options));
}

/**
 * Opens the receiving end of a channel on `subject`. With core NATS, the
 * subscription is on the server when this resolves: values sent after that
 * arrive.
 *
 * @typeParam T The message type.
 * @param subject The NATS subject (no wildcards).
 * @param options The server, JetStream, capacity.
 * @returns The receiver.
 * @throws {TypeError} For an invalid subject, or a durable consumer that
 * reads another subject.
 *
 * @example A consumer on another machine
 * ```ts ignore
 * import { natsReceiver } from "@conduit/ipc/nats";
 *
 * await using rx = await natsReceiver<{ id: number }>("orders", {
 *   servers: "nats.example.com:4222",
 *   jetstream: { durable: "billing" },
 * });
 * for await (const order of rx) console.log(order.id);
 * ```
 */
export function natsReceiver<T>(
  subject: string,
  options: NatsReceiverOptions = {},
): Promise<NatsReceiver<T>> {
  try {
    checkSubject(subject, "open NATS receiver");
    checkCapacity(options.capacity, "open NATS receiver");
    resolveLimits(options.limits, "open NATS receiver");
  } catch (error) {
    return Promise.reject(error);
  }
  return withLink(options, (link) => openReceiver<T>(link, subject, options));
}

/**
 * Opens both ends of a channel on `subject`, on one connection (closed
 * when both ends are). The receiver is ready before the sender exists.
 *
 * @typeParam T The message type.
 * @param subject The NATS subject (no wildcards).
 * @param options The server, JetStream, capacity.
 * @returns The sender and the receiver.
 *
 * @example Round trip through the server
 * ```ts ignore
 * import { natsChannel } from "@conduit/ipc/nats";
 *
 * const [tx, rx] = await natsChannel<bigint>("big", { jetstream: true });
 * await tx.send(2n ** 100n);
 * console.log(await rx.recv()); // 1267650600228229401496703205376n
 * await tx.close();
 * await rx.close();
 * ```
 */
export function natsChannel<T>(
  subject: string,
  options: NatsChannelOptions = {},
): Promise<[NatsSender<T>, NatsReceiver<T>]> {
  try {
    checkSubject(subject, "open NATS channel");
    checkCapacity(options.capacity, "open NATS channel");
    resolveLimits(options.limits, "open NATS channel");
  } catch (error) {
    return Promise.reject(error);
  }
  return withLink(options, async (link) => {
    const receiver = await openReceiver<T>(link, subject, options);
    try {
      return [await openSender<T>(link, subject, options), receiver];
    } catch (error) {
      await receiver.close();
      throw error;
    }
  });
}

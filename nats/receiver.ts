/**
 * {@linkcode NatsReceiver}, the receiving end of a NATS channel.
 *
 * @module
 */

import {
  createInbox,
  type JetStreamManager,
  type Msg,
  type Subscription,
} from "nats";
import {
  ChannelClosedError,
  streamUntilClosed,
  untilClosed,
} from "../_channel_error.ts";
import {
  type DecodeLimits,
  DEFAULT_LIMITS,
  resolveLimits,
} from "../channel/_codec_limits.ts";
import type { Link, LinkListener } from "./_link.ts";
import {
  type ConsumerSpec,
  isRefusal,
  pull,
  resetConsumer,
  RETRY_MS,
  type StreamRef,
  streamSeqOf,
} from "./_jetstream.ts";
import { decodeValue, KIND, parse } from "./_wire.ts";
import { abortReason, pause } from "./_abort.ts";
import { checkCapacity, checkMaxPending, closedError } from "./_checks.ts";
import { inspectEndpoint } from "../_inspect.ts";
import type { NatsReceiverOptions, NatsRecvOptions } from "./options.ts";
import { startReceiver } from "./_keys.ts";

const DEFAULT_MAX_PENDING_BYTES = 64 << 20;
/**
 * The most senders a receiver keeps track of at once; past it, the one
 * silent longest is forgotten.
 */
const MAX_SENDERS = 4096;
/** How long a pull request for JetStream values waits on the server. */
const PULL_EXPIRES_MS = 5_000;
/** A receiver acknowledges at least every this many values taken. */
const ACK_EVERY = 64;

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
  /**
   * JetStream only: which of the last {@linkcode SEEN_WINDOW} sequence
   * numbers below `next` were taken (1) or skipped as lost (0), by
   * `seq % SEEN_WINDOW`, so that a copy the stream stored twice is dropped
   * and a late value that fills a gap is delivered.
   */
  seen?: Uint8Array;
}

/** How many recent sequence numbers of a JetStream sender are remembered. */
const SEEN_WINDOW = 8192;

/**
 * What a held value costs beyond its bytes (the message, its entry and
 * its view, measured at about 260 bytes), counted against
 * `maxPendingBytes`: empty values from a publisher are not free.
 */
const ENTRY_OVERHEAD = 256;

/** A receive waiting for a value: settled with nothing, or an error. */
interface Waiter {
  settle(error?: unknown): void;
}

/**
 * The receiving end of a NATS channel, from {@linkcode natsReceiver} or
 * {@linkcode natsChannel}.
 *
 * Its `limits` property (a {@linkcode DecodeLimits}) bounds what decoding
 * one value may build, as on a local channel's `Receiver`.
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
  /**
   * Receives waiting for a value: each leaves the set when woken or given
   * up, so an abandoned wait holds nothing (a shared promise would keep a
   * reaction of every abandoned wait until a value came).
   */
  #waiters = new Set<Waiter>();
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

  /** @ignore Use {@linkcode natsReceiver} or {@linkcode natsChannel}. */
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
    this.#maxPendingBytes = checkMaxPending(
      options.maxPendingBytes,
      DEFAULT_MAX_PENDING_BYTES,
      "open NATS receiver",
    );
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

  /**
   * Shows the subject, the state, the connection's state, whether values
   * come from JetStream, the senders heard from, the values waiting, and
   * the values lost or dropped when there are any, as `NatsReceiver {
   * subject: "jobs", state: "open", connection: "up", jetstream: false,
   * senders: 1, pending: 0 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    if (this.#closed) {
      return inspectEndpoint(
        "NatsReceiver",
        { subject: this.#subject, state: "closed" },
        inspect,
        options,
      );
    }
    const fields: Record<string, unknown> = {
      subject: this.#subject,
      state: "open",
      connection: this.#link.state,
      jetstream: this.#js !== undefined,
      senders: this.#live,
      pending: this.pending,
    };
    if (this.#lost > 0) fields.lost = this.#lost;
    if (this.#dropped > 0) fields.dropped = this.#dropped;
    return inspectEndpoint("NatsReceiver", fields, inspect, options);
  }

  /** @ignore Resolves once the consumer is ready (JetStream). */
  async [startReceiver](): Promise<void> {
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
    this.#bytes += entry.data.byteLength + ENTRY_OVERHEAD;
    this.#notify();
  }

  #notify(): void {
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const waiter of waiters) waiter.settle();
  }

  /** Resolves at the next value or end; rejects when `signal` aborts. */
  #waitForValue(signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.#waiters.delete(waiter);
        reject(abortReason(signal!));
      };
      const waiter: Waiter = {
        settle(error?: unknown) {
          signal?.removeEventListener("abort", onAbort);
          if (error === undefined) resolve();
          else reject(error);
        },
      };
      this.#waiters.add(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  #onCore(msg: Msg): void {
    const data = msg.data;
    // A value into an empty receiver is always taken: the bound is on what
    // waits behind it.
    if (
      this.#queue.length > this.#head &&
      this.#bytes + data.byteLength + ENTRY_OVERHEAD > this.#maxPendingBytes
    ) {
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
            // A TypeError names the argument at fault already (a consumer
            // that reads another subject); the server's refusals say what.
            this.#failure = error instanceof TypeError ? error : new Error(
              `Cannot receive on NATS channel: consumer ${js.spec.durable} of stream ${js.ref.stream} cannot be made (again): ${
                (error as Error)?.message ?? error
              }`,
              { cause: error },
            );
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
    const sseq = streamSeqOf(msg.reply);
    // A status from the server has no stored message's ack subject; a
    // stored message with a status line (a publisher can forge one) is a
    // value that does not decode, taken and acknowledged like one.
    if (code !== 0 && msg.data.byteLength === 0 && sseq === undefined) {
      // 100: heartbeat; 404/408: the request is over. A consumer deleted
      // under the receiver (409 "Consumer Deleted", or 503: no one answers
      // pull requests for it any more) is made again, as after a
      // reconnection; a stream that is gone fails recv() then. Another
      // 409 (the consumer changed or is busy): ask again after a pause,
      // not in a tight loop.
      const description = msg.headers?.description ?? "";
      if (code === 503 || (code === 409 && /deleted/i.test(description))) {
        this.#reset();
      } else if (code === 409) {
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
      this.#bytes -= entry.data.byteLength + ENTRY_OVERHEAD;
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
   * or a stale value. A malformed one, or one over the limits, throws
   * (with JetStream it counts as taken, and is acknowledged with the rest).
   * It counts as its sender's only when it is the one that sender would
   * send next, or fills a gap of a JetStream sender: a copy of it is then
   * stale, and no later value counts it as lost. Any other one changes no
   * sender's state, so a forged or corrupt message cannot add a sender or
   * move one's sequence ahead.
   */
  #open(entry: Entry): { value: T } | undefined {
    const parsed = parse(entry.data);
    const known = this.#senders.get(parsed.sender);
    if (known !== undefined && this.#stale(known, parsed.seq)) return undefined;
    let value: { value: T } | undefined;
    if (parsed.kind !== KIND.END) {
      try {
        value = { value: decodeValue(entry.data, parsed, this.#limits) as T };
      } catch (error) {
        if (known !== undefined && parsed.seq <= known.next) {
          this.#advance(known, parsed.seq);
        }
        throw error;
      }
    }
    let sender = known;
    if (sender === undefined) sender = this.#track(parsed.sender, parsed.seq);
    else {
      // Kept in the order last heard from, for #track to forget the
      // sender silent longest.
      this.#senders.delete(parsed.sender);
      this.#senders.set(parsed.sender, sender);
    }
    this.#advance(sender, parsed.seq);
    if (value === undefined) {
      if (!sender.ended) {
        sender.ended = true;
        this.#live--;
      }
      if (this.#endWithSenders && this.#live === 0) this.#ended = true;
    }
    return value;
  }

  /**
   * Whether number `seq` of `sender` is stale: core NATS neither repeats
   * nor reorders one connection's messages, so any number below the next
   * expected is; with JetStream, one the window says was taken (a copy the
   * stream stored twice, around a server restart).
   */
  #stale(sender: SenderState, seq: number): boolean {
    if (seq >= sender.next) return false;
    const seen = sender.seen;
    if (seen === undefined) return true;
    return sender.next - seq <= SEEN_WINDOW && seen[seq % SEEN_WINDOW] === 1;
  }

  /** Records number `seq` of `sender` as taken (not stale). */
  #advance(sender: SenderState, seq: number): void {
    const seen = sender.seen;
    if (seq >= sender.next) {
      // A higher number than the next expected: values were lost between.
      if (seen !== undefined) {
        if (seq - sender.next >= SEEN_WINDOW) seen.fill(0);
        else {
          for (let skipped = sender.next; skipped < seq; skipped++) {
            seen[skipped % SEEN_WINDOW] = 0;
          }
        }
        seen[seq % SEEN_WINDOW] = 1;
      }
      this.#lost += seq - sender.next;
      sender.next = seq + 1;
    } else if (seen !== undefined && sender.next - seq <= SEEN_WINDOW) {
      // JetStream: a value that arrives after later ones fills its gap.
      seen[seq % SEEN_WINDOW] = 1;
      this.#lost--;
    }
    // Older than the window: not known to be a copy; at least once, it
    // goes on.
  }

  #track(id: string, seq: number): SenderState {
    if (this.#senders.size >= MAX_SENDERS) {
      for (const [known, state] of this.#senders) {
        if (state.ended) this.#senders.delete(known);
      }
      if (this.#senders.size >= MAX_SENDERS) {
        // Senders that never sent their end (a producer that crashed, or
        // whose end marker core NATS lost): the one silent longest is
        // forgotten, as if it had ended. Were it alive, its next value
        // starts its count afresh.
        const [oldest, state] = this.#senders.entries().next().value!;
        this.#senders.delete(oldest);
        if (!state.ended) this.#live--;
      }
    }
    const state: SenderState = {
      next: seq,
      ended: false,
      seen: this.#js === undefined ? undefined : new Uint8Array(SEEN_WINDOW),
    };
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
      await this.#waitForValue(signal);
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

  /**
   * Yields each value until every sender is closed. Closing this receiver
   * (during the loop, or before it) ends the loop quietly.
   */
  [Symbol.asyncIterator](): AsyncGenerator<T> {
    return untilClosed(() => this.recv(), undefined, () => this.#closed);
  }

  /**
   * The values as a stream, which ends once every sender is closed. Values
   * are taken only as the stream is read: each read starts one receive,
   * and a receive once started takes the next value even when its read is
   * given up (a `pipeTo` aborted with `preventCancel`); that value then
   * waits in the stream, ahead of what `recv()` gets, until the stream is
   * read again. Cancelling it closes the receiver.
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
      const waiters = [...this.#waiters];
      this.#waiters.clear();
      const closed = closedError("NatsReceiver");
      for (const waiter of waiters) waiter.settle(closed);
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

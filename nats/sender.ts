/**
 * {@linkcode NatsSender}, the sending end of a NATS channel.
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
import type { Link, LinkListener } from "./_link.ts";
import {
  isRefusal,
  parsePubAck,
  RETRY_MS,
  type StreamRef,
} from "./_jetstream.ts";
import {
  encodeEnd,
  encodeValue,
  idText,
  newSenderId,
  setSeq,
} from "./_wire.ts";
import { abortable, pause } from "./_abort.ts";
import { closedError } from "./_checks.ts";
import { inspectEndpoint } from "../_inspect.ts";
import type { NatsSendOptions } from "./options.ts";

/** Where a JetStream sender's values go, and the API to ask after it. */
export interface Stored {
  ref: StreamRef;
  jsm: JetStreamManager;
}

/**
 * Bytes a JetStream value's headers take beyond the sender id, its sequence
 * number and the stream name: `NATS/1.0`, the two header names, separators
 * (`NATS/1.0\r\nNats-Msg-Id: <id>-<seq>\r\nNats-Expected-Stream:
 * <stream>\r\n\r\n`), and room for a few more digits of the sequence
 * number (values queued ahead take numbers first).
 */
const HEADER_ROOM = 56;

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
  /** Aborted by a `close()` signal: the close stops waiting. */
  #giveUpClose = new AbortController();
  /** Whether the close gave up waiting for the server. */
  #gaveUp = false;
  /** Whether the close has finished. */
  #closeDone = false;
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

  /** @ignore Use {@linkcode natsSender} or {@linkcode natsChannel}. */
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
   * Shows the subject, the state, the connection's state, whether values
   * go to JetStream and the capacity, as `NatsSender { subject: "jobs",
   * state: "open", connection: "up", jetstream: false, capacity: 256 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    const fields = this.#closed
      ? { subject: this.#subject, state: "closed" }
      : {
        subject: this.#subject,
        state: "open",
        connection: this.#link.state,
        jetstream: this.#stream !== undefined,
        capacity: this.#capacity,
      };
    return inspectEndpoint("NatsSender", fields, inspect, options);
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
    // The server's limit covers headers too: a JetStream sender's two
    // (its message id and the stream expected).
    const stream = this.#stream?.ref.stream;
    const headerRoom = stream === undefined
      ? 0
      : HEADER_ROOM + String(this.#seq + 1).length + this.#idText.length +
        stream.length;
    if (payload.byteLength + headerRoom > max) {
      throw new RangeError(
        `Cannot send on NATS channel: the value takes ${payload.byteLength} bytes${
          headerRoom > 0 ? ` (and its headers up to ${headerRoom})` : ""
        }, more than the server's max_payload of ${max}`,
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
    if (this.#closed && (!closing || this.#giveUpClose.signal.aborted)) {
      throw closedError("NatsSender");
    }
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
      for (const { seq, payload } of held) {
        try {
          nc.publish(this.#subject, payload);
        } catch (error) {
          this.#unpublished(seq, error);
        }
      }
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
    try {
      this.#link.nc.publish(this.#subject, payload, {
        reply: `${this.#ackInbox}.${seq}`,
        headers: h,
      });
    } catch (error) {
      this.#unacked.delete(seq);
      this.#unpublished(seq, error);
    }
  }

  /**
   * A value accepted earlier that the client refuses to publish now (a
   * server that came back with a smaller `max_payload`): it is lost, and
   * the sender fails with that (never an error out of the connection's
   * own event handlers).
   */
  #unpublished(seq: number, error: unknown): void {
    this.#fail(
      `value ${seq} could not be published, and is lost: ${
        (error as Error)?.message ?? error
      }`,
    );
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
   * While the server is unreachable that wait lasts until it is back (with
   * the default `maxReconnectAttempts: -1`, for good): a `signal` bounds
   * it. When it aborts, the sender stops waiting, lets go of the
   * connection, and `close()` rejects with the signal's reason: values
   * not yet at the server, and the end marker, may be lost.
   *
   * @param options A `signal` to stop waiting for the server.
   * @returns Resolves once closed.
   */
  close(options: NatsSendOptions = {}): Promise<void> {
    const { signal } = options;
    // This call's signal gives up the wait for the server (the close then
    // finishes for every caller); only this call rejects for it, and only
    // when the close had to be given up.
    let onAbort: (() => void) | undefined;
    if (signal !== undefined && !this.#closeDone) {
      onAbort = () => this.#giveUpClose.abort(signal.reason);
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
    this.#closing ??= (async () => {
      this.#closed = true;
      const giveUp = this.#giveUpClose.signal;
      try {
        await abortable(this.#tail, giveUp);
        if (this.#failure === undefined && !this.#link.closedError) {
          const end = encodeEnd(this.#id);
          await this.#enqueue(end, giveUp);
          await this.#flush(giveUp);
        }
      } catch {
        // The connection or the stream failed, or the close was given
        // up: nothing more can go out. A signal that aborts after this
        // point gave nothing up.
        this.#gaveUp = giveUp.aborted;
      } finally {
        this.#stop.abort();
        this.#ackSub?.unsubscribe();
        // Sends and flushes still waiting (for room the server will not
        // make now) reject once the close is given up.
        this.#wakeAll();
        await this.#link.release(this.#listener);
        this.#closeDone = true;
      }
    })();
    return this.#closing.then(() => {
      if (onAbort !== undefined) signal!.removeEventListener("abort", onAbort);
      if (this.#gaveUp && signal?.aborted) throw signal.reason;
    });
  }

  /** Closes the sender ({@linkcode close}). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

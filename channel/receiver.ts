/**
 * {@linkcode Receiver}: the receiving end of a channel, with one connection
 * per sender, read fairly; what arrives is checked by the frame parser
 * (`_parse.ts`) before anything acts on it.
 *
 * @module
 */

import {
  ChannelClosedError,
  CLOSED_NOW,
  streamUntilClosed,
  untilClosed,
} from "../_channel_error.ts";
import { closedError } from "../ffi/errors.ts";
import { poller } from "../ffi/poller.ts";
import { inspectEndpoint } from "../_inspect.ts";
import { checkSpin, NO_SPIN, Spinner, waitLoop } from "../ffi/spin.ts";
import { HEADER } from "../_channel_wire.ts";
import { TurnSlice, yieldTurn } from "../_turn.ts";
import { type DecodeLimits, resolveLimits } from "./_codec_limits.ts";
import type { Connection } from "./_connection.ts";
import { Inbox, type Polled } from "./_inbox.ts";
import {
  beginMove,
  endMove,
  lastBytes,
  lookFull,
  pollOnce,
  receiverMode,
  waitReady,
} from "./_keys.ts";
import { FrameParser } from "./_parse.ts";
import { Sender } from "./sender.ts";
import { type EndpointKind, endpointKind, releaseFd } from "../_keys.ts";

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

/**
 * The parser of every receiver's frames; it makes their channel ends.
 * Made with the first receiver: the modules it needs import this one.
 */
let frames: FrameParser | undefined;

function makeFrames(): FrameParser {
  return new FrameParser({
    sender: (fd, capacity, mode) => new Sender(fd, capacity, mode),
    receiver: (conns, mode) => new Receiver(conns, mode),
  });
}

function recvClosed(): ChannelClosedError {
  return new ChannelClosedError(
    "Cannot receive on channel: every sender is closed",
  );
}

/** A look's message, or the error of a receiver whose senders are gone. */
function valueOf<T>(polled: Polled<T>): T {
  if (polled.kind !== "value") throw recvClosed();
  return polled.value;
}

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
 * What one message may be is set on the receiver, in two properties:
 * `maxMessageBytes` (default 1 GiB) bounds its size, and `limits` (a
 * {@linkcode DecodeLimits}) what decoding it may build. A message beyond
 * them fails its `recv()` with `InvalidData` and drops its sender.
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
  #in: Inbox;
  #closed = false;
  /** Closed by this program's close(), not by being sent away. */
  #closedHere = false;
  #moving = false;
  /** Receives that wait (spin or park), not yet done. */
  #pending = 0;
  #readable: ReadableStream<T> | undefined;
  #spinner = new Spinner();
  /** Messages handed out without waiting since the last turn. */
  #slice = new TurnSlice();

  /**
   * @ignore Use {@linkcode channel} or `fromFd()`. `mode` is the channel's
   * mode, where the maker knows it: the receiver refuses frames of the
   * other kind.
   */
  constructor(conns: Connection[], mode?: number) {
    this.#in = new Inbox(conns, frames ??= makeFrames(), mode);
  }

  /** The first connection's socket, for interop; the receiver owns it. */
  get rawFd(): number {
    this.#assertOpen();
    const conns = this.#in.conns;
    if (conns.length === 0) {
      throw new ChannelClosedError(
        "Cannot get fd of Receiver: every sender is closed",
      );
    }
    return conns[0].fd.fd;
  }

  /** Whether {@linkcode close} was called (or the receiver was sent). */
  get closed(): boolean {
    return this.#closed;
  }

  /** How many sender connections are open (for diagnostics). */
  get senders(): number {
    return this.#in.conns.length;
  }

  /**
   * The largest message this receiver takes, in bytes (default 1 GiB). A
   * larger one fails with `InvalidData` and drops its sender.
   */
  get maxMessageBytes(): number {
    return this.#in.maxMessage;
  }

  set maxMessageBytes(value: number) {
    if (!Number.isInteger(value) || value < HEADER) {
      throw new RangeError(
        `Cannot set maxMessageBytes: must be an integer of at least ${HEADER}, got ${value}`,
      );
    }
    this.#in.maxMessage = value;
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
    return this.#in.limits;
  }

  set limits(value: DecodeLimits) {
    this.#in.limits = resolveLimits(value, "set limits of Receiver");
  }

  /**
   * Shows the kind, the first connection's fd, the state and how many
   * sender connections are open, as
   * `Receiver { fd: 8, state: "open", senders: 2 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    const conns = this.#in.conns;
    const fields = this.#closed
      ? { state: "closed" }
      : conns.length === 0
      ? { state: "open", senders: 0 }
      : { ...conns[0].fd.state(), senders: conns.length };
    return inspectEndpoint("Receiver", fields, inspect, options);
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
   * macrotask turn every 1,024 messages or 2 ms, so timers and other I/O
   * still run while a fast peer keeps the receiver busy; so does a
   * `for await` loop over the receiver.
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
  recv(options: ChannelRecvOptions = {}): Promise<T> {
    let signal: AbortSignal | undefined;
    let spinner: Spinner;
    let armed: boolean;
    try {
      ({ signal } = options);
      spinner = options.spin === undefined
        ? this.#spinner
        : new Spinner(checkSpin(options.spin, "Cannot receive on channel"));
      this.#assertOpen();
      signal?.throwIfAborted();
      // A message that is here already needs no wait loop. While receives
      // wait, a later one waits behind them without a look or a spin (its
      // wait is woken after theirs), so messages go out in call order.
      // After waits that went unanswered for long (paced traffic), the wait
      // is armed at once instead: its direct poll still sees a frame that
      // is there.
      armed = this.#pending > 0 || (spinner.resting && this.#in.armFirst);
      if (this.#pending > 0) spinner = NO_SPIN;
      if (!armed) {
        const ready = this[pollOnce]();
        if (ready.kind === "value") {
          return this.#slice.delivered(this.#in.lastBytes)
            ? yieldTurn().then(() => ready.value)
            : Promise.resolve(ready.value);
        }
        if (ready.kind === "closed") throw recvClosed();
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#waitFor(spinner, signal);
  }

  /**
   * The rest of a receive whose look found nothing (or that armed its wait
   * first): spin, then wait, until a message or the end comes. A wake-up
   * looks again from the poller's dispatch (see {@linkcode waitLoop}).
   */
  #waitFor(
    spinner: Spinner,
    signal: AbortSignal | undefined,
  ): Promise<T> {
    this.#pending++;
    let parked = false;
    const turns = poller().turns;
    return waitLoop<Polled<T>, T>(
      () => {
        const polled = this[pollOnce]();
        return polled.kind === "empty" ? undefined : polled;
      },
      (ready, fail) => {
        // Whether the receiver is still open and the wait still wanted.
        const resume = () => {
          try {
            signal?.throwIfAborted();
            this.#assertOpen();
          } catch (error) {
            return fail(error);
          }
          ready();
        };
        if (this.#in.full) {
          // Frames are still queued: take a macrotask turn, then read on.
          yieldTurn().then(resume);
          return;
        }
        this.#in.waitThen(signal, () => {
          parked = true;
          resume();
        }, (error) => {
          // Another call's look took the end of stream and closed the
          // connection this wait was on: look again, to find the end.
          if (!this.#closed && error instanceof Deno.errors.BadResource) {
            return queueMicrotask(resume);
          }
          fail(error);
        });
      },
      spinner,
      // The look in recv() found nothing: go straight to the spin.
      true,
      (polled) => {
        // A wait that let the event loop turn starts a new slice; one whose
        // poll found the frame there at once did not.
        if (parked && poller().turns !== turns) this.#slice.waited();
        else if (
          polled.kind === "value" && this.#slice.delivered(this.#in.lastBytes)
        ) {
          return yieldTurn().then(() => valueOf(polled));
        }
        return valueOf(polled);
      },
      () => this.#pending--,
    );
  }

  /**
   * Takes a message if one is ready, never waiting. A message goes to the
   * call that looks first: made while a `recv()` is pending, `tryRecv()` may
   * take the message that would have ended that wait.
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
    const polled = this[pollOnce]();
    if (polled.kind === "value") return polled.value;
    if (polled.kind === "closed") throw recvClosed();
    return undefined;
  }

  /**
   * @ignore One look at the connections, never waiting: the first
   * message found, "closed" when no connection is left, else "empty".
   */
  [pollOnce](): Polled<T> {
    return this.#in.poll() as Polled<T>;
  }

  /** @ignore The size of the last message taken, its memfd's included. */
  get [lastBytes](): number {
    return this.#in.lastBytes;
  }

  /** @ignore Waits until some connection may have something. */
  [waitReady](signal?: AbortSignal): Promise<void> {
    return this.#in.wait(signal);
  }

  /** @ignore Whether the last look stopped with frames still queued. */
  [lookFull](): boolean {
    return this.#in.full;
  }

  /**
   * Yields each message until every sender is closed. Closing this
   * receiver (during the loop, or before it) ends the loop quietly, as a
   * socket's loop ends.
   */
  [Symbol.asyncIterator](): AsyncGenerator<T> {
    return untilClosed(
      () => this.recv(),
      () => this.#next(),
      () => this.#closedHere,
    );
  }

  /**
   * The next message for `for await`: what is here already comes without
   * the promise of a `recv()` (the value itself, or `CLOSED_NOW` at the
   * end); otherwise, or when other receives are pending, a `recv()`.
   */
  #next(): T | typeof CLOSED_NOW | Promise<T> {
    if (
      this.#closed || this.#moving || this.#pending > 0 ||
      (this.#spinner.resting && this.#in.armFirst)
    ) {
      return this.recv();
    }
    const ready = this[pollOnce]();
    if (ready.kind === "value") {
      if (!this.#slice.delivered(this.#in.lastBytes)) return ready.value;
      return yieldTurn().then(() => ready.value);
    }
    if (ready.kind === "closed") return CLOSED_NOW;
    // The look found nothing: the wait goes on from there.
    return this.#waitFor(this.#spinner, undefined);
  }

  /**
   * The messages as a stream, which ends once every sender is closed.
   * Messages are taken only as the stream is read: each read starts one
   * receive, and a receive once started takes the next message even when
   * its read is given up (a `pipeTo` aborted with `preventCancel`); that
   * message then waits in the stream, ahead of what `recv()` gets, until
   * the stream is read again. Cancelling it closes the receiver.
   */
  get readable(): ReadableStream<T> {
    return this.#readable ??= streamUntilClosed(
      () => this.recv(),
      () => this.close(),
    );
  }

  /** Lets pending receives keep the process alive (the default). */
  ref(): void {
    this.#in.ref();
  }

  /** Lets the process exit while a receive is pending. */
  unref(): void {
    this.#in.unref();
  }

  /**
   * Closes the receiver: every sender's next send throws
   * {@linkcode ChannelClosedError}; pending receives reject with
   * `BadResource`. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closedHere = true;
    this.#shut();
  }

  #shut(): void {
    this.#closed = true;
    this.#in.close();
  }

  /** Closes the receiver. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @ignore The channel's mode, when this receiver knows it. */
  get [receiverMode](): number | undefined {
    return this.#in.mode;
  }

  /** @ignore Connections to send along; the receiver is frozen meanwhile. */
  [beginMove](): readonly Connection[] {
    this.#assertOpen();
    if (this.#pending > 0) {
      throw new Deno.errors.Busy(
        "Cannot send Receiver: a recv() on it is pending",
      );
    }
    this.#moving = true;
    return this.#in.conns;
  }

  /** @ignore The move is over: sent (close this copy) or given up. */
  [endMove](sent: boolean): void {
    this.#moving = false;
    // Sent away is no close() of this program's: a loop over it fails.
    if (sent && !this.#closed) this.#shut();
  }

  /** @ignore The kind of endpoint this is. */
  get [endpointKind](): EndpointKind {
    return "Receiver";
  }

  /** @ignore Gives up the first connection's fd (a one-sender receiver). */
  [releaseFd](): number {
    this.#assertOpen();
    const conns = this.#in.conns;
    if (conns.length !== 1) {
      throw new TypeError(
        `Cannot release Receiver: it has ${conns.length} sender connections, not one`,
      );
    }
    if (conns[0].batch !== undefined) {
      throw new Deno.errors.Busy(
        "Cannot release Receiver: it holds messages that were not taken",
      );
    }
    const fd = this.#in.release();
    this.#closed = true;
    return fd;
  }
}

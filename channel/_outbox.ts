/**
 * The delivery of a sender's frames: credit-based flow control (a credit
 * per message the receiver has room for, given back by its
 * acknowledgements), the batch that gathers the sends of one turn, and the
 * queue of sends that wait for credit or room, sent by a pump that spins
 * and then parks.
 *
 * @module
 */

import { ChannelClosedError, invalid } from "../_channel_error.ts";
import type { OwnedFd } from "../ffi/fd.ts";
import { ERRNO, type SystemError } from "../ffi/errors.ts";
import {
  cancelBeforeSpin,
  runBeforeSpin,
  Spinner,
  untilReady,
} from "../ffi/spin.ts";
import { closeAll, receiveMessage } from "../_scm.ts";
import {
  FRAME,
  getU32,
  HEADER,
  header,
  INLINE_MAX,
  putU32,
  RECORD_PREFIX,
  REFUSAL,
  sendFrame,
  VERSION,
  writeHeader,
} from "../_channel_wire.ts";
import { TurnSlice, yieldTurn } from "../_turn.ts";
import { burstStarted, currentTick, idleSince } from "./_burst.ts";
import { isGone, MAX_ADDED, MAX_CONNECTIONS } from "./_connection.ts";
import { batchable, type Frame, partsOf } from "./_frame.ts";

/** Acknowledgements one look at a sender reads at most. */
const ACK_BUDGET = 64;

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

/** What one sender has on its way to the receiver, and its credits. */
export class Outbox {
  #fd: OwnedFd;
  #capacity: number;
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
  #spinner = new Spinner();
  /** Sends resolved without waiting since the last turn. */
  #slice = new TurnSlice();
  #ackBuf = new Uint8Array(new ArrayBuffer(64));
  /** Runs when the pump stops with nothing left to send. */
  #idle: () => void;

  constructor(fd: OwnedFd, capacity: number, idle: () => void) {
    this.#fd = fd;
    this.#capacity = capacity;
    this.#credits = capacity;
    this.#idle = idle;
  }

  /** Why every later send fails, once the channel is over for the sender. */
  get failed(): unknown {
    return this.#failed;
  }

  /** Whether the pump runs. */
  get pumping(): boolean {
    return this.#pumping;
  }

  /**
   * Sends `frame` now, gathers it into the batch, or queues it until there
   * is credit and room.
   */
  send(
    frame: Frame,
    signal: AbortSignal | undefined,
    spinner: Spinner | undefined,
  ): Promise<void> {
    if (this.#queue.length === 0) {
      // Nothing waits for room: the frame goes now, or joins the batch.
      try {
        if (this.#sendNow(frame)) return this.#resolved();
      } catch (error) {
        frame.abandon();
        return Promise.reject(this.#sendError(error));
      }
    }
    return this.#enqueue(frame, signal, spinner);
  }

  /**
   * The sender closes: queued sends reject with `error`, the batch goes
   * (through the pump if it must wait).
   */
  close(error: unknown): void {
    for (const out of this.#queue.splice(0)) {
      out.frame.abandon();
      out.waiter.reject(error);
    }
    this.#flushBatch();
    if (!this.pending()) this.#stopPump?.abort();
  }

  /** Sends the batch if it can, without waiting (before giving up the fd). */
  drainNow(): void {
    if (this.#accepted > 0) this.#drain();
  }

  /** Whether anything waits to go out. */
  pending(): boolean {
    return this.#accepted > 0 || this.#queue.length > 0;
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
    this.#lastSend = currentTick();
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
    if (!idleSince(this.#lastSend)) return false;
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
        if (!this.pending()) this.#stopPump?.abort();
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
      while (this.pending() && !stop.signal.aborted) {
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
      if (this.pending()) this.#pump();
      else this.#idle();
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
    if ((error as Partial<SystemError>)?.errno === ERRNO.ETOOMANYREFS) {
      return new RangeError(
        "Cannot send on channel: too many fds are in flight (ETOOMANYREFS)",
        { cause: error },
      );
    }
    return error;
  }
}

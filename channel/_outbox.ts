/**
 * The delivery of a sender's frames: credit-based flow control (a credit
 * per message the receiver has room for, given back by its
 * acknowledgements), the batch that gathers the sends of one turn, and the
 * sends that wait for credit or room, queued in the module's one send queue
 * ({@linkcode CallQueue}), which spins and then parks.
 *
 * @module
 */

import { ChannelClosedError, invalid } from "../_channel_error.ts";
import { poller } from "../ffi/poller.ts";
import type { OwnedFd } from "../ffi/fd.ts";
import { ERRNO, type SystemError } from "../ffi/errors.ts";
import { cancelBeforeSpin, runBeforeSpin, Spinner } from "../ffi/spin.ts";
import { CallQueue, type QueuedCall, type QueueHost } from "../_call_queue.ts";
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
import { afterIdleTicks } from "./_burst.ts";
import { heardMark } from "../ffi/_turns.ts";
import { isGone, MAX_ADDED, MAX_CONNECTIONS } from "./_connection.ts";
import { batchable, type Frame, partsOf, sendAlone } from "./_frame.ts";

/** Acknowledgements one look at a sender reads at most. */
const ACK_BUDGET = 64;
/**
 * Frames with fds (memfds, endpoints) one sender has in flight at most,
 * whatever its capacity: the kernel counts every fd in flight against the
 * sending user's fd limit (ETOOMANYREFS beyond it, for all of that user's
 * processes), so a few senders of large messages at a capacity of 1024
 * would exhaust a limit of 1024. The receiver acknowledges each such frame
 * as it takes it.
 */
const FD_WINDOW = 64;

function sendClosed(cause?: unknown): ChannelClosedError {
  return new ChannelClosedError(
    "Cannot send on channel: the receiver is closed, or dropped this sender (after a malformed message from it, or one over its limits)",
    cause === undefined ? undefined : { cause },
  );
}

function refused(why: number): ChannelClosedError {
  return new ChannelClosedError(
    why === REFUSAL.PER_SENDER
      ? `Cannot send on channel: the receiver refused this sender: the sender it was cloned from already added ${MAX_ADDED} open senders`
      : why === REFUSAL.THREAD_FULL
      ? "Cannot send on channel: the receiver refused this sender: the receivers of its process (or Worker) hold as many senders that peers added as they take"
      : why === REFUSAL.FULL
      ? `Cannot send on channel: the receiver refused this sender: it already holds ${MAX_CONNECTIONS} senders`
      : `Cannot send on channel: the receiver refused this sender (reason ${why}, which this version does not know)`,
  );
}

/**
 * An entry of the send queue: a send that waits for credit or room, or,
 * with no frame, the batch itself when it waits for room with no send
 * queued (its sends resolved already).
 */
interface Outbound extends QueuedCall<void> {
  frame: Frame | undefined;
  signal: AbortSignal | undefined;
  /** The spin this send asked for, if any. */
  spinner: Spinner | undefined;
  /** Why the packet it went in failed, if it did: `done()` throws it. */
  error: unknown;
}

/** Where sending the batch stopped: all out, no room, or failed. */
type BatchState = "done" | "write" | "failed";

/** What the batch's own queue entry settles with: nobody waits for it. */
function ignore(): void {}

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
  #queue: CallQueue<Outbound, void>;
  /** Sends in `#queue` (the batch's own entry not counted). */
  #waiting = 0;
  /** What the queue waits for: acks (`"read"`) or room (`"write"`). */
  #blocked: "read" | "write" = "write";
  /** A burst of sends is under way: later sends of the turn are gathered. */
  #burst = false;
  /** Sends so far, and at the last look for the end of the burst. */
  #sends = 0;
  #sendsLooked = 0;
  /** `heardMark()` at the last send. */
  #mark = -1;
  /** Why every later send fails (the receiver went away under a batch). */
  #failed: unknown = undefined;
  /** Sends resolved without waiting since the last turn. */
  #slice = new TurnSlice();
  #ackBuf = new Uint8Array(new ArrayBuffer(64));
  /** Messages acknowledged so far. */
  #acked = 0;
  /**
   * The numbers (messages sent before each) of the frames with fds still
   * in flight, a ring of `#fdCount` from `#fdHead`; made at the first.
   */
  #fdSent: Float64Array | undefined;
  #fdHead = 0;
  #fdCount = 0;
  /** Runs when the queue is left with nothing to send. */
  #idle: () => void;

  constructor(fd: OwnedFd, capacity: number, idle: () => void) {
    this.#fd = fd;
    this.#capacity = capacity;
    this.#credits = capacity;
    this.#idle = idle;
    const host: QueueHost<Outbound, void> = {
      advance: (jobs) => this.#advance(jobs),
      park: (_head, signal) => this.#park(signal),
      done: (job) => this.#done(job),
      failed: (job, error) => this.#failedEntry(job, error),
    };
    this.#queue = new CallQueue(host, new Spinner());
  }

  /** Why every later send fails, once the channel is over for the sender. */
  get failed(): unknown {
    return this.#failed;
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
    if (this.#waiting === 0) {
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
   * (through the queue if it must wait).
   */
  close(error: unknown): void {
    this.#queue.cancel(error);
    this.#flushBatch();
  }

  /** Sends the batch if it can, without waiting (before giving up the fd). */
  drainNow(): void {
    if (this.#accepted === 0) return;
    if (this.#queue.length === 0) this.#flushBatch();
    else this.#queue.tryNow();
  }

  /** Whether anything waits to go out. */
  pending(): boolean {
    return this.#accepted > 0 || this.#waiting > 0;
  }

  /** A resolved send; after a slice of sends without waiting, a turn first. */
  #resolved(): Promise<void> {
    // Sends with a turn of the event loop between them (a reply awaited,
    // an ack, a timer) are no run of sends that starves it: the slice
    // starts over then.
    return this.#slice.delivered() ? yieldTurn() : Promise.resolve();
  }

  /**
   * Sends `frame` at once or adds it to the batch. Returns false when it
   * has to wait (no credit, or the socket is full).
   */
  #sendNow(frame: Frame): boolean {
    // A send made after this thread heard from a peer (a message taken, a
    // wake-up) is a request or a reply: with nothing gathered before it, it
    // leaves at once, alone, even during a burst.
    const mark = heardMark();
    const heard = mark !== this.#mark;
    this.#mark = mark;
    this.#sends++;
    if (!this.#burst) {
      // The first send of a burst leaves at once: a lone message never
      // waits for the turn.
      this.#burst = true;
      this.#sendsLooked = this.#sends;
      afterIdleTicks(this.#burstEnds);
      if (this.#accepted === 0) return this.#trySend(frame);
    } else if (heard && this.#accepted === 0) {
      return this.#trySend(frame);
    }
    if (!batchable(frame)) {
      // Fds and memfds travel alone, after what was gathered before them.
      if (this.#accepted > 0 && this.#sendBatchOrThrow() !== "done") {
        return false;
      }
      return this.#trySend(frame);
    }
    const bytes = RECORD_PREFIX + frame.size;
    if (this.#accepted > 0 && this.#batchEnd + bytes > INLINE_MAX) {
      // The batch is full: it goes now, this frame starts the next one.
      if (this.#sendBatchOrThrow() !== "done") return false;
    }
    if (this.#credits === this.#accepted) {
      this.#takeAcks();
      if (this.#credits === this.#accepted) {
        // Out of credit: what was gathered goes now, so that the receiver
        // can take it and acknowledge.
        if (this.#accepted > 0) this.#sendBatchOrThrow();
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
    const fds = frame.fds.length > 0;
    if (fds && !this.#fdRoom()) {
      this.#takeAcks();
      if (!this.#fdRoom()) return false;
    }
    if (!sendAlone(this.#fd.fd, frame)) return false;
    if (fds) this.#fdWent();
    this.#credits--;
    frame.sent();
    return true;
  }

  /** Whether a frame with fds may go: fewer than FD_WINDOW in flight. */
  #fdRoom(): boolean {
    const sent = this.#fdSent;
    if (sent === undefined) return true;
    // A frame is taken once the acknowledgements count past it.
    while (this.#fdCount > 0 && sent[this.#fdHead] < this.#acked) {
      this.#fdHead = (this.#fdHead + 1) % FD_WINDOW;
      this.#fdCount--;
    }
    return this.#fdCount < FD_WINDOW;
  }

  /** A frame with fds went (before its credit is taken). */
  #fdWent(): void {
    const sent = this.#fdSent ??= new Float64Array(FD_WINDOW);
    sent[(this.#fdHead + this.#fdCount) % FD_WINDOW] = this.#acked +
      this.#capacity - this.#credits;
    this.#fdCount++;
  }

  /**
   * A look for the end of the burst, IDLE_TICKS turns after the last: no
   * send since, the batch goes; else another look as many turns later.
   */
  #burstEnds = (): void => {
    if (this.#sends !== this.#sendsLooked) {
      this.#sendsLooked = this.#sends;
      afterIdleTicks(this.#burstEnds);
      return;
    }
    this.#burst = false;
    this.#flushBatch();
  };

  /**
   * Sends what resolved sends left behind; if the socket is full, the queue
   * sends it once there is room (ahead of any send queued).
   */
  #flushBatch = (): void => {
    if (this.#accepted === 0) return;
    const state = this.#sendBatch();
    if (state === "failed") this.#queue.cancel(this.#failed);
    else if (state === "write" && this.#queue.length === 0) this.#queueBatch();
  };

  #sendBatchOrThrow(): BatchState {
    const state = this.#sendBatch();
    if (state === "failed") {
      this.#queue.cancel(this.#failed);
      throw this.#failed;
    }
    return state;
  }

  /**
   * Sends the gathered batch (its credits are held). A failure ends the
   * channel for this sender.
   */
  #sendBatch(): BatchState {
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
      this.#end(error);
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

  /** The batch waits for room with nothing queued: it gets an entry. */
  #queueBatch(): void {
    this.#queue.push({
      frame: undefined,
      signal: undefined,
      spinner: undefined,
      error: undefined,
      resolve: undefined,
      reject: undefined,
      onAbort: undefined,
    }).then(undefined, ignore);
  }

  /**
   * The channel is over for this sender: the batch is dropped, and this
   * and every later send fail with the reason returned. (Sends still
   * queued fail as the queue reaches them, or by `cancel`.)
   */
  #end(error: unknown): unknown {
    const reason = this.#sendError(error);
    this.#failed = reason;
    this.#dropBatch();
    return reason;
  }

  /** Queues a send that waits for credit or room. */
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
    this.#waiting++;
    return this.#queue.push({
      frame,
      signal,
      spinner,
      error: undefined,
      resolve: undefined,
      reject: undefined,
      onAbort: undefined,
    });
  }

  /**
   * The queue's advance: sends the batch first, then queued frames, as many
   * per packet as credits and `INLINE_MAX` allow. How many entries are
   * done, 0 when out of credit or room. A packet that fails fails its own
   * sends (through `error`); a receiver gone fails this and every later
   * send (a throw, for each entry the queue reaches).
   */
  #advance(jobs: readonly Outbound[]): number {
    if (this.#failed !== undefined) throw this.#failed;
    if (this.#accepted > 0) {
      const state = this.#sendBatch();
      if (state === "failed") throw this.#failed;
      if (state === "write") {
        this.#blocked = "write";
        return 0;
      }
    }
    // The batch's own entry: the batch is out.
    if (jobs[0].frame === undefined) return 1;
    if (this.#credits === 0) {
      try {
        this.#takeAcks();
      } catch (error) {
        throw this.#end(error);
      }
      if (this.#credits === 0) {
        this.#blocked = "read";
        return 0;
      }
    }
    const n = this.#batchLength(jobs);
    let parts: Uint8Array[];
    let fds: number[] = [];
    if (n === 1) {
      const frame = jobs[0].frame;
      parts = partsOf(frame);
      fds = frame.fds;
      if (fds.length > 0 && !this.#fdRoom()) {
        try {
          this.#takeAcks();
        } catch (error) {
          throw this.#end(error);
        }
        if (!this.#fdRoom()) {
          this.#blocked = "read";
          return 0;
        }
      }
    } else {
      parts = [header(FRAME.BATCH, n)];
      for (let i = 0; i < n; i++) {
        const frame = jobs[i].frame!;
        const length = new Uint8Array(RECORD_PREFIX);
        putU32(length, 0, frame.size);
        parts.push(length, ...partsOf(frame));
      }
    }
    let sent: boolean;
    try {
      sent = sendFrame(this.#fd.fd, parts, fds);
    } catch (error) {
      if (isGone(error)) throw this.#end(error);
      // Only this packet fails (too many fds in flight, ...).
      const reason = this.#sendError(error);
      for (let i = 0; i < n; i++) jobs[i].error = reason;
      return n;
    }
    if (!sent) {
      this.#blocked = "write";
      return 0;
    }
    if (fds.length > 0) this.#fdWent();
    this.#credits -= n;
    return n;
  }

  /**
   * The queue's park: waits until acks arrive (out of credit) or there is
   * room. A wait that fails under sends still pending ends the channel for
   * this sender.
   */
  async #park(signal: AbortSignal | undefined): Promise<void> {
    const turns = poller().turns;
    try {
      await this.#fd.wait(this.#blocked, signal);
    } catch (error) {
      // Given up on purpose (the queue changed), or nothing left to send.
      if (signal?.aborted || !this.pending()) throw error;
      throw this.#end(error);
    }
    // Only a wait that let the event loop turn starts a new slice.
    if (poller().turns !== turns) this.#slice.waited();
  }

  /** A queued entry went out (or its packet failed). */
  #done(job: Outbound): void {
    const { frame, error } = job;
    if (frame !== undefined) {
      this.#waiting--;
      if (error === undefined) frame.sent();
      else frame.abandon();
    }
    this.#left();
    if (error !== undefined) throw error;
  }

  /** A queued entry failed or was given up. */
  #failedEntry(job: Outbound, error: unknown): unknown {
    if (job.frame !== undefined) {
      this.#waiting--;
      job.frame.abandon();
    }
    this.#left();
    return error;
  }

  /** An entry left the queue: a batch left behind gets its own entry. */
  #left(): void {
    if (this.#queue.length > 0) return;
    if (this.#accepted > 0) this.#queueBatch();
    else this.#idle();
  }

  /** How many frames from the head of the queue go in the next packet. */
  #batchLength(jobs: readonly Outbound[]): number {
    if (!batchable(jobs[0].frame!)) return 1;
    let n = 0;
    let bytes = HEADER;
    while (n < jobs.length && n < this.#credits) {
      const frame = jobs[n].frame;
      if (frame === undefined || !batchable(frame)) break;
      bytes += RECORD_PREFIX + frame.size;
      if (n > 0 && bytes > INLINE_MAX) break;
      n++;
    }
    return n;
  }

  /** Reads the acknowledgements that arrived (at most ACK_BUDGET). */
  #takeAcks(): void {
    for (let i = 0; i < ACK_BUDGET; i++) {
      let got;
      try {
        got = receiveMessage(this.#fd.fd, this.#ackBuf, 1, false);
      } catch (error) {
        if (isGone(error)) throw sendClosed(error);
        // More fds than an ack may carry (none): the receive closed them.
        // What the receiver sent cannot be an ack.
        if (error instanceof RangeError) {
          throw invalid(
            `the receiver sent something other than an ack: ${error.message}`,
          );
        }
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
      this.#acked += n;
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

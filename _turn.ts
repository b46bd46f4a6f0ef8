/**
 * Fairness for receive loops: a loop fed by a fast peer finds a message
 * ready on every call, so each `await` resolves as a microtask and timers,
 * `AbortSignal.timeout` and other I/O never get a turn. A
 * {@linkcode TurnSlice} counts deliveries made without waiting; once a slice
 * is used up, the receiver yields one macrotask turn before it goes on.
 *
 * @module
 */

import { loopTurn, loopTurned } from "./ffi/_turns.ts";
import { ERRNO, type SystemError } from "./ffi/errors.ts";

/** Deliveries in one slice of continuous delivery. */
const SLICE_MESSAGES = 1024;
/**
 * The longest slice, in ms, however few deliveries it made, counted from
 * its 8th delivery.
 */
const SLICE_MS = 2;
/**
 * The most bytes one slice delivers: a few large messages take longer than
 * a slice each, before the clock is ever read (40 channel messages of 64
 * MiB held a 100 ms interval off for 6.9 s).
 */
export const SLICE_BYTES = 4 * 1024 * 1024;
/**
 * Deliveries of at least this many bytes count toward
 * {@linkcode SLICE_BYTES}; smaller ones are bounded by the count and the
 * clock alone, at no cost to their path.
 */
export const LARGE_DELIVERY = 64 * 1024;

const now = () => performance.now();

/**
 * The bytes of large deliveries (of {@linkcode LARGE_DELIVERY} and more)
 * since the event loop last turned: past {@linkcode SLICE_BYTES} of them a
 * slice is over, however early its clock.
 */
export class LargeDeliveries {
  #bytes = 0;
  #turn = -1;

  /**
   * Counts a delivery of `bytes`. Whether the slice's bytes are used up;
   * they start over then.
   */
  over(bytes: number): boolean {
    if (bytes < LARGE_DELIVERY) return false;
    const turn = loopTurn();
    if (turn !== this.#turn) {
      this.#turn = turn;
      this.#bytes = 0;
    }
    if ((this.#bytes += bytes) < SLICE_BYTES) return false;
    this.#bytes = 0;
    return true;
  }

  /** A turn was taken: the bytes start over. */
  reset(): void {
    this.#bytes = 0;
  }
}

/** One receiver's slice of continuous delivery. */
export class TurnSlice {
  #count = 0;
  #large = new LargeDeliveries();
  #start = 0;
  #turn = -1;
  #clock: () => number;

  /** @param clock The clock in ms (tests pass their own). */
  constructor(clock: () => number = now) {
    this.#clock = clock;
  }

  /**
   * Records one delivery made without waiting, of `bytes` (0 when small or
   * unknown). Returns whether the slice is used up: the receiver should
   * then `await yieldTurn()`. A delivery after the event loop turned (see
   * `loopTurn`) starts a new slice.
   */
  delivered(bytes = 0): boolean {
    const turn = loopTurn();
    if (turn !== this.#turn) {
      this.#turn = turn;
      this.#count = 0;
    }
    const count = ++this.#count;
    if (
      count >= SLICE_MESSAGES ||
      (bytes >= LARGE_DELIVERY && this.#large.over(bytes))
    ) {
      this.waited();
      return true;
    }
    // The clock is read at every 8th delivery only, and first at the 8th: a
    // delivery costs far less than a slice, and reading it each time costs
    // as much as the rest (most slices of paced traffic have one delivery).
    if ((count & 7) !== 0) return false;
    const now = this.#clock();
    if (count === 8) {
      this.#start = now;
      return false;
    }
    if (now - this.#start >= SLICE_MS) {
      this.waited();
      return true;
    }
    return false;
  }

  /**
   * The receiver waited (its event loop ran), or is about to yield: a new
   * slice starts.
   */
  waited(): void {
    this.#count = 0;
    this.#large.reset();
  }
}

/**
 * Resolves after one macrotask turn: timers that are due, I/O callbacks
 * and other tasks run first. `setImmediate` costs a few µs, where a
 * `setTimeout(0)` would cost a timer tick.
 */
export function yieldTurn(): Promise<void> {
  return new Promise((resolve) =>
    setImmediate(() => {
      loopTurned();
      resolve();
    })
  );
}

/** What an accept that fails for want of fds or memory fails with. */
const SHORTAGES: ReadonlySet<number> = new Set([
  ERRNO.EMFILE,
  ERRNO.ENFILE,
  ERRNO.ENOBUFS,
  ERRNO.ENOMEM,
]);

/** The first pause of an accept loop after a shortage, in ms. */
export const FIRST_SHORTAGE_PAUSE_MS = 5;
/** The longest pause of an accept loop after a shortage, in ms. */
const MAX_SHORTAGE_PAUSE_MS = 1_000;

/** How often a pause looks whether its loop's listener was closed, in ms. */
const PAUSE_STEP_MS = 20;

/**
 * How an accept loop (`for await` over a listener or a server) meets a
 * full fd table or a memory shortage: the connection stays queued, so it
 * waits `pauseMs` and tries again instead of ending the loop (as servers
 * that stop at the first `EMFILE` let any client that holds connections
 * open end them). The pause ends early when the listener is closed, and
 * keeps the process alive only while the listener does.
 *
 * @param error What the accept threw.
 * @param pauseMs This pause: {@linkcode FIRST_SHORTAGE_PAUSE_MS} after a
 * success, then what the last call returned.
 * @param closed Whether the listener was closed: the pause then ends.
 * @param refed Whether a pending accept keeps the process alive.
 * @returns The next pause (twice this one, at most 1 s), or `undefined`
 * when `error` is no shortage and the loop should throw it.
 */
export async function pauseOnShortage(
  error: unknown,
  pauseMs: number,
  closed: () => boolean,
  refed: () => boolean,
): Promise<number | undefined> {
  const code = (error as Partial<SystemError> | undefined)?.errno;
  if (code === undefined || !SHORTAGES.has(code)) return undefined;
  const end = performance.now() + pauseMs;
  for (;;) {
    const left = end - performance.now();
    if (left <= 0 || closed()) break;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, Math.min(left, PAUSE_STEP_MS));
      if (!refed()) Deno.unrefTimer(timer);
    });
  }
  return Math.min(pauseMs * 2, MAX_SHORTAGE_PAUSE_MS);
}

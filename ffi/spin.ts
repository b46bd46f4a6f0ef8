/**
 * Spin-then-park: the one wait loop every endpoint uses.
 *
 * A wait first retries its sync attempt for a short while, calling
 * `sched_yield()` each pass so a peer on the same core gets to run, and only
 * then parks in the poller. By default the spin is hit-gated: a waiter spins
 * only while its recent spins were answered cheaply (a fast hit: the peer was
 * awake, or the waiter's yields handed its CPU to others while it waited);
 * after a miss, or a few slow hits in a row (answers that took many passes
 * of the loop: the peer had to be woken each time while this waiter burned
 * its CPU), it parks straight away for 2, 4, ... 256 waits before it probes
 * again. Fast hits bring the back-off down a step for every two, so a
 * waiter spins on every wait again only while at least two spins in three
 * are answered. A probe spins long enough to catch a parked peer's answer,
 * so two ends that both backed off lock in again. One miss after a long run of
 * fast hits is taken for a hiccup of the peer (a GC pause, a preempted CPU):
 * the next wait probes at once instead of parking. A spin calls
 * `sched_yield()` once per pass; a pass makes one attempt, or several when
 * an attempt only reads shared memory. A tight ping-pong gets answers
 * within the spin and never parks, with a CPU-bound process running too
 * (its yields let it run); paced or one-way traffic, and a machine with
 * more CPU-bound processes than cores (a yield that loses a whole scheduler
 * slice is a miss), see misses and stop spinning, so the spin never costs
 * more than a few probes.
 *
 * - `spin: undefined` (the default): the hit-gated rule above.
 * - `spin: 0`: never spin; park at once.
 * - `spin: n` (µs): always spin up to `n` µs before parking.
 *
 * @module
 */

import { libc } from "./libc.ts";

/** Largest budget the adaptive rule spins for after fast hits, in µs. */
const MAX_BUDGET_US = 100;
/** Smallest budget the adaptive rule spins for, in µs. */
const MIN_BUDGET_US = 50;
/**
 * A spin answered within this many µs is a fast hit: the peer is awake. On
 * a day of slow wake-ups an awake channel peer's answers spread past 30 µs
 * (median 26, mean 52), and a bound of 30 took three of them in a row for a
 * parked peer: both ends stopped spinning and parked every time, at four
 * times the round trip. Parking costs more than this much CPU on each side.
 */
const FAST_US = 60;
/**
 * A spin answered after FAST_US but within this many passes (and before
 * BUSY_US) is a fast hit too: its `sched_yield()` calls handed the CPU to
 * another thread (the peer woken on this core, a CPU-bound process) for
 * most of the wait, so it burned little CPU. A pass that yields to nobody
 * takes 1 to 2 µs here, so this many of them cost about FAST_US of CPU.
 * Timed in µs alone, a busy machine's spins all looked slow: a channel round
 * trip with one CPU-bound process running stopped spinning and parked every
 * time, at 160 µs against 100 µs spinning, and with more CPU per message (93
 * µs a side against 68).
 */
const FAST_PASSES = 30;
/** Such cheap hits in a row that end a back-off as a fast hit does. */
const CHEAP_RUN = 4;
/**
 * Budget of a probe after misses, in µs: long enough to catch the answer of
 * a peer that was parked and had to be woken, so two ends that both backed
 * off can lock in again.
 */
const PROBE_US = 150;
/**
 * A spin answered after this many µs counts as a miss, however few its
 * passes: one of its yields gave the CPU to a CPU-bound process for a
 * scheduler slice, where a parked wait is woken at once. Channel round trips
 * here with one CPU-bound process on two cores had 2 % of their answers come
 * this late, with four 40 %; taking those for cheap answers made round trips
 * several times slower on average than parking, and a bound of 300 µs (7 %
 * with one) stopped the spin under one CPU-bound process too.
 */
const BUSY_US = 1_000;
/**
 * Slow hits (answered after FAST_US and FAST_PASSES, within PROBE_US) in a
 * row that still count as hits: a peer that keeps answering slowly is
 * parked each time, and spinning for it only burns CPU.
 */
const SLOW_HITS = 3;
/** Longest back-off after misses: 2^MAX_MISSES parked waits. */
const MAX_MISSES = 8;
/**
 * Fast hits in a row after which one miss is taken for a hiccup of the
 * peer (a GC pause, a preempted vCPU) rather than a change of pace: the
 * next wait probes at once instead of parking for two.
 */
const STREAK = 16;
/** Largest fixed budget accepted, in µs (one second). */
const MAX_FIXED_US = 1_000_000;

/**
 * Checks a `spin` option: `undefined` (adaptive), `0` (off) or a finite
 * number of µs up to one second.
 *
 * @throws {TypeError} When it is not a number.
 * @throws {RangeError} When it is negative, not finite or above one second.
 */
export function checkSpin(spin: unknown, what: string): number | undefined {
  if (spin === undefined) return undefined;
  if (typeof spin !== "number") {
    throw new TypeError(
      `${what}: spin must be a number of µs, got ${typeof spin}`,
    );
  }
  if (!Number.isFinite(spin) || spin < 0 || spin > MAX_FIXED_US) {
    throw new RangeError(
      `${what}: spin must be between 0 and ${MAX_FIXED_US} µs, got ${spin}`,
    );
  }
  return spin;
}

// Work that was put off to the end of the turn (sends gathered into one
// frame) and must be done before this thread busy-waits: a peer cannot
// answer what it has not received.
const beforeSpin = new Set<() => void>();
/** The thread is exiting: nothing put off runs later. */
let exiting = false;

/**
 * Asks for `flush` to run once, before the next spin of any waiter in this
 * thread or when the thread exits (or earlier, when its owner runs it
 * itself and calls {@linkcode cancelBeforeSpin}). `flush` must not throw.
 */
export function runBeforeSpin(flush: () => void): void {
  // An unload listener's sends: no turn and no spin comes after it.
  if (exiting) flush();
  else beforeSpin.add(flush);
}

/** Withdraws a {@linkcode runBeforeSpin} request. */
export function cancelBeforeSpin(flush: () => void): void {
  beforeSpin.delete(flush);
}

/**
 * Runs every pending {@linkcode runBeforeSpin} request now. Each call that
 * blocks the thread (`readSync`, `writeSync`, `recvSync`, ...) calls it
 * first: a peer cannot answer what was never sent, so a batch left for the
 * end of the turn would otherwise deadlock a request and its blocking wait
 * for the reply.
 */
export function flushBeforeSpin(): void {
  for (const flush of [...beforeSpin]) {
    beforeSpin.delete(flush);
    flush();
  }
}

// `Deno.exit()` right after a send must not lose what was put off, nor
// sends made by the unload listeners that run after this one.
globalThis.addEventListener?.("unload", () => {
  exiting = true;
  flushBeforeSpin();
});

const now = () => performance.now();

/** One waiter's spin state: keep one per endpoint and direction. */
export class Spinner {
  #fixed: number | undefined;
  #budget = PROBE_US;
  #cooldown = 0;
  #misses = 0;
  /** A fast hit while backed off that has not yet lowered the back-off. */
  #halfStep = false;
  #slowHits = 0;

  #streak = 0;
  #looks: number;
  #clock: () => number;

  /**
   * @param spin `undefined` for the adaptive rule, `0` for none, or µs.
   * @param looks Attempts between two `sched_yield()` calls: 1 when an
   * attempt is a syscall, more when it only reads memory.
   * @param clock The clock in ms (tests pass their own).
   */
  constructor(spin?: number, looks = 1, clock: () => number = now) {
    this.#fixed = spin;
    this.#looks = looks;
    this.#clock = clock;
  }

  /**
   * Whether the adaptive rule is resting after misses: the next wait will
   * park without spinning, as the answer is not expected soon.
   */
  get resting(): boolean {
    return this.#fixed === undefined && this.#cooldown > 0;
  }

  /** Whether this spinner never spins. */
  get off(): boolean {
    return this.#fixed === 0;
  }

  /**
   * Retries `attempt` for up to this waiter's budget. Returns what
   * `attempt` returned once it was not `undefined`, or `undefined` when the
   * budget ran out (or no spin is due) and the caller should park.
   */
  spin<T>(attempt: () => T | undefined): T | undefined {
    const fixed = this.#fixed;
    let budgetUs: number;
    if (fixed !== undefined) {
      if (fixed === 0) return undefined;
      budgetUs = fixed;
    } else {
      if (this.#cooldown > 0) {
        this.#cooldown--;
        return undefined;
      }
      budgetUs = this.#budget;
    }
    if (beforeSpin.size > 0) flushBeforeSpin();
    const lib = libc();
    const clock = this.#clock;
    const start = clock();
    const end = start + budgetUs / 1000;
    let now = start;
    const looks = this.#looks;
    let passes = 0;
    while (now < end) {
      lib.sched_yield();
      passes++;
      let got = attempt();
      for (let k = 1; k < looks && got === undefined; k++) got = attempt();
      now = clock();
      if (got !== undefined) {
        if (fixed === undefined) this.#hit((now - start) * 1000, passes);
        return got;
      }
    }
    if (fixed === undefined) this.#miss();
    return undefined;
  }

  #hit(us: number, passes: number): void {
    if (us > FAST_US) {
      // A yield that lasted this long gave the CPU to a CPU-bound process
      // for a whole slice, where a parked wait would have been woken at
      // once: the machine is too busy for spinning.
      if (us > BUSY_US) return this.#miss();
      if (passes > FAST_PASSES) {
        if (++this.#slowHits > SLOW_HITS) this.#miss();
        return;
      }
      // Cheap but late: the spin goes on, and a lone miss after a run of
      // such hits is a hiccup. Only a few of them in a row reset the
      // back-off: a paced peer answers so now and then, between misses (this
      // thread's first yield lasting until its message came), and a reset at
      // each would have it probe, and miss, every few waits.
      this.#slowHits = 0;
      if (++this.#streak >= CHEAP_RUN) {
        this.#misses = 0;
        this.#halfStep = false;
      }
      this.#budget = MAX_BUDGET_US;
      return;
    }
    this.#slowHits = 0;
    this.#streak++;
    this.#budget = Math.min(MAX_BUDGET_US, Math.max(MIN_BUDGET_US, 4 * us));
    if (this.#misses > 0) this.#easeBackOff();
  }

  /**
   * A fast hit while backed off: every second one lowers the back-off by a
   * step, and the waiter rests as long as the lower step says before it
   * probes again. Spinning on every wait comes back only while at least two
   * spins in three are answered: a paced peer is answered now and then by
   * a probe (a late timer sent two messages close together), and resetting
   * the back-off at each such hit had a paced receiver probe, and mostly
   * miss, every third wait, at 10 to 20 µs of CPU per message.
   */
  #easeBackOff(): void {
    this.#halfStep = !this.#halfStep;
    if (this.#halfStep) return;
    this.#misses--;
    this.#cooldown = this.#misses > 0 ? 1 << this.#misses : 0;
  }

  #miss(): void {
    if (this.#streak >= STREAK) {
      this.#streak = 0;
      this.#slowHits = 0;
      this.#budget = PROBE_US;
      return;
    }
    this.#streak = 0;
    this.#misses = Math.min(this.#misses + 1, MAX_MISSES);
    this.#cooldown = 1 << this.#misses;
    this.#slowHits = 0;
    this.#budget = PROBE_US;
  }
}

/**
 * The spinner of a wait that queues behind another on the same endpoint:
 * it never spins, and holds no state, so one serves every such wait.
 */
export const NO_SPIN: Spinner = new Spinner(0);

/**
 * The wait loop: `attempt` now (unless the caller just `tried` it), then a
 * spin, then `park()` (a poller wait) and again, until `attempt` returns
 * something other than `undefined`.
 */
export async function untilReady<T>(
  attempt: () => T | undefined,
  park: () => Promise<void>,
  spinner: Spinner,
  tried = false,
): Promise<T> {
  for (;;) {
    if (!tried) {
      const now = attempt();
      if (now !== undefined) return now;
    }
    tried = false;
    const spun = spinner.spin(attempt);
    if (spun !== undefined) return spun;
    await park();
  }
}

/**
 * The wait loop of {@linkcode untilReady} with one promise for the whole
 * wait: `park` calls `ready` from the poller's dispatch (see
 * `PollHandle.waitThen`), which looks again right there, instead of
 * resolving a promise that a loop awaits. On a paced wake-up that saves the
 * promise hops between the event loop and the caller.
 *
 * `attempt` runs now unless the caller just `tried` it, then the spin,
 * then `park`, and again after each wake-up, until it returns something
 * other than `undefined`; `settle` turns that into what the promise
 * resolves with. `ended` runs once, when the wait settles either way,
 * before the promise does. An error thrown by `attempt`, `settle` or
 * `park`, or passed to `park`'s `fail`, rejects the promise.
 */
export function waitLoop<T, R>(
  attempt: () => T | undefined,
  park: (ready: () => void, fail: (error: unknown) => void) => void,
  spinner: Spinner,
  tried: boolean,
  settle: (value: T) => R | PromiseLike<R>,
  ended?: () => void,
): Promise<R> {
  return new Promise<R>((resolve, reject) => {
    let over = false;
    const fail = (error: unknown) => {
      if (over) return;
      over = true;
      ended?.();
      reject(error);
    };
    const look = (first: boolean) => {
      if (over) return;
      let value: R | PromiseLike<R>;
      try {
        let got = first ? attempt() : undefined;
        if (got === undefined) got = spinner.spin(attempt);
        if (got === undefined) return park(ready, fail);
        value = settle(got);
      } catch (error) {
        return fail(error);
      }
      over = true;
      ended?.();
      resolve(value);
    };
    const ready = () => look(true);
    look(!tried);
  });
}

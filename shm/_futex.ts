/**
 * Waits on 32-bit words of shared memory, across processes, without a
 * thread per wait and without polling: every wait of this process (or
 * Worker) is one entry of a single `futex_waitv(2)` call kept in flight on
 * Deno's blocking pool (up to 127 waits per call; each further 127 waits
 * add one call). Entry 0 of each call is a private control word: when the
 * set of waits changes (a new wait, a timeout, an abort, a close), the word
 * is bumped and woken, the call returns, and it is issued again with the new
 * set.
 *
 * A wake-up is a plain shared `FUTEX_WAKE` on the word's address, so any
 * process that maps the same memory, in any language, wakes these waits
 * with `futex(addr, FUTEX_WAKE, n)`, and these notifies wake its
 * `FUTEX_WAIT`s.
 *
 * Like every futex user, this relies on the word being changed before it is
 * notified: a call that is being issued again sees the changed word and
 * returns at once (the wait ends with "ok"), whereas a notify that changes
 * nothing can be missed by a wait that was between two calls.
 *
 * @module
 */

import { libc, SYS } from "../ffi/libc.ts";
import { ERRNO, errno, systemError } from "../ffi/errors.ts";
import { addressOf, stableBuffer } from "../ffi/mem.ts";

const FUTEX_WAKE = 1;
const FUTEX_PRIVATE_FLAG = 128;
const FUTEX2_SIZE_U32 = 0x02;
const FUTEX2_PRIVATE = 128;
const CLOCK_MONOTONIC = 1;
/** `struct futex_waitv`: u64 val, u64 uaddr, u32 flags, u32 reserved. */
const WAITV = { size: 24, val: 0, uaddr: 8, flags: 16 } as const;
const WAITV_MAX = 128;
const PER_CALL = WAITV_MAX - 1;
const INT_MAX = 0x7fff_ffff;
/** Calls in a row that fail with nothing to show for it before giving up. */
const MAX_FAILURES = 100;

/** How a wait ended, as `Atomics.waitAsync` says it. */
export type WaitResult = "ok" | "not-equal" | "timed-out";

type Outcome = { result: WaitResult } | { error: unknown };

/** One pending wait on a word. */
export interface Wait {
  readonly address: bigint;
  readonly words: Int32Array;
  readonly index: number;
  readonly expected: number;
  outcome?: Outcome;
  settled: boolean;
  batch: Batch;
  settle(outcome: Outcome): void;
}

/**
 * Up to 127 words, each one entry of one futex_waitv call. The waits of
 * this process on one word queue behind its entry: one kernel wake-up ends
 * the first of them, a change of the word ends them all.
 */
class Batch {
  readonly slots = new Map<bigint, Wait[]>();
  #vector = stableBuffer(WAITV_MAX * WAITV.size);
  #view = new DataView(this.#vector);
  #control = new Int32Array(stableBuffer(64), 0, 1);
  #controlAddress = addressOf(this.#control);
  #inFlight: bigint[] | undefined;
  #deferred: Wait[] = [];
  #interrupted = false;
  #failures = 0;

  get idle(): boolean {
    return this.#inFlight === undefined && this.slots.size === 0;
  }

  /** Whether the batch has room for one more word. */
  get full(): boolean {
    return this.slots.size >= PER_CALL;
  }

  add(wait: Wait): void {
    const slot = this.slots.get(wait.address);
    if (slot !== undefined) {
      slot.push(wait);
      // The word changed since the entry was made: the waits behind it end
      // and the entry is made again with this wait's value.
      if (slot[0].expected !== wait.expected) this.#changed();
      return;
    }
    this.slots.set(wait.address, [wait]);
    this.#changed();
  }

  /**
   * Ends `wait`. Its promise settles at once, unless it was the last wait of
   * an entry of the call in flight: then once that call has returned, so
   * that no call outlives every wait (the op sanitizer of `deno test`).
   */
  finish(wait: Wait, outcome: Outcome): void {
    if (wait.outcome !== undefined) return;
    wait.outcome = outcome;
    const slot = this.slots.get(wait.address);
    const at = slot?.indexOf(wait) ?? -1;
    if (at !== -1) slot!.splice(at, 1);
    if (slot !== undefined && slot.length === 0) {
      this.slots.delete(wait.address);
      if (this.#inFlight?.includes(wait.address)) {
        this.#deferred.push(wait);
        this.#changed();
        return;
      }
    }
    wait.settled = true;
    wait.settle(outcome);
  }

  #changed(): void {
    if (this.#inFlight === undefined) {
      this.#issue();
      return;
    }
    if (this.#interrupted) return;
    this.#interrupted = true;
    // A call not yet asleep sees the new value and returns at once.
    Atomics.add(this.#control, 0, 1);
    libc().syscall6(
      BigInt(SYS.futex),
      this.#controlAddress,
      BigInt(FUTEX_WAKE | FUTEX_PRIVATE_FLAG),
      1n,
      0n,
      0n,
    );
  }

  /** Ends the waits whose word changed; returns whether any did. */
  #changedWords(): boolean {
    let any = false;
    for (const slot of [...this.slots.values()]) {
      for (const wait of [...slot]) {
        if (Atomics.load(wait.words, wait.index) !== wait.expected) {
          this.finish(wait, { result: "ok" });
          any = true;
        }
      }
    }
    return any;
  }

  #issue(): boolean {
    const ended = this.#changedWords();
    if (this.slots.size === 0) return ended;
    const addresses = [...this.slots.keys()];
    const view = this.#view;
    view.setBigUint64(WAITV.val, BigInt(this.#control[0] >>> 0), true);
    view.setBigUint64(WAITV.uaddr, this.#controlAddress, true);
    view.setUint32(WAITV.flags, FUTEX2_SIZE_U32 | FUTEX2_PRIVATE, true);
    view.setUint32(WAITV.flags + 4, 0, true);
    for (let i = 0; i < addresses.length; i++) {
      const at = (i + 1) * WAITV.size;
      const expected = this.slots.get(addresses[i])![0].expected;
      view.setBigUint64(at + WAITV.val, BigInt(expected >>> 0), true);
      view.setBigUint64(at + WAITV.uaddr, addresses[i], true);
      view.setUint32(at + WAITV.flags, FUTEX2_SIZE_U32, true);
      view.setUint32(at + WAITV.flags + 4, 0, true);
    }
    this.#inFlight = addresses;
    this.#interrupted = false;
    libc().syscall6_nb(
      BigInt(SYS.futex_waitv),
      addressOf(this.#vector),
      BigInt(addresses.length + 1),
      0n,
      0n,
      BigInt(CLOCK_MONOTONIC),
    ).then((result) => this.#returned(Number(result)));
    return ended;
  }

  #returned(result: number): void {
    const addresses = this.#inFlight!;
    const interrupted = this.#interrupted;
    this.#inFlight = undefined;
    let progress = interrupted || result >= 0;
    if (result >= 1 && result <= addresses.length) {
      const first = this.slots.get(addresses[result - 1])?.[0];
      if (first !== undefined) this.finish(first, { result: "ok" });
    }
    const deferred = this.#deferred;
    this.#deferred = [];
    for (const wait of deferred) {
      wait.settled = true;
      wait.settle(wait.outcome!);
    }
    // errno belongs to a pool thread; the words say what happened (a word
    // that changed ends its waits when the next call is prepared).
    if (this.#issue()) progress = true;
    this.#failures = progress ? 0 : this.#failures + 1;
    if (this.#failures >= MAX_FAILURES) {
      const error = new Error(
        "Cannot wait on SharedMemory: futex_waitv keeps failing",
      );
      for (const slot of [...this.slots.values()]) {
        for (const wait of [...slot]) this.finish(wait, { error });
      }
    }
    if (this.idle) release(this);
  }
}

const batches: Batch[] = [];

function release(batch: Batch): void {
  const at = batches.indexOf(batch);
  if (at !== -1) batches.splice(at, 1);
}

let supported: Error | null | undefined;

/** Throws `NotSupported` when this kernel (or a sandbox) has no futex_waitv. */
function checkSupport(): void {
  if (supported === undefined) {
    // No waiters and no flags: EINVAL where the call exists.
    const result = Number(
      libc().syscall6(BigInt(SYS.futex_waitv), 0n, 0n, 0n, 0n, 0n),
    );
    const code = result === -1 ? errno() : ERRNO.EINVAL;
    supported = code === ERRNO.EINVAL ? null : new Deno.errors.NotSupported(
      `Cannot wait on SharedMemory: futex_waitv is not available (${
        systemError("futex_waitv", code).message
      }); it needs Linux 5.16 or later`,
    );
  }
  if (supported !== null) throw supported;
}

/** Options of a wait: a timeout in ms and an abort signal. */
export interface WordWaitOptions {
  timeout: number;
  signal?: AbortSignal;
}

/**
 * Waits until the word at `words[index]` (at `address`) is notified, unless
 * it does not hold `expected` now. `pending` tracks the wait for its owner,
 * which cancels what is left when it closes.
 */
export function waitWord(
  words: Int32Array,
  index: number,
  address: bigint,
  expected: number,
  options: WordWaitOptions,
  pending: Set<Wait>,
): Promise<WaitResult> {
  checkSupport();
  const { timeout, signal } = options;
  if (Atomics.load(words, index) !== expected) {
    return Promise.resolve("not-equal");
  }
  if (signal?.aborted) return Promise.reject(signal.reason);
  if (timeout <= 0) return Promise.resolve("timed-out");
  let batch = batches.find((b) => b.slots.has(address)) ??
    batches.find((b) => !b.full);
  if (batch === undefined) {
    batch = new Batch();
    batches.push(batch);
  }
  const { promise, resolve, reject } = Promise.withResolvers<WaitResult>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const onAbort = () => wait.batch.finish(wait, { error: signal!.reason });
  const wait: Wait = {
    address,
    words,
    index,
    expected,
    settled: false,
    batch,
    settle(outcome) {
      if (timer !== undefined) clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      pending.delete(wait);
      if ("error" in outcome) reject(outcome.error);
      else resolve(outcome.result);
    },
  };
  pending.add(wait);
  if (timeout <= INT_MAX) {
    timer = setTimeout(
      () => wait.batch.finish(wait, { result: "timed-out" }),
      timeout,
    );
  }
  signal?.addEventListener("abort", onAbort, { once: true });
  batch.add(wait);
  return promise;
}

/** Ends a pending wait with an error (its owner closed). */
export function cancelWait(wait: Wait, error: Error): void {
  wait.batch.finish(wait, { error });
}

/**
 * Wakes up to `count` waiters on the word at `address`, in every process.
 * Returns how many the kernel woke.
 */
export function wakeWord(address: bigint, count: number): number {
  const result = Number(
    libc().syscall6(
      BigInt(SYS.futex),
      address,
      BigInt(FUTEX_WAKE),
      BigInt(Math.min(count, INT_MAX)),
      0n,
      0n,
    ),
  );
  if (result === -1) throw systemError("futex(FUTEX_WAKE)", errno());
  return result;
}

/**
 * Waits on 32-bit words of shared memory, across processes: the engine
 * behind {@linkcode SharedMemory.wait} and {@linkcode SharedMemory.notify}
 * and the primitives of `shm/mutex.ts`, `semaphore.ts`, `event.ts` and
 * `barrier.ts`.
 *
 * The protocol is the kernel's futex, on the shared mapping itself: a wait
 * sleeps on the word's address without `FUTEX_PRIVATE_FLAG`, so the kernel
 * keys it by the memory object and offset (the same in every process that
 * maps it), and a notify is a plain `FUTEX_WAKE` on the word. A program in
 * another language that maps the same memory takes part with
 * `syscall(SYS_futex, base + 4 * index, FUTEX_WAKE, n, NULL, NULL, 0)` to
 * wake, and `FUTEX_WAIT` (or `futex_waitv`) with the same address to wait;
 * it must change the word before it wakes (see below).
 *
 * Within a process, no thread is started per wait and nothing polls: every
 * pending wait of the process (or Worker) is served by one nonblocking FFI
 * call of `futex_waitv` (syscall 449, Linux 5.16 or later) on Deno's
 * blocking pool, over up to 127 distinct words plus one private word of its
 * own. Waiters on one word share one entry. When the set of words changes,
 * the pool wakes its private word, the call returns, and it is issued again
 * with the new set; when no waiter is left, the call is ended the same way,
 * so the process can exit, and the last wait settles only once the call has
 * returned (nothing is left pending when it resolves, which `deno test`'s op
 * sanitizer checks). A wake from another process wakes every waiter of this
 * process on that word; `notify()` here wakes this process's waiters first,
 * oldest first, and wakes the kernel's sleepers only with what is left of
 * its count. A wake that reaches this process's call for a word that no
 * waiter here still waits on is passed on with one more `FUTEX_WAKE`.
 *
 * Between two calls, and for a word that has not reached the kernel yet, a
 * wake finds no sleeper here. Every call therefore starts by comparing each
 * word with the value its waiters expect, and ends the wait ("ok") of any
 * waiter whose word has moved: like a futex, and unlike
 * `Atomics.waitAsync`, a wait can end because the word changed, without a
 * notify. A notify that leaves the word unchanged can be missed: change the
 * word first, then notify, as every futex protocol does.
 *
 * More than 127 distinct words: the call covers 127 of them at a time and
 * rotates every 10 ms, so a word outside the call is compared at least that
 * often (a bounded delay, not a lost wake, for a word that changes).
 *
 * In a Worker, the call also ends by itself after a second and is issued
 * again: `worker.terminate()` cannot end it through the private word (no
 * JavaScript of the Worker runs any more), and it would keep a thread of
 * the blocking pool, and what the Worker held, until the word changed.
 *
 * @module
 */

import { libc, SYS } from "../ffi/libc.ts";
import { closedError, errno, errnoName } from "../ffi/errors.ts";
import { FUTEX, FUTEX_WAITV, TIMESPEC } from "../ffi/layout.ts";
import { addressOf, stableBuffer } from "../ffi/mem.ts";
import { IN_WORKER } from "../ffi/_wake_aio.ts";

/**
 * How a wait ended: woken (`"ok"`), the word did not hold the expected value
 * when the wait began (`"not-equal"`), or the timeout passed (`"timed-out"`),
 * as `Atomics.waitAsync` reports.
 */
export type WaitResult = "ok" | "not-equal" | "timed-out";

/** Options for {@linkcode SharedMemory.wait}. */
export interface WaitOptions {
  /**
   * Milliseconds to wait at most; `Infinity` (the default) waits until
   * notified. `0` only compares. As with `Atomics.waitAsync`, `NaN` means
   * `Infinity` and a negative value means `0`.
   */
  timeout?: number;
  /** Stops waiting and rejects with the signal's reason. */
  signal?: AbortSignal;
}

const ENTRIES = FUTEX_WAITV.MAX - 1;
const ROTATE_MS = 10;
/** How long a Worker's call lasts before it is issued again, in ns. */
const WORKER_CALL_NS = 1_000_000_000n;
/** `CLOCK_MONOTONIC`, the clock of the call's deadline. */
const CLOCK_MONOTONIC = 1;
const UNREF_POLL_MS = 10;
const INT_MAX = 0x7fff_ffff;
/** Calls in a row that fail and end no wait before the waits are failed. */
const MAX_FAILURES = 100;

let support: string | null | undefined;

const clockTime = new BigInt64Array(TIMESPEC.size / 8);

/** `CLOCK_MONOTONIC` now, in ns. */
function monotonicNs(): bigint {
  libc().clock_gettime(CLOCK_MONOTONIC, clockTime);
  return clockTime[TIMESPEC.sec / 8] * 1_000_000_000n +
    clockTime[TIMESPEC.nsec / 8];
}

/**
 * Why this kernel cannot serve waits on shared memory (`futex_waitv`
 * missing or refused), or `null` when it can. Asked once.
 */
export function waitUnsupported(): string | null {
  if (support !== undefined) return support;
  // No entries: a kernel that has the call answers EINVAL before anything.
  const result = libc().futex_waitv(
    BigInt(SYS.futex_waitv),
    null,
    0n,
    0n,
    null,
    0n,
  );
  const code = result === -1 ? errno() : 0;
  support = code === 22
    ? null
    : `futex_waitv (Linux 5.16 or later) is not available: ${
      result === -1 ? errnoName(code) : `it returned ${result}`
    }`;
  return support;
}

interface Word {
  readonly address: bigint;
  readonly view: Int32Array;
  readonly index: number;
  waiters: Waiter[];
  /** Added while a call was in flight that does not cover it. */
  fresh: boolean;
}

interface Waiter {
  readonly word: Word;
  readonly expected: number;
  readonly owner: WordWaits;
  refed: boolean;
  timer: ReturnType<typeof setTimeout> | undefined;
  settle(result: WaitResult): void;
  fail(error: unknown): void;
}

/** The process's one `futex_waitv` call and every word it serves. */
class FutexPool {
  #words = new Map<bigint, Word>();
  #total = 0;
  #refed = 0;
  #vector = stableBuffer(FUTEX_WAITV.size * FUTEX_WAITV.MAX);
  #entries = new DataView(this.#vector);
  #pointer = Deno.UnsafePointer.of(this.#vector);
  #cancel = new Int32Array(stableBuffer(64));
  #cancelAddress = addressOf(this.#cancel);
  #armed: Word[] = [];
  #inFlight = false;
  #cancelled = false;
  #settled = 0;
  #deferred: (() => void)[] = [];
  /** Unmaps that wait for the call in flight to return (`afterCall`). */
  #releases: (() => void)[] = [];
  #failures = 0;
  #scheduled = false;
  #rotation = 0;
  #rotateTimer: ReturnType<typeof setTimeout> | undefined;
  #pollTimer: ReturnType<typeof setInterval> | undefined;
  /** A Worker's call: its deadline (absolute, `CLOCK_MONOTONIC`), or none. */
  #deadline = IN_WORKER ? new BigInt64Array(stableBuffer(TIMESPEC.size)) : null;
  #deadlinePointer = this.#deadline === null
    ? null
    : Deno.UnsafePointer.of(this.#deadline);
  #deadlineNs = 0n;

  /** Whether the call is in flight (for tests and `settled()`). */
  get busy(): boolean {
    return this.#inFlight;
  }

  add(waiter: Waiter, word: Word): void {
    let entry = this.#words.get(word.address);
    if (entry === undefined) {
      entry = word;
      entry.fresh = this.#inFlight;
      this.#words.set(word.address, entry);
    }
    entry.waiters.push(waiter);
    this.#total++;
    if (waiter.refed) this.#refed++;
    this.schedule();
  }

  /**
   * Takes one waiter out (timeout, abort, close) and has `settle` called;
   * does nothing, and returns false, when it is already gone (woken, and
   * settled or about to be).
   */
  remove(waiter: Waiter, settle: () => void): boolean {
    const word = this.#words.get(waiter.word.address);
    if (word === undefined) return false;
    const at = word.waiters.indexOf(waiter);
    if (at === -1) return false;
    word.waiters.splice(at, 1);
    this.#forget(word, [waiter]);
    this.#finish(settle);
    this.schedule();
    return true;
  }

  /** Wakes up to `count` waiters of this process on `address`, oldest first. */
  wakeLocal(address: bigint, count: number): number {
    const word = this.#words.get(address);
    if (word === undefined || count <= 0) return 0;
    const woken = count >= word.waiters.length
      ? word.waiters
      : word.waiters.slice(0, count);
    word.waiters = count >= word.waiters.length
      ? []
      : word.waiters.slice(count);
    this.#forget(word, woken);
    this.#finish(() => {
      for (const waiter of woken) waiter.settle("ok");
    });
    this.schedule();
    return woken.length;
  }

  /**
   * Runs `release` (which unmaps the range `base`, `bytes` long) once no
   * call covers a word of it: at once, or when the call in flight has
   * returned, which is made to happen now. Its entries stay in the kernel
   * until then, and a wake that one of them takes must be passed on to the
   * shared memory, not to whatever replaced the range.
   */
  afterCall(base: bigint, bytes: number, release: () => void): void {
    const end = base + BigInt(bytes);
    if (
      !this.#inFlight ||
      !this.#armed.some((w) => w.address >= base && w.address < end)
    ) {
      return release();
    }
    this.#releases.push(release);
    this.#end();
  }

  /** Whether the call in flight has an entry for `address`. */
  covers(address: bigint): boolean {
    return this.#inFlight && this.#armed.some((w) => w.address === address);
  }

  refChanged(delta: number): void {
    this.#refed += delta;
    this.schedule();
  }

  schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      this.#update();
    });
  }

  // Settles now, unless the call in flight must end because no ref'd wait
  // is left: then once it has returned, so that no wait ends while the call
  // outlives it (the op sanitizer of `deno test` sees nothing pending).
  #finish(settle: () => void): void {
    if (this.#inFlight && this.#refed === 0) {
      this.#deferred.push(settle);
      this.#end();
    } else settle();
  }

  #forget(word: Word, gone: Waiter[]): void {
    this.#settled += gone.length;
    for (const waiter of gone) {
      this.#total--;
      if (waiter.refed) this.#refed--;
    }
    if (word.waiters.length === 0) this.#words.delete(word.address);
  }

  #update(): void {
    if (this.#inFlight) {
      if (this.#total === 0 || this.#refed === 0) return this.#end();
      if (![...this.#words.values()].some((word) => word.fresh)) return;
      // A word the call does not cover: issue it again at once when the
      // new set fits in one call (entries whose waiters all left make
      // room), else let the rotation bring it in within ROTATE_MS.
      if (this.#words.size <= ENTRIES) this.#end();
      else this.#rotateSoon();
      return;
    }
    if (this.#refed === 0) {
      // Nothing keeps the process alive: no call in flight, and unref'd
      // waits are compared on an unref'd timer instead.
      if (this.#total > 0) this.#startPolling();
      else this.#stopPolling();
      return;
    }
    this.#stopPolling();
    this.#issue();
  }

  // Ends every wait whose word no longer holds its expected value: a wake
  // may have come while no call covered the word.
  #recheck(): void {
    for (const word of [...this.#words.values()]) {
      const value = Atomics.load(word.view, word.index);
      const moved = word.waiters.filter((w) => w.expected !== value);
      if (moved.length === 0) continue;
      word.waiters = word.waiters.filter((w) => w.expected === value);
      this.#forget(word, moved);
      for (const waiter of moved) waiter.settle("ok");
    }
  }

  #issue(): void {
    this.#recheck();
    if (this.#refed === 0) {
      if (this.#total > 0) this.#startPolling();
      return;
    }
    let words = [...this.#words.values()];
    if (words.length > ENTRIES) {
      const start = this.#rotation % words.length;
      words = words.slice(start).concat(words.slice(0, start)).slice(
        0,
        ENTRIES,
      );
      this.#rotation = start + ENTRIES;
      this.#rotateSoon();
    }
    const entries = this.#entries;
    const flags = FUTEX_WAITV.SIZE_U32;
    entries.setBigUint64(
      FUTEX_WAITV.val,
      BigInt(Atomics.load(this.#cancel, 0) >>> 0),
      true,
    );
    entries.setBigUint64(FUTEX_WAITV.uaddr, this.#cancelAddress, true);
    entries.setUint32(
      FUTEX_WAITV.flags,
      flags | FUTEX_WAITV.PRIVATE,
      true,
    );
    entries.setUint32(FUTEX_WAITV.reserved, 0, true);
    for (let i = 0; i < words.length; i++) {
      const word = words[i];
      const at = (i + 1) * FUTEX_WAITV.size;
      word.fresh = false;
      entries.setBigUint64(
        at + FUTEX_WAITV.val,
        BigInt(word.waiters[0].expected >>> 0),
        true,
      );
      entries.setBigUint64(at + FUTEX_WAITV.uaddr, word.address, true);
      entries.setUint32(at + FUTEX_WAITV.flags, flags, true);
      entries.setUint32(at + FUTEX_WAITV.reserved, 0, true);
    }
    this.#armed = words;
    this.#inFlight = true;
    this.#cancelled = false;
    const deadline = this.#deadline;
    if (deadline !== null) {
      this.#deadlineNs = monotonicNs() + WORKER_CALL_NS;
      deadline[TIMESPEC.sec / 8] = this.#deadlineNs / 1_000_000_000n;
      deadline[TIMESPEC.nsec / 8] = this.#deadlineNs % 1_000_000_000n;
    }
    libc().futex_waitv_nb(
      BigInt(SYS.futex_waitv),
      this.#pointer,
      BigInt(words.length + 1),
      0n,
      this.#deadlinePointer,
      deadline === null ? 0n : BigInt(CLOCK_MONOTONIC),
    ).then((result) => this.#returned(result));
  }

  // The call is over: the result names the entry that was woken, or is -1
  // (a word differed from its value on entry, or a signal; errno belongs to
  // a pool thread and is not read). Either way the next issue compares.
  #returned(result: number): void {
    const settledBefore = this.#settled;
    const ended = this.#cancelled;
    this.#inFlight = false;
    const deferred = this.#deferred;
    this.#deferred = [];
    for (const settle of deferred) settle();
    if (this.#rotateTimer !== undefined) {
      clearTimeout(this.#rotateTimer);
      this.#rotateTimer = undefined;
    }
    const armed = this.#armed;
    this.#armed = [];
    if (result >= 1 && result <= armed.length) {
      const word = armed[result - 1];
      if (this.#words.get(word.address) === word && word.waiters.length > 0) {
        const woken = word.waiters;
        word.waiters = [];
        this.#forget(word, woken);
        for (const waiter of woken) waiter.settle("ok");
      } else {
        // This entry outlived its last waiter (it left on a timeout, an
        // abort or a local notify), and it took a wake that another process
        // may be owed: pass one on.
        futexWake(word.address, 1);
      }
    }
    const releases = this.#releases;
    this.#releases = [];
    for (const release of releases) release();
    this.#update();
    // A call that fails at once (-1) and ends no wait, over and over, would
    // spin through the blocking pool: give up on the waits instead. A
    // Worker's call that reached its deadline made progress.
    const progress = ended || result >= 0 ||
      this.#settled !== settledBefore ||
      (this.#deadline !== null && monotonicNs() >= this.#deadlineNs);
    this.#failures = progress ? 0 : this.#failures + 1;
    if (this.#failures >= MAX_FAILURES) {
      this.#failures = 0;
      this.#failAll(
        new Error(
          "Cannot wait on SharedMemory: futex_waitv keeps failing at once",
        ),
      );
    }
  }

  #failAll(error: Error): void {
    for (const word of [...this.#words.values()]) {
      const gone = word.waiters;
      word.waiters = [];
      this.#forget(word, gone);
      this.#finish(() => {
        for (const waiter of gone) waiter.fail(error);
      });
    }
    this.schedule();
  }

  // Makes the call in flight return, through its private word.
  #end(): void {
    if (!this.#inFlight || this.#cancelled) return;
    this.#cancelled = true;
    Atomics.add(this.#cancel, 0, 1);
    libc().futex(
      BigInt(SYS.futex),
      Deno.UnsafePointer.create(this.#cancelAddress),
      BigInt(FUTEX.WAKE | FUTEX.PRIVATE_FLAG),
      1n,
      null,
      0n,
      0n,
    );
  }

  /** Ends the call in flight within ROTATE_MS, so it is issued anew. */
  #rotateSoon(): void {
    if (this.#rotateTimer !== undefined) return;
    this.#rotateTimer = setTimeout(() => {
      this.#rotateTimer = undefined;
      this.#end();
    }, ROTATE_MS);
  }

  #startPolling(): void {
    if (this.#pollTimer !== undefined) return;
    const timer = setInterval(() => {
      this.#recheck();
      this.#update();
    }, UNREF_POLL_MS);
    Deno.unrefTimer(timer);
    this.#pollTimer = timer;
  }

  #stopPolling(): void {
    if (this.#pollTimer === undefined) return;
    clearInterval(this.#pollTimer);
    this.#pollTimer = undefined;
  }
}

let pool: FutexPool | undefined;

function thePool(): FutexPool {
  return pool ??= new FutexPool();
}

/** `FUTEX_WAKE` on a shared word: how many sleepers the kernel woke. */
export function futexWake(address: bigint, count: number): number {
  const n = libc().futex(
    BigInt(SYS.futex),
    Deno.UnsafePointer.create(address),
    BigInt(FUTEX.WAKE),
    BigInt(Math.min(count, INT_MAX)),
    null,
    0n,
    0n,
  );
  return n > 0 ? n : 0;
}

/** Whether this process's `futex_waitv` call is in flight (for tests). */
export function waitPoolBusy(): boolean {
  return pool?.busy ?? false;
}

function checkIndex(index: unknown, length: number, verb: string): number {
  if (
    typeof index !== "number" || !Number.isInteger(index) || index < 0 ||
    index >= length
  ) {
    throw new RangeError(
      `Cannot ${verb} SharedMemory: index must be an integer from 0 to ${
        length - 1
      } (a 32-bit word), got ${index}`,
    );
  }
  return index;
}

function toTimeout(timeout: unknown): number {
  if (timeout === undefined) return Infinity;
  if (typeof timeout !== "number") {
    throw new TypeError(
      `Cannot wait on SharedMemory: timeout must be a number of milliseconds, got ${typeof timeout}`,
    );
  }
  if (Number.isNaN(timeout)) return Infinity;
  return Math.max(timeout, 0);
}

/**
 * The waits of one mapping: what {@linkcode SharedMemory} delegates its
 * `wait`, `notify`, `ref`, `unref` and the end of its waits on `close` to.
 */
export class WordWaits {
  #what: string;
  #view: Int32Array | undefined;
  #base: bigint;
  #refed = true;
  #pending = new Set<Waiter>();
  /**
   * Waits woken ("ok") whose callers have not resumed yet: closing the
   * memory in between gives them up, so their wakes are passed on.
   */
  #resuming = new Set<Waiter>();

  /**
   * @param what The owner's name, for error messages.
   * @param buffer The mapping (its address is the futexes' base).
   */
  constructor(what: string, buffer: ArrayBuffer) {
    this.#what = what;
    this.#view = new Int32Array(buffer, 0, Math.floor(buffer.byteLength / 4));
    this.#base = addressOf(buffer);
  }

  /** Whether pending waits keep the process alive. */
  get refed(): boolean {
    return this.#refed;
  }

  /** Waits on word `index` while it holds `expected`. */
  wait(
    index: number,
    expected: number,
    options: WaitOptions = {},
  ): Promise<WaitResult> {
    const view = this.#view;
    if (view === undefined) return Promise.reject(closedError(this.#what));
    const { signal } = options;
    let timeout: number;
    try {
      checkIndex(index, view.length, "wait on");
      if (typeof expected !== "number") {
        throw new TypeError(
          `Cannot wait on SharedMemory: expected must be a number, got ${typeof expected}`,
        );
      }
      timeout = toTimeout(options.timeout);
      const unsupported = waitUnsupported();
      if (unsupported !== null) {
        throw new Deno.errors.NotSupported(
          `Cannot wait on SharedMemory: ${unsupported}`,
        );
      }
    } catch (error) {
      return Promise.reject(error);
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    const value = expected | 0;
    if (Atomics.load(view, index) !== value) {
      return Promise.resolve("not-equal");
    }
    if (timeout === 0) return Promise.resolve("timed-out");

    const { promise, resolve, reject } = Promise.withResolvers<WaitResult>();
    const pool = thePool();
    const word: Word = {
      address: this.#base + BigInt(index * 4),
      view,
      index,
      waiters: [],
      fresh: false,
    };
    const pending = this.#pending;
    const resuming = this.#resuming;
    let onAbort: (() => void) | undefined;
    const done = () => {
      pending.delete(waiter);
      if (waiter.timer !== undefined) clearTimeout(waiter.timer);
      if (onAbort !== undefined) signal!.removeEventListener("abort", onAbort);
    };
    const waiter: Waiter = {
      word,
      expected: value,
      owner: this,
      refed: this.#refed,
      timer: undefined,
      settle(result) {
        done();
        if (result === "ok") resuming.add(waiter);
        resolve(result);
      },
      fail(error) {
        done();
        reject(error);
      },
    };
    if (timeout !== Infinity) {
      // A timer fires after 2^31 - 1 ms at most (a longer one at once):
      // a longer timeout takes several.
      const deadline = performance.now() + timeout;
      const arm = (ms: number) => {
        const timer = setTimeout(() => {
          waiter.timer = undefined;
          const left = deadline - performance.now();
          if (left > 0) return arm(left);
          pool.remove(waiter, () => waiter.settle("timed-out"));
        }, Math.min(ms, INT_MAX));
        if (!waiter.refed) Deno.unrefTimer(timer);
        waiter.timer = timer;
      };
      arm(timeout);
    }
    if (signal !== undefined) {
      onAbort = () => {
        pool.remove(waiter, () => waiter.fail(signal.reason));
      };
      signal.addEventListener("abort", onAbort, { once: true });
    }
    pending.add(waiter);
    pool.add(waiter, word);
    // Registered before the caller's own reaction: the caller resumes in
    // the job right after this one, and nothing runs in between.
    promise.then(() => resuming.delete(waiter), () => {});
    return promise;
  }

  /** Wakes up to `count` waiters on word `index`, here and elsewhere. */
  notify(index: number, count?: number): number {
    const view = this.#view;
    if (view === undefined) throw closedError(this.#what);
    checkIndex(index, view.length, "notify on");
    if (
      count !== undefined &&
      (typeof count !== "number" || Number.isNaN(count) || count < 0)
    ) {
      throw new RangeError(
        `Cannot notify on SharedMemory: count must be a non-negative number, got ${count}`,
      );
    }
    const n = count === undefined ? Infinity : Math.floor(count);
    if (n === 0) return 0;
    const address = this.#base + BigInt(index * 4);
    let woken = pool === undefined ? 0 : pool.wakeLocal(address, n);
    if (woken < n) {
      let remote = futexWake(address, n - woken);
      // Fewer woken than asked means every sleeper was, this process's own
      // call among them if it covers the word: that one is no waiter.
      if (remote > 0 && remote < n - woken && pool?.covers(address)) remote--;
      woken += remote;
    }
    return woken;
  }

  /** Makes pending and later waits keep the process alive (the default). */
  ref(): void {
    this.#setRef(true);
  }

  /** Lets the process exit while waits are pending. */
  unref(): void {
    this.#setRef(false);
  }

  #setRef(refed: boolean): void {
    if (this.#refed === refed) return;
    this.#refed = refed;
    let delta = 0;
    for (const waiter of this.#pending) {
      if (waiter.refed === refed) continue;
      waiter.refed = refed;
      delta += refed ? 1 : -1;
      if (waiter.timer !== undefined) {
        if (refed) Deno.refTimer(waiter.timer);
        else Deno.unrefTimer(waiter.timer);
      }
    }
    if (delta !== 0) pool?.refChanged(delta);
  }

  /**
   * Ends every pending wait with `BadResource`; later calls throw it.
   * `release` unmaps the memory: it runs once this process's call no
   * longer covers a word of it (see `FutexPool.afterCall`).
   */
  close(release: () => void): void {
    if (this.#view === undefined) return release();
    const bytes = this.#view.byteLength;
    this.#view = undefined;
    const error = closedError(this.#what);
    // A wake that reached a wait whose caller has not resumed (its settle
    // may even wait for the call to return) is given up with the memory:
    // the caller finds it closed. It is passed on while the range is still
    // the shared memory.
    const woken = [...this.#resuming];
    for (const waiter of [...this.#pending]) {
      if (pool?.remove(waiter, () => waiter.fail(error)) === false) {
        woken.push(waiter);
      }
    }
    this.#pending.clear();
    this.#resuming.clear();
    for (const waiter of woken) futexWake(waiter.word.address, 1);
    if (pool === undefined) release();
    else pool.afterCall(this.#base, bytes, release);
  }
}

/**
 * Locks and signals that live in shared memory and work between any
 * processes that map it: {@linkcode Mutex}, {@linkcode Semaphore},
 * {@linkcode Event} and {@linkcode Barrier}, in the spirit of Python's
 * `multiprocessing` primitives.
 *
 * Each one takes 16 bytes at a byte offset of a {@linkcode SharedMemory}
 * that is a multiple of 8. One process lays it out with `create(mem,
 * offset)` (which overwrites those bytes); any process that maps the same
 * memory (handed over as an fd, or opened by name) attaches with
 * `from(mem, offset)`, which checks that one is there. Waits go through
 * {@linkcode SharedMemory.wait}: no thread per wait, no polling loop.
 *
 * Layouts (little-endian 32-bit words; the third word is a tag that says
 * which primitive and layout version is there):
 *
 * | primitive | word 0 | word 1 | word 2 | word 3 |
 * | --- | --- | --- | --- | --- |
 * | `Mutex` | 0 when free, else the holder's pid, with bit 31 set once others may wait | the holder's start time (low 32 bits of `/proc/<pid>/stat` field 22) | `0x4d555401` | 0 |
 * | `Semaphore` | the count, 0 to max | how many wait (a hint for `release`) | `0x53454d01` | max |
 * | `Event` | generation × 2, plus 1 while set | 0 | `0x45564e01` | 0 |
 * | `Barrier` | generation × 65536 + how many arrived | parties | `0x42415201` | 0 |
 *
 * Words 0 and 1 of a mutex change together, as one 64-bit compare-and-swap.
 * Sleepers wait on word 0 of each layout as a futex (see `shm/wait.ts`),
 * so a C or Rust peer can take part by following the same rules.
 *
 * Every value read from the memory is checked: another process may have
 * died halfway or may write anything. A value no rule allows fails the call
 * with `Deno.errors.InvalidData`; nothing loops without yielding.
 *
 * @example A counter behind a mutex
 * ```ts
 * import { Mutex, SharedMemory } from "@conduit/ipc";
 *
 * using mem = SharedMemory.create(4096);
 * using mutex = Mutex.create(mem, 0); // other processes: Mutex.from(mem, 0)
 * const counter = new Int32Array(mem.buffer, 16, 1);
 * {
 *   using _guard = await mutex.lock();
 *   counter[0]++;
 * }
 * console.log(counter[0]); // 1
 * ```
 *
 * @module
 */

import { closedError } from "../ffi/errors.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { checkSpin, Spinner } from "../ffi/spin.ts";
import { SharedMemory } from "./shared_memory.ts";
import type { WaitResult } from "./wait.ts";
import { lookAt, PID_MAX, type ProcessId, selfId } from "./_owner.ts";

/** Options for attaching or creating a primitive. */
export interface SyncOptions {
  /**
   * How a wait spins before it parks: `undefined` (the default) spins only
   * while recent spins were answered quickly, `0` never spins, a number
   * spins that many µs.
   */
  spin?: number;
}

/** Options for a wait on a primitive. */
export interface SyncWaitOptions {
  /** Stops waiting and rejects with the signal's reason. */
  signal?: AbortSignal;
}

const SIZE = 16;
const MAGIC = {
  Mutex: 0x4d55_5401,
  Semaphore: 0x5345_4d01,
  Event: 0x4556_4e01,
  Barrier: 0x4241_5201,
} as const;
type Kind = keyof typeof MAGIC;

/** A wait that sees the word move this many times yields to the event loop. */
const TURNS_PER_YIELD = 64;
/** How long a lock waits on an unknown holder before it looks at it. */
const LOOK_AFTER_MS = 10;
/** How often a holder without a pidfd to watch is looked at again. */
const RELOOK_MS = 100;

const macrotask = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** Where a primitive lives, and what every one of them needs. */
class Place {
  readonly what: Kind;
  readonly mem: SharedMemory;
  readonly index: number;
  readonly words: Int32Array;
  readonly spinner: Spinner;
  readonly closer = new AbortController();

  constructor(
    what: Kind,
    mem: SharedMemory,
    offset: number,
    options: SyncOptions,
    verb: string,
  ) {
    if (!(mem instanceof SharedMemory)) {
      throw new TypeError(`Cannot ${verb} ${what}: not a SharedMemory`);
    }
    if (
      !Number.isInteger(offset) || offset < 0 || offset % 8 !== 0 ||
      offset + SIZE > mem.size
    ) {
      throw new RangeError(
        `Cannot ${verb} ${what}: offset must be a multiple of 8 from 0 to ${
          mem.size - SIZE
        }, got ${offset}`,
      );
    }
    this.what = what;
    this.mem = mem;
    this.index = offset / 4;
    this.words = new Int32Array(mem.buffer, offset, SIZE / 4);
    this.spinner = new Spinner(
      checkSpin(options.spin, `Cannot ${verb} ${what}`),
    );
  }

  get closed(): boolean {
    return this.closer.signal.aborted || this.mem.closed;
  }

  assertOpen(): void {
    if (this.closed) throw closedError(this.what);
  }

  /** The signal a slow path stops on: the caller's, or `close()`. */
  stop(signal: AbortSignal | undefined): AbortSignal {
    return signal === undefined
      ? this.closer.signal
      : AbortSignal.any([signal, this.closer.signal]);
  }

  wait(
    expected: number,
    signal: AbortSignal,
    timeout?: number,
  ): Promise<WaitResult> {
    return this.mem.wait(this.index, expected, { signal, timeout });
  }

  notify(count?: number): number {
    return this.mem.notify(this.index, count);
  }

  corrupt(verb: string, detail: string): Deno.errors.InvalidData {
    return new Deno.errors.InvalidData(
      `Cannot ${verb} ${this.what}: its shared state is corrupt: ${detail}`,
    );
  }

  close(): void {
    if (!this.closer.signal.aborted) this.closer.abort(closedError(this.what));
  }

  static init(
    what: Kind,
    mem: SharedMemory,
    offset: number,
    options: SyncOptions,
    fields: [number, number, number],
  ): Place {
    const place = new Place(what, mem, offset, options, "create");
    const w = place.words;
    Atomics.store(w, 2, 0);
    Atomics.store(w, 0, fields[0]);
    Atomics.store(w, 1, fields[1]);
    Atomics.store(w, 3, fields[2]);
    Atomics.store(w, 2, MAGIC[what]);
    return place;
  }

  static attach(
    what: Kind,
    mem: SharedMemory,
    offset: number,
    options: SyncOptions,
  ): Place {
    const place = new Place(what, mem, offset, options, "attach");
    const tag = Atomics.load(place.words, 2);
    if (tag !== MAGIC[what]) {
      throw new TypeError(
        `Cannot attach ${what} at offset ${offset}: no ${what} is laid out there (tag 0x${
          (tag >>> 0).toString(16)
        })`,
      );
    }
    return place;
  }
}

/**
 * Waits for whichever comes first and withdraws the other: 0 when `first`
 * ended first, 1 for `second`.
 */
async function either(
  first: (signal: AbortSignal) => Promise<unknown>,
  second: (signal: AbortSignal) => Promise<unknown>,
  stop: AbortSignal,
): Promise<0 | 1> {
  const done = new AbortController();
  const both = AbortSignal.any([stop, done.signal]);
  const a = first(both).then(() => 0 as const);
  const b = second(both).then(() => 1 as const);
  a.catch(() => {});
  b.catch(() => {});
  try {
    return await Promise.race([a, b]);
  } finally {
    done.abort();
  }
}

// ------------------------------------------------------------------ Mutex

const LOW = 0xffff_ffffn;
const WAITERS_BIG = 0x8000_0000n;
const PID_BITS = 0x7fff_ffff;

/** Options for {@linkcode Mutex.lock}. */
export type LockOptions = SyncWaitOptions;

/**
 * Proof of holding a {@linkcode Mutex}: `using` it unlocks at the end of
 * the block.
 */
export class MutexGuard implements Disposable {
  #unlock: (() => void) | undefined;
  #ownerDied: boolean;

  /** @internal Made by {@linkcode Mutex.lock} and {@linkcode Mutex.tryLock}. */
  constructor(unlock: () => void, ownerDied: boolean) {
    this.#unlock = unlock;
    this.#ownerDied = ownerDied;
  }

  /**
   * Whether the previous holder died holding the lock (the lock is held
   * now all the same, like `EOWNERDEAD` of a robust pthread mutex): what it
   * protects may be half updated. Repair it before unlocking.
   */
  get ownerDied(): boolean {
    return this.#ownerDied;
  }

  /** Whether {@linkcode unlock} has not been called yet. */
  get held(): boolean {
    return this.#unlock !== undefined;
  }

  /**
   * Releases the lock and wakes one waiter. Idempotent.
   *
   * @throws {Deno.errors.InvalidData} When the lock is no longer this
   * process's (its shared state was overwritten).
   * @throws {Deno.errors.BadResource} When the memory was closed.
   */
  unlock(): void {
    const unlock = this.#unlock;
    if (unlock === undefined) return;
    this.#unlock = undefined;
    unlock();
  }

  /** Unlocks. */
  [Symbol.dispose](): void {
    this.unlock();
  }
}

/**
 * A lock shared by every process that maps its memory. `lock()` waits
 * without blocking the thread and returns a guard; `using` the guard
 * unlocks. The lock belongs to a process, not to a task: within one
 * process, a second `lock()` waits for the first guard like one from
 * anywhere else (it is not re-entrant).
 *
 * A holder that dies holding the lock is detected, never waited on forever:
 * the next locker gets the lock with `guard.ownerDied === true`. Holders are
 * named by pid and start time, so a recycled pid is not mistaken for the
 * holder, and a waiter watches the holder's pidfd, so a death is noticed at
 * once (see `shm/_owner.ts`). All processes must share one pid namespace.
 * Workers of one process count as that process: a Worker that ends while
 * holding the lock is not detected (the process still lives).
 *
 * @example Lock, count, unlock
 * ```ts
 * import { Mutex, SharedMemory } from "@conduit/ipc";
 *
 * using mem = SharedMemory.create(4096);
 * const mutex = Mutex.create(mem, 0);
 * const counter = new Int32Array(mem.buffer, Mutex.SIZE, 1);
 * {
 *   using guard = await mutex.lock({ signal: AbortSignal.timeout(5000) });
 *   if (guard.ownerDied) counter[0] = 0; // repair after a crash
 *   counter[0]++;
 * }
 * console.log(mutex.tryLock()?.ownerDied); // false (and unlocked below)
 * ```
 */
export class Mutex implements Disposable {
  /** Bytes a mutex takes in the memory. */
  static readonly SIZE: number = SIZE;

  #place: Place;
  #wide: BigUint64Array;
  #me: bigint;
  #self: ProcessId;

  private constructor(place: Place) {
    this.#place = place;
    this.#wide = new BigUint64Array(
      place.words.buffer,
      place.words.byteOffset,
      1,
    );
    this.#self = selfId();
    this.#me = (BigInt(this.#self.start) << 32n) | BigInt(this.#self.pid);
  }

  /**
   * Lays out an unlocked mutex at `offset`, overwriting 16 bytes: do it
   * once, before other processes attach.
   *
   * @param mem The memory.
   * @param offset Byte offset, a multiple of 8.
   * @param options How waits spin.
   * @returns The mutex.
   * @throws {RangeError} When the offset is not a multiple of 8 or the
   * mutex would not fit.
   * @throws {Deno.errors.NotSupported} When `/proc/<pid>/stat` of this
   * process cannot be read (it names the holder).
   *
   * @example Lay out, then hand the memory to a child
   * ```ts ignore
   * import { Mutex, SharedMemory, spawn } from "@conduit/ipc";
   *
   * const mem = SharedMemory.create(4096);
   * Mutex.create(mem, 0);
   * spawn(Deno.execPath(), { args: ["run", "--allow-ffi", "child.ts"], fds: [mem] });
   * // child.ts: const mutex = Mutex.from(fromFd(3) as SharedMemory, 0);
   * ```
   */
  static create(
    mem: SharedMemory,
    offset: number,
    options: SyncOptions = {},
  ): Mutex {
    return new Mutex(Place.init("Mutex", mem, offset, options, [0, 0, 0]));
  }

  /**
   * Attaches to a mutex that {@linkcode Mutex.create} laid out at `offset`
   * (in this process or another).
   *
   * @param mem The memory.
   * @param offset Byte offset, a multiple of 8.
   * @param options How waits spin.
   * @returns The mutex.
   * @throws {TypeError} When no mutex is laid out there.
   * @throws {Deno.errors.NotSupported} When `/proc/<pid>/stat` of this
   * process cannot be read (it names the holder).
   *
   * @example Attach in a second view of the same memory
   * ```ts
   * import { Mutex, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * Mutex.create(mem, 64);
   * const same = Mutex.from(mem, 64);
   * console.log(same.holder); // undefined: free
   * ```
   */
  static from(
    mem: SharedMemory,
    offset: number,
    options: SyncOptions = {},
  ): Mutex {
    return new Mutex(Place.attach("Mutex", mem, offset, options));
  }

  /**
   * The pid of the process that holds the lock, or `undefined` when it is
   * free.
   */
  get holder(): number | undefined {
    this.#place.assertOpen();
    const low = Number(Atomics.load(this.#wide, 0) & LOW);
    return low === 0 ? undefined : low & PID_BITS;
  }

  /** Whether {@linkcode close} was called or the memory closed. */
  get closed(): boolean {
    return this.#place.closed;
  }

  /**
   * Takes the lock if it is free, or if its holder died (then
   * `ownerDied` is true); never waits.
   *
   * @returns A guard, or `undefined` when another live process or task
   * holds the lock.
   * @throws {Deno.errors.InvalidData} When the lock's shared state is
   * corrupt.
   *
   * @example Skip work someone else is doing
   * ```ts
   * import { Mutex, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const mutex = Mutex.create(mem, 0);
   * using first = mutex.tryLock();
   * console.log(first !== undefined, mutex.tryLock()); // true undefined
   * ```
   */
  tryLock(): MutexGuard | undefined {
    const place = this.#place;
    place.assertOpen();
    for (let turn = 0; turn < TURNS_PER_YIELD; turn++) {
      const v = Atomics.load(this.#wide, 0);
      const low = Number(v & LOW);
      if (low === 0) {
        if (Atomics.compareExchange(this.#wide, 0, v, this.#me) === v) {
          return this.#guard(false);
        }
        continue;
      }
      const owner = this.#owner(v, "lock");
      if (owner.pid === this.#self.pid && owner.start === this.#self.start) {
        return undefined;
      }
      const seen = lookAt(owner);
      if (!seen.dead) {
        if (seen.pidfd !== -1) new OwnedFd(seen.pidfd, "Mutex holder").close();
        return undefined;
      }
      if (
        Atomics.compareExchange(this.#wide, 0, v, this.#me | WAITERS_BIG) === v
      ) {
        return this.#guard(true);
      }
    }
    return undefined;
  }

  /**
   * Waits for the lock and takes it. If its holder died holding it, the
   * lock is taken all the same and the guard says `ownerDied`.
   *
   * @param options `signal` to give up waiting.
   * @returns The guard; `using` it unlocks.
   * @throws {Deno.errors.BadResource} When the mutex or its memory is
   * closed, then or while waiting.
   * @throws {Deno.errors.InvalidData} When the lock's shared state is
   * corrupt.
   *
   * @example Give up after a while
   * ```ts
   * import { Mutex, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const mutex = Mutex.create(mem, 0);
   * using guard = await mutex.lock({ signal: AbortSignal.timeout(1000) });
   * console.log(guard.ownerDied); // false
   * ```
   */
  async lock(options: LockOptions = {}): Promise<MutexGuard> {
    const place = this.#place;
    place.assertOpen();
    options.signal?.throwIfAborted();
    const free = () => {
      const v = Atomics.load(this.#wide, 0);
      if ((v & LOW) !== 0n) return undefined;
      return Atomics.compareExchange(this.#wide, 0, v, this.#me) === v
        ? true
        : undefined;
    };
    if (free() ?? place.spinner.spin(free)) return this.#guard(false);
    return await this.#lockSlowly(place.stop(options.signal));
  }

  async #lockSlowly(stop: AbortSignal): Promise<MutexGuard> {
    const place = this.#place;
    const wide = this.#wide;
    const mine = this.#me | WAITERS_BIG;
    let watched: ProcessId | undefined;
    let since = 0;
    let looked = false;
    let watch: OwnedFd | undefined;
    let turns = 0;
    try {
      for (;;) {
        stop.throwIfAborted();
        place.assertOpen();
        if (++turns % TURNS_PER_YIELD === 0) await macrotask();
        const v = Atomics.load(wide, 0);
        if ((v & LOW) === 0n) {
          // Taken with the waiters bit: others may still sleep.
          if (Atomics.compareExchange(wide, 0, v, mine) === v) {
            return this.#guard(false);
          }
          continue;
        }
        const owner = this.#owner(v, "lock");
        let expected = v;
        if ((v & WAITERS_BIG) === 0n) {
          expected = v | WAITERS_BIG;
          if (Atomics.compareExchange(wide, 0, v, expected) !== v) continue;
        }
        const word = Number(expected & LOW) | 0;
        const self = this.#self;
        if (owner.pid === self.pid && owner.start === self.start) {
          // Another task of this process holds it: its unlock wakes us.
          await place.wait(word, stop);
          continue;
        }
        if (
          watched === undefined || watched.pid !== owner.pid ||
          watched.start !== owner.start
        ) {
          watch?.close();
          watch = undefined;
          watched = owner;
          // Most holders let go within microseconds: look at a holder (a
          // few system calls) only once a wait on it has lasted. An
          // earlier process with this process's pid is dead at once.
          since = owner.pid === self.pid ? -Infinity : performance.now();
          looked = false;
        }
        if (!looked) {
          const waited = performance.now() - since;
          if (waited < LOOK_AFTER_MS) {
            await place.wait(word, stop, LOOK_AFTER_MS - waited);
            continue;
          }
          const seen = lookAt(owner);
          if (seen.dead) {
            if (Atomics.compareExchange(wide, 0, expected, mine) === expected) {
              return this.#guard(true);
            }
            continue;
          }
          looked = true;
          if (seen.pidfd !== -1) {
            watch = new OwnedFd(seen.pidfd, "Mutex holder");
          }
        }
        const fd = watch;
        const again = fd === undefined
          ? await place.wait(word, stop, RELOOK_MS) === "timed-out"
          : await either(
            (signal) => place.wait(word, signal),
            (signal) => fd.wait("read", signal),
            stop,
          ) === 1;
        if (again) {
          // The holder exited (its pidfd is readable), or it has no pidfd
          // and is due for another look.
          watch?.close();
          watch = undefined;
          looked = false;
          since = -Infinity;
        }
      }
    } finally {
      watch?.close();
    }
  }

  /** The holder a locked word names, checked. */
  #owner(v: bigint, verb: string): ProcessId {
    const low = Number(v & LOW);
    const pid = low & PID_BITS;
    if (pid === 0 || pid > PID_MAX) {
      throw this.#place.corrupt(
        verb,
        `lock word 0x${low.toString(16)} names no process`,
      );
    }
    return { pid, start: Number(v >> 32n) };
  }

  #guard(ownerDied: boolean): MutexGuard {
    return new MutexGuard(() => this.#unlock(), ownerDied);
  }

  #unlock(): void {
    const place = this.#place;
    if (place.mem.closed) throw closedError("Mutex");
    const wide = this.#wide;
    for (let turn = 0; turn < TURNS_PER_YIELD; turn++) {
      const v = Atomics.load(wide, 0);
      if ((v & ~WAITERS_BIG) !== this.#me) {
        throw place.corrupt(
          "unlock",
          `it is no longer held by this process (lock word 0x${
            (v & LOW).toString(16)
          })`,
        );
      }
      if (Atomics.compareExchange(wide, 0, v, 0n) === v) {
        if ((v & WAITERS_BIG) !== 0n) place.notify(1);
        return;
      }
    }
    throw place.corrupt("unlock", "its lock word keeps changing");
  }

  /**
   * Detaches: pending `lock()` calls reject with `BadResource`. A held
   * guard can still unlock. The memory stays open. Idempotent.
   */
  close(): void {
    this.#place.close();
  }

  /** Closes the mutex. */
  [Symbol.dispose](): void {
    this.close();
  }
}

// -------------------------------------------------------------- Semaphore

/** Options for {@linkcode Semaphore.create}. */
export interface SemaphoreOptions extends SyncOptions {
  /** The count to start at. Default 0. */
  value?: number;
  /** The largest count; {@linkcode Semaphore.release} beyond it throws. Default 2^31 - 1. */
  max?: number;
}

const INT_MAX = 0x7fff_ffff;

/**
 * A counting semaphore shared by every process that maps its memory:
 * `acquire()` waits until the count is above zero and takes one,
 * `release()` gives back. It has no owner: a process that dies between
 * acquire and release takes its unit with it (as with POSIX semaphores).
 *
 * @example A pool of two slots
 * ```ts
 * import { Semaphore, SharedMemory } from "@conduit/ipc";
 *
 * using mem = SharedMemory.create(4096);
 * const slots = Semaphore.create(mem, 0, { value: 2 });
 * await slots.acquire();
 * console.log(slots.tryAcquire(), slots.tryAcquire()); // true false
 * slots.release(2);
 * console.log(slots.value); // 2
 * ```
 */
export class Semaphore implements Disposable {
  /** Bytes a semaphore takes in the memory. */
  static readonly SIZE: number = SIZE;

  #place: Place;
  #max: number;

  private constructor(place: Place) {
    const max = Atomics.load(place.words, 3);
    if (max < 1) throw place.corrupt("attach", `largest count ${max}`);
    this.#place = place;
    this.#max = max;
  }

  /**
   * Lays out a semaphore at `offset`, overwriting 16 bytes.
   *
   * @param mem The memory.
   * @param offset Byte offset, a multiple of 8.
   * @param options `value` (default 0), `max` (default 2^31 - 1) and `spin`.
   * @returns The semaphore.
   * @throws {RangeError} When the offset or the counts are out of range.
   *
   * @example Start with three units
   * ```ts
   * import { Semaphore, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * console.log(Semaphore.create(mem, 0, { value: 3 }).value); // 3
   * ```
   */
  static create(
    mem: SharedMemory,
    offset: number,
    options: SemaphoreOptions = {},
  ): Semaphore {
    const max = options.max ?? INT_MAX;
    const value = options.value ?? 0;
    if (!Number.isInteger(max) || max < 1 || max > INT_MAX) {
      throw new RangeError(
        `Cannot create Semaphore: max must be an integer from 1 to ${INT_MAX}, got ${max}`,
      );
    }
    if (!Number.isInteger(value) || value < 0 || value > max) {
      throw new RangeError(
        `Cannot create Semaphore: value must be an integer from 0 to ${max}, got ${value}`,
      );
    }
    return new Semaphore(
      Place.init("Semaphore", mem, offset, options, [value, 0, max]),
    );
  }

  /**
   * Attaches to a semaphore laid out at `offset`.
   *
   * @param mem The memory.
   * @param offset Byte offset, a multiple of 8.
   * @param options How waits spin.
   * @returns The semaphore.
   * @throws {TypeError} When no semaphore is laid out there.
   *
   * @example Attach
   * ```ts
   * import { Semaphore, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * Semaphore.create(mem, 8, { value: 1 });
   * console.log(Semaphore.from(mem, 8).value); // 1
   * ```
   */
  static from(
    mem: SharedMemory,
    offset: number,
    options: SyncOptions = {},
  ): Semaphore {
    return new Semaphore(Place.attach("Semaphore", mem, offset, options));
  }

  /** The count now (another process may change it at once). */
  get value(): number {
    this.#place.assertOpen();
    return this.#count("read");
  }

  /** Whether {@linkcode close} was called or the memory closed. */
  get closed(): boolean {
    return this.#place.closed;
  }

  #count(verb: string): number {
    const count = Atomics.load(this.#place.words, 0);
    if (count < 0 || count > this.#max) {
      throw this.#place.corrupt(
        verb,
        `count ${count} is outside 0 to ${this.#max}`,
      );
    }
    return count;
  }

  // One attempt: true when a unit was taken, undefined when none is left.
  #take(): true | undefined {
    const words = this.#place.words;
    for (let turn = 0; turn < TURNS_PER_YIELD; turn++) {
      const count = this.#count("acquire");
      if (count === 0) return undefined;
      if (Atomics.compareExchange(words, 0, count, count - 1) === count) {
        return true;
      }
    }
    return undefined;
  }

  /**
   * Takes a unit if the count is above zero; never waits.
   *
   * @returns Whether a unit was taken.
   * @throws {Deno.errors.InvalidData} When the count is corrupt.
   */
  tryAcquire(): boolean {
    this.#place.assertOpen();
    return this.#take() === true;
  }

  /**
   * Waits until the count is above zero, and takes one.
   *
   * @param options `signal` to give up waiting.
   * @throws {Deno.errors.BadResource} When closed, then or while waiting.
   * @throws {Deno.errors.InvalidData} When the count is corrupt.
   */
  async acquire(options: SyncWaitOptions = {}): Promise<void> {
    const place = this.#place;
    place.assertOpen();
    options.signal?.throwIfAborted();
    if (this.#take() ?? place.spinner.spin(() => this.#take())) return;
    const stop = place.stop(options.signal);
    const words = place.words;
    let turns = 0;
    for (;;) {
      stop.throwIfAborted();
      place.assertOpen();
      if (++turns % TURNS_PER_YIELD === 0) await macrotask();
      if (this.#take()) return;
      // Announce the wait before the last look: a release either sees the
      // announcement or its new count is seen here.
      Atomics.add(words, 1, 1);
      try {
        await place.wait(0, stop);
      } finally {
        if (!place.mem.closed) Atomics.sub(words, 1, 1);
      }
    }
  }

  /**
   * Adds `count` units and wakes as many waiters.
   *
   * @param count Units to give back, default 1.
   * @throws {RangeError} When the count would exceed the semaphore's max.
   * @throws {Deno.errors.InvalidData} When the count is corrupt.
   */
  release(count = 1): void {
    const place = this.#place;
    place.assertOpen();
    if (!Number.isInteger(count) || count < 1) {
      throw new RangeError(
        `Cannot release Semaphore: count must be a positive integer, got ${count}`,
      );
    }
    for (let turn = 0;; turn++) {
      if (turn === TURNS_PER_YIELD) {
        throw place.corrupt("release", "its count keeps changing");
      }
      const now = this.#count("release");
      if (now + count > this.#max) {
        throw new RangeError(
          `Cannot release Semaphore: ${now} + ${count} exceeds its max of ${this.#max}`,
        );
      }
      if (
        Atomics.compareExchange(place.words, 0, now, now + count) === now
      ) break;
    }
    if (Atomics.load(place.words, 1) !== 0) place.notify(count);
  }

  /** Detaches: pending `acquire()` calls reject with `BadResource`. */
  close(): void {
    this.#place.close();
  }

  /** Closes the semaphore. */
  [Symbol.dispose](): void {
    this.close();
  }
}

// ------------------------------------------------------------------ Event

/**
 * A flag shared by every process that maps its memory: `wait()` returns
 * once it is set. A wait that began before a `set()` returns even if a
 * `clear()` followed at once (every set starts a new generation).
 *
 * @example Tell other processes to go
 * ```ts
 * import { Event, SharedMemory } from "@conduit/ipc";
 *
 * using mem = SharedMemory.create(4096);
 * const go = Event.create(mem, 0);
 * const waiting = go.wait({ signal: AbortSignal.timeout(5000) });
 * go.set();
 * await waiting;
 * console.log(go.isSet); // true
 * ```
 */
export class Event implements Disposable {
  /** Bytes an event takes in the memory. */
  static readonly SIZE: number = SIZE;

  #place: Place;

  private constructor(place: Place) {
    this.#place = place;
  }

  /**
   * Lays out a clear event at `offset`, overwriting 16 bytes.
   *
   * @param mem The memory.
   * @param offset Byte offset, a multiple of 8.
   * @param options How waits spin.
   * @returns The event.
   *
   * @example Create
   * ```ts
   * import { Event, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * console.log(Event.create(mem, 0).isSet); // false
   * ```
   */
  static create(
    mem: SharedMemory,
    offset: number,
    options: SyncOptions = {},
  ): Event {
    return new Event(Place.init("Event", mem, offset, options, [0, 0, 0]));
  }

  /**
   * Attaches to an event laid out at `offset`.
   *
   * @param mem The memory.
   * @param offset Byte offset, a multiple of 8.
   * @param options How waits spin.
   * @returns The event.
   * @throws {TypeError} When no event is laid out there.
   *
   * @example Attach
   * ```ts
   * import { Event, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * Event.create(mem, 16).set();
   * console.log(Event.from(mem, 16).isSet); // true
   * ```
   */
  static from(
    mem: SharedMemory,
    offset: number,
    options: SyncOptions = {},
  ): Event {
    return new Event(Place.attach("Event", mem, offset, options));
  }

  /** Whether the event is set. */
  get isSet(): boolean {
    this.#place.assertOpen();
    return (Atomics.load(this.#place.words, 0) & 1) === 1;
  }

  /** Whether {@linkcode close} was called or the memory closed. */
  get closed(): boolean {
    return this.#place.closed;
  }

  /** Sets the event and wakes every waiter, in every process. */
  set(): void {
    const place = this.#place;
    place.assertOpen();
    for (let turn = 0;; turn++) {
      if (turn === TURNS_PER_YIELD) {
        throw place.corrupt("set", "its state keeps changing");
      }
      const v = Atomics.load(place.words, 0);
      if ((v & 1) === 1) return;
      const next = ((((v >>> 1) + 1) << 1) | 1) | 0;
      if (Atomics.compareExchange(place.words, 0, v, next) === v) break;
    }
    place.notify();
  }

  /** Clears the event; later waits wait for the next {@linkcode set}. */
  clear(): void {
    const place = this.#place;
    place.assertOpen();
    Atomics.and(place.words, 0, ~1);
  }

  /**
   * Waits until the event is set (returns at once when it is).
   *
   * @param options `signal` to give up waiting.
   * @throws {Deno.errors.BadResource} When closed, then or while waiting.
   */
  async wait(options: SyncWaitOptions = {}): Promise<void> {
    const place = this.#place;
    place.assertOpen();
    options.signal?.throwIfAborted();
    const words = place.words;
    const seen = Atomics.load(words, 0);
    if ((seen & 1) === 1) return;
    // Set, or a new generation (set, then cleared) since the wait began.
    const done = () => {
      const v = Atomics.load(words, 0);
      return (v & 1) === 1 || v >>> 1 !== seen >>> 1 ? true : undefined;
    };
    if (place.spinner.spin(done)) return;
    const stop = place.stop(options.signal);
    for (;;) {
      stop.throwIfAborted();
      place.assertOpen();
      const v = Atomics.load(words, 0);
      if (done()) return;
      await place.wait(v, stop);
    }
  }

  /** Detaches: pending `wait()` calls reject with `BadResource`. */
  close(): void {
    this.#place.close();
  }

  /** Closes the event. */
  [Symbol.dispose](): void {
    this.close();
  }
}

// ---------------------------------------------------------------- Barrier

const COUNT_BITS = 0xffff;
const MAX_PARTIES = 0xffff;

/**
 * A barrier for `parties` waiters in any processes that map its memory:
 * each `wait()` returns once all of them have called it, and the barrier is
 * then ready for the next round. A wait given up through its signal takes
 * its arrival back (if the round has not completed meanwhile).
 *
 * @example Two parties in one process
 * ```ts
 * import { Barrier, SharedMemory } from "@conduit/ipc";
 *
 * using mem = SharedMemory.create(4096);
 * const barrier = Barrier.create(mem, 0, 2);
 * const [a, b] = await Promise.all([barrier.wait(), barrier.wait()]);
 * console.log([a, b].sort()); // [ 0, 1 ]: the order of arrival
 * ```
 */
export class Barrier implements Disposable {
  /** Bytes a barrier takes in the memory. */
  static readonly SIZE: number = SIZE;

  #place: Place;
  #parties: number;

  private constructor(place: Place) {
    const parties = Atomics.load(place.words, 1);
    if (parties < 1 || parties > MAX_PARTIES) {
      throw place.corrupt("attach", `${parties} parties`);
    }
    this.#place = place;
    this.#parties = parties;
  }

  /**
   * Lays out a barrier for `parties` waiters at `offset`, overwriting 16
   * bytes.
   *
   * @param mem The memory.
   * @param offset Byte offset, a multiple of 8.
   * @param parties How many waits complete a round, 1 to 65535.
   * @param options How waits spin.
   * @returns The barrier.
   * @throws {RangeError} When `parties` or the offset is out of range.
   *
   * @example Three parties
   * ```ts
   * import { Barrier, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * console.log(Barrier.create(mem, 0, 3).parties); // 3
   * ```
   */
  static create(
    mem: SharedMemory,
    offset: number,
    parties: number,
    options: SyncOptions = {},
  ): Barrier {
    if (!Number.isInteger(parties) || parties < 1 || parties > MAX_PARTIES) {
      throw new RangeError(
        `Cannot create Barrier: parties must be an integer from 1 to ${MAX_PARTIES}, got ${parties}`,
      );
    }
    return new Barrier(
      Place.init("Barrier", mem, offset, options, [0, parties, 0]),
    );
  }

  /**
   * Attaches to a barrier laid out at `offset`.
   *
   * @param mem The memory.
   * @param offset Byte offset, a multiple of 8.
   * @param options How waits spin.
   * @returns The barrier.
   * @throws {TypeError} When no barrier is laid out there.
   *
   * @example Attach
   * ```ts
   * import { Barrier, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * Barrier.create(mem, 32, 4);
   * console.log(Barrier.from(mem, 32).parties); // 4
   * ```
   */
  static from(
    mem: SharedMemory,
    offset: number,
    options: SyncOptions = {},
  ): Barrier {
    return new Barrier(Place.attach("Barrier", mem, offset, options));
  }

  /** How many waits complete a round. */
  get parties(): number {
    return this.#parties;
  }

  /** Whether {@linkcode close} was called or the memory closed. */
  get closed(): boolean {
    return this.#place.closed;
  }

  #state(verb: string): { v: number; generation: number; arrived: number } {
    const v = Atomics.load(this.#place.words, 0);
    const arrived = v & COUNT_BITS;
    if (arrived >= this.#parties) {
      throw this.#place.corrupt(
        verb,
        `${arrived} arrived for ${this.#parties} parties`,
      );
    }
    return { v, generation: v >>> 16, arrived };
  }

  /**
   * Arrives, and waits until all parties have.
   *
   * @param options `signal` to give up waiting (the arrival is taken back
   * unless the round completed meanwhile, in which case the wait succeeds).
   * @returns This wait's place in the order of arrival, 0 to `parties - 1`.
   * @throws {Deno.errors.BadResource} When closed, then or while waiting.
   * @throws {Deno.errors.InvalidData} When the state is corrupt.
   */
  async wait(options: SyncWaitOptions = {}): Promise<number> {
    const place = this.#place;
    place.assertOpen();
    options.signal?.throwIfAborted();
    const words = place.words;
    let generation: number;
    let index: number;
    for (let turn = 0;; turn++) {
      if (turn === TURNS_PER_YIELD) {
        throw place.corrupt("wait on", "its state keeps changing");
      }
      const s = this.#state("wait on");
      const last = s.arrived + 1 === this.#parties;
      const next = last ? (((s.generation + 1) & 0xffff) << 16) | 0 : s.v + 1;
      if (Atomics.compareExchange(words, 0, s.v, next) !== s.v) continue;
      if (last) {
        place.notify();
        return s.arrived;
      }
      generation = s.generation;
      index = s.arrived;
      break;
    }
    const passed = () =>
      Atomics.load(words, 0) >>> 16 !== generation ? true : undefined;
    if (place.spinner.spin(passed)) return index;
    const stop = place.stop(options.signal);
    let turns = 0;
    try {
      for (;;) {
        stop.throwIfAborted();
        place.assertOpen();
        if (++turns % TURNS_PER_YIELD === 0) await macrotask();
        const v = Atomics.load(words, 0);
        if (v >>> 16 !== generation) return index;
        await place.wait(v, stop);
      }
    } catch (error) {
      // Given up: take the arrival back, unless the round completed first.
      if (place.mem.closed || this.#withdraw(generation)) throw error;
      return index;
    }
  }

  // Takes an arrival back; false when the round completed first.
  #withdraw(generation: number): boolean {
    const words = this.#place.words;
    for (let turn = 0; turn < TURNS_PER_YIELD; turn++) {
      const v = Atomics.load(words, 0);
      if (v >>> 16 !== generation) return false;
      if ((v & COUNT_BITS) === 0) return true;
      if (Atomics.compareExchange(words, 0, v, v - 1) === v) return true;
    }
    return true;
  }

  /** Detaches: pending `wait()` calls reject with `BadResource`. */
  close(): void {
    this.#place.close();
  }

  /** Closes the barrier. */
  [Symbol.dispose](): void {
    this.close();
  }
}

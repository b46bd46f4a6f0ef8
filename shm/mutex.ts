/**
 * {@linkcode Mutex}, a lock in shared memory whose holder is named by pid
 * and start time, and {@linkcode MutexGuard}, the proof of holding it.
 *
 * @module
 */

import { closedError } from "../ffi/errors.ts";
import { inspectEndpoint } from "../_inspect.ts";
import { OwnedFd } from "../ffi/fd.ts";
import type { SharedMemory } from "./shared_memory.ts";
import {
  macrotask,
  Place,
  SIZE,
  type SyncOptions,
  type SyncWaitOptions,
  TURNS_PER_YIELD,
} from "./_sync.ts";
import { lookAt, PID_MAX, type ProcessId, selfId } from "./_owner.ts";
import { memRefed, refWatchers } from "./_keys.ts";

/** How long a lock waits on an unknown holder before it looks at it. */
const LOOK_AFTER_MS = 10;
/**
 * How often a holder without a pidfd to watch is looked at again, and how
 * often a wait that watches one reads the lock word (a load, not a wake):
 * the lock may have passed to another process meanwhile (an unlock wakes
 * one waiter, whose taking the lock wakes no other), and if that one dies
 * holding it, nothing wakes a wait still watching the earlier holder.
 */
const RELOOK_MS = 100;

/**
 * Resolves once word 0 of `words` no longer holds `expected`, looking every
 * {@linkcode RELOOK_MS} on an unref'd timer (the wait it races keeps the
 * process alive, or not); rejects with the signal's reason.
 */
function moved(
  words: Int32Array,
  expected: number,
  signal: AbortSignal,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearInterval(timer);
      signal.removeEventListener("abort", onAbort);
    };
    const onAbort = () => {
      done();
      reject(signal.reason);
    };
    const timer = setInterval(() => {
      if (Atomics.load(words, 0) === expected) return;
      done();
      resolve();
    }, RELOOK_MS);
    Deno.unrefTimer(timer);
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
  });
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

const LOW = 0xffff_ffffn;
const WAITERS_BIG = 0x8000_0000n;
const PID_BITS = 0x7fff_ffff;

/** Options for {@linkcode Mutex.lock}. */
export type LockOptions = SyncWaitOptions;

/**
 * Proof of holding a {@linkcode Mutex}: `using` it unlocks at the end of
 * the block.
 *
 * @example Hold the lock for one block
 * ```ts
 * import { Mutex, SharedMemory } from "@conduit/ipc";
 *
 * using mem = SharedMemory.create(4096);
 * const mutex = Mutex.create(mem, 0);
 * {
 *   using guard = await mutex.lock();
 *   console.log(guard.held, mutex.holder === Deno.pid); // true true
 * }
 * console.log(mutex.holder); // undefined: unlocked at the end of the block
 * ```
 */
export class MutexGuard implements Disposable {
  #unlock: (() => void) | undefined;
  #ownerDied: boolean;

  /** @ignore Made by {@linkcode Mutex.lock} and {@linkcode Mutex.tryLock}. */
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
   * Shows whether the guard still holds the lock and whether the previous
   * holder died, as `MutexGuard { held: true, ownerDied: false }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return inspectEndpoint(
      "MutexGuard",
      { held: this.held, ownerDied: this.#ownerDied },
      inspect,
      options,
    );
  }

  /**
   * Releases the lock and wakes one waiter. Idempotent.
   *
   * @throws {Deno.errors.InvalidData} When the lock is no longer this
   * process's (its shared state was overwritten).
   * @throws {Deno.errors.BadResource} When the memory was closed.
   *
   * @example Unlock before the end of the block
   * ```ts
   * import { Mutex, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const mutex = Mutex.create(mem, 0);
   * const guard = await mutex.lock();
   * guard.unlock();
   * console.log(guard.held, mutex.tryLock() !== undefined); // false true
   * ```
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

  /** @ignore Made by the static `create` and `from`. */
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
   *
   * @throws {Deno.errors.InvalidData} When the lock word names no process
   * (pid 0, or one past the largest Linux hands out).
   */
  get holder(): number | undefined {
    this.#place.assertOpen();
    const v = Atomics.load(this.#wide, 0);
    return (v & LOW) === 0n ? undefined : this.#owner(v, "read").pid;
  }

  /** Whether {@linkcode close} was called or the memory closed. */
  get closed(): boolean {
    return this.#place.closed;
  }

  /**
   * Shows the state, the offset and who holds the lock, without waiting,
   * as `Mutex { state: "open", offset: 0, locked: true, holder: 4242 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return this.#place.inspect(
      () => {
        const low = Number(Atomics.load(this.#wide, 0) & LOW);
        if (low === 0) return { locked: false };
        const pid = low & PID_BITS;
        return pid === 0 || pid > PID_MAX
          ? { locked: true, corrupt: `lock word 0x${low.toString(16)}` }
          : { locked: true, holder: pid };
      },
      inspect,
      options,
    );
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
    const followRef = (refed: boolean) => {
      if (refed) watch?.ref();
      else watch?.unref();
    };
    place.mem[refWatchers].add(followRef);
    // Whether the last wait was woken: giving up then passes the wake on.
    let woken = false;
    try {
      for (;;) {
        place.giveUpIf(stop, woken);
        woken = false;
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
          woken = await place.wait(word, stop) === "ok";
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
            woken = await place.wait(word, stop, LOOK_AFTER_MS - waited) ===
              "ok";
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
            // It keeps the process alive only while the memory's waits do
            // (`mem.unref()`).
            if (!place.mem[memRefed]) watch.unref();
          }
        }
        const fd = watch;
        let again: boolean;
        if (fd === undefined) {
          const result = await place.wait(word, stop, RELOOK_MS);
          woken = result === "ok";
          again = result === "timed-out";
        } else {
          again = await either(
            // A wake that comes once the other wait has won is passed on.
            (signal) =>
              place.wait(word, signal).then((result) => {
                if (result === "ok" && signal.aborted) place.notify(1);
                return result;
              }),
            (signal) =>
              Promise.race([
                fd.wait("read", signal),
                moved(place.words, word, signal),
              ]),
            stop,
          ) === 1;
          woken = !again;
        }
        if (again) {
          // The holder exited (its pidfd is readable), the lock word names
          // another process now, or the holder has no pidfd and is due for
          // another look.
          watch?.close();
          watch = undefined;
          looked = false;
          since = -Infinity;
        }
      }
    } finally {
      place.mem[refWatchers].delete(followRef);
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

/**
 * {@linkcode Semaphore}, a counting semaphore in shared memory.
 *
 * @module
 */

import { checkOptionsObject } from "../_socket_options.ts";
import type { SharedMemory } from "./shared_memory.ts";
import {
  integerIn,
  macrotask,
  Place,
  SIZE,
  type SyncOptions,
  type SyncWaitOptions,
  TURNS_PER_YIELD,
} from "./_sync.ts";

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

  /** @ignore Made by the static `create` and `from`. */
  private constructor(place: Place) {
    this.#place = place;
    this.#max = place.word(3, 1, INT_MAX, "attach", "largest count");
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
    checkOptionsObject(options, "create Semaphore");
    const max = options.max ?? INT_MAX;
    const value = options.value ?? 0;
    integerIn("Semaphore", "max", max, 1, INT_MAX);
    integerIn("Semaphore", "value", value, 0, max);
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

  /**
   * Shows the state, the offset, the count and its max, without waiting,
   * as `Semaphore { state: "open", offset: 0, value: 2, max: 4 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return this.#place.inspect(
      (words) => ({ value: Atomics.load(words, 0), max: this.#max }),
      inspect,
      options,
    );
  }

  #count(verb: string): number {
    return this.#place.word(0, 0, this.#max, verb, "count");
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
   *
   * @example Do the work only if a slot is free
   * ```ts
   * import { Semaphore, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const slots = Semaphore.create(mem, 0, { value: 1 });
   * if (slots.tryAcquire()) {
   *   try {
   *     console.log("working"); // the one slot is ours
   *   } finally {
   *     slots.release();
   *   }
   * }
   * ```
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
   *
   * @example Wait for a slot, with a deadline
   * ```ts
   * import { Semaphore, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const slots = Semaphore.create(mem, 0, { value: 0 });
   * const waiting = slots.acquire({ signal: AbortSignal.timeout(5000) });
   * slots.release(); // another process would do this
   * await waiting;
   * console.log(slots.value); // 0
   * ```
   */
  async acquire(options: SyncWaitOptions = {}): Promise<void> {
    const place = this.#place;
    place.assertOpen();
    options.signal?.throwIfAborted();
    if (this.#take() ?? place.spinner.spin(() => this.#take())) return;
    const stop = place.stop(options.signal);
    const words = place.words;
    let turns = 0;
    let woken = false;
    for (;;) {
      place.giveUpIf(stop, woken);
      place.assertOpen();
      if (++turns % TURNS_PER_YIELD === 0) await macrotask();
      if (this.#take()) return;
      // Announce the wait before the last look: a release either sees the
      // announcement or its new count is seen here.
      Atomics.add(words, 1, 1);
      try {
        woken = await place.wait(0, stop) === "ok";
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
   *
   * @example Give back several units at once
   * ```ts
   * import { Semaphore, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const slots = Semaphore.create(mem, 0, { value: 0, max: 4 });
   * slots.release(3);
   * console.log(slots.value); // 3
   * ```
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

/**
 * {@linkcode Barrier}, a meeting point in shared memory for a fixed number
 * of waits.
 *
 * @module
 */

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

  /** @ignore Made by the static `create` and `from`. */
  private constructor(place: Place) {
    this.#place = place;
    this.#parties = place.word(1, 1, MAX_PARTIES, "attach", "parties");
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
    integerIn("Barrier", "parties", parties, 1, MAX_PARTIES);
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

  /**
   * Shows the state, the offset, the parties and how many of this round
   * have arrived, as `Barrier { state: "open", offset: 0, parties: 3,
   * arrived: 1 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return this.#place.inspect(
      (words) => ({
        parties: this.#parties,
        arrived: Atomics.load(words, 0) & COUNT_BITS,
      }),
      inspect,
      options,
    );
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
   * @returns This wait's place in the order of arrival, 0 to `parties - 1`:
   * how many had arrived before it in this round. The last arrival always
   * gets `parties - 1`, and no other wait of the round does, so it is the
   * one to pick a leader by. The places of a round are all different unless
   * a wait of it gave up (its signal aborted): its arrival is taken back,
   * so a later arrival gets the place of one already there.
   * @throws {Deno.errors.BadResource} When closed, then or while waiting.
   * @throws {Deno.errors.InvalidData} When the state is corrupt.
   *
   * @example Rounds of three
   * ```ts
   * import { Barrier, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const barrier = Barrier.create(mem, 0, 3);
   * for (let round = 0; round < 2; round++) {
   *   const signal = AbortSignal.timeout(5000);
   *   const order = await Promise.all([
   *     barrier.wait({ signal }),
   *     barrier.wait({ signal }),
   *     barrier.wait({ signal }),
   *   ]);
   *   console.log(order.sort()); // [ 0, 1, 2 ]
   * }
   * ```
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

/**
 * {@linkcode Event}, a flag in shared memory that waits can wait for.
 *
 * @module
 */

import type { SharedMemory } from "./shared_memory.ts";
import {
  Place,
  SIZE,
  type SyncOptions,
  type SyncWaitOptions,
  TURNS_PER_YIELD,
} from "./_sync.ts";

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

  /** @ignore Made by the static `create` and `from`. */
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

  /**
   * Shows the state, the offset and whether the event is set, as
   * `Event { state: "open", offset: 0, set: true }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return this.#place.inspect(
      (words) => ({ set: (Atomics.load(words, 0) & 1) === 1 }),
      inspect,
      options,
    );
  }

  /**
   * Sets the event and wakes every waiter, in every process.
   *
   * @example Set once, seen by every attached view
   * ```ts
   * import { Event, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const ready = Event.create(mem, 0);
   * ready.set();
   * console.log(Event.from(mem, 0).isSet); // true
   * ```
   */
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

  /**
   * Clears the event; later waits wait for the next {@linkcode set}.
   *
   * @example Reuse an event for the next round
   * ```ts
   * import { Event, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const round = Event.create(mem, 0);
   * round.set();
   * round.clear();
   * console.log(round.isSet); // false
   * ```
   */
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
   *
   * @example Wait with a deadline
   * ```ts
   * import { Event, SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const done = Event.create(mem, 0);
   * setTimeout(() => done.set(), 10); // another process would do this
   * await done.wait({ signal: AbortSignal.timeout(5000) });
   * console.log(done.isSet); // true
   * ```
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

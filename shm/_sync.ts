/**
 * What the primitives in shared memory (`Mutex`, `Semaphore`, `Event`,
 * `Barrier`) have in common: their options, their layout, and the `Place`
 * each one lives at.
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
 * @module
 */

import { checkOptionsObject } from "../_socket_options.ts";
import { closedError } from "../ffi/errors.ts";
import { inspectEndpoint } from "../_inspect.ts";
import { checkSpin, Spinner } from "../ffi/spin.ts";
import { SharedMemory } from "./shared_memory.ts";
import type { WaitResult } from "./wait.ts";

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

/** Bytes every primitive takes in the memory. */
export const SIZE = 16;
const MAGIC = {
  Mutex: 0x4d55_5401,
  Semaphore: 0x5345_4d01,
  Event: 0x4556_4e01,
  Barrier: 0x4241_5201,
} as const;
export type Kind = keyof typeof MAGIC;

/** A wait that sees the word move this many times yields to the event loop. */
export const TURNS_PER_YIELD = 64;

export const macrotask = () =>
  new Promise<void>((resolve) => setTimeout(resolve, 0));

/**
 * `value`, checked to be an integer from `min` to `max` for `create()` of
 * `what`.
 */
export function integerIn(
  what: Kind,
  name: string,
  value: number,
  min: number,
  max: number,
): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(
      `Cannot create ${what}: ${name} must be an integer from ${min} to ${max}, got ${value}`,
    );
  }
  return value;
}

/** Where a primitive lives, and what every one of them needs. */
export class Place {
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
    checkOptionsObject(options, `${verb} ${what}`);
    if (mem.size < SIZE) {
      throw new RangeError(
        `Cannot ${verb} ${what}: the memory has ${mem.size} bytes, and a ${what} takes ${SIZE}`,
      );
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

  /**
   * How the primitive prints: `{ state: "closed" }` once closed (its words
   * may be unmapped), else its offset and `fields(words)`, which must only
   * read the words (never wait, never throw on a value another process
   * wrote).
   */
  inspect(
    fields: (words: Int32Array) => object,
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    const shown = this.closed
      ? { state: "closed" }
      : { state: "open", offset: this.index * 4, ...fields(this.words) };
    return inspectEndpoint(this.what, shown, inspect, options);
  }

  /** The signal a slow path stops on: the caller's, or `close()`. */
  stop(signal: AbortSignal | undefined): AbortSignal {
    return signal === undefined
      ? this.closer.signal
      : AbortSignal.any([signal, this.closer.signal]);
  }

  /** Waits on word 0. */
  wait(
    expected: number,
    signal: AbortSignal,
    timeout?: number,
  ): Promise<WaitResult> {
    return this.mem.wait(this.index, expected, { signal, timeout });
  }

  /**
   * The give-up point of a wait loop: throws the reason of `stop` when it
   * aborted. A wait `woken` just before (`"ok"`) took a wake that a
   * `release()` or `unlock()` meant for one waiter, here or in another
   * process: it is passed on to the next first, or it would be lost.
   */
  giveUpIf(stop: AbortSignal, woken: boolean): void {
    if (!stop.aborted) return;
    if (woken && !this.mem.closed) this.notify(1);
    stop.throwIfAborted();
  }

  notify(count?: number): number {
    return this.mem.notify(this.index, count);
  }

  /**
   * Word `index`, checked to lie in `min..max`: another process may have
   * written anything there.
   */
  word(
    index: number,
    min: number,
    max: number,
    verb: string,
    name: string,
  ): number {
    const value = Atomics.load(this.words, index);
    if (value < min || value > max) {
      throw this.corrupt(verb, `${name} ${value} is outside ${min} to ${max}`);
    }
    return value;
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
      // Another primitive there is the likely mistake: name it.
      const other = (Object.keys(MAGIC) as Kind[]).find((kind) =>
        MAGIC[kind] === tag
      );
      throw new TypeError(
        `Cannot attach ${what} at offset ${offset}: no ${what} is laid out there (${
          other === undefined
            ? `tag 0x${(tag >>> 0).toString(16)}`
            : `a ${other} is`
        })`,
      );
    }
    return place;
  }
}

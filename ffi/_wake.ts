/**
 * What the poller asks of a wake path, the way it learns that its epoll set
 * has events: `uring` or `aio` (`_wake_direct.ts` over `_wake_uring.ts` or
 * `_wake_aio.ts`) or `ffi` (`_wake_ffi.ts`). See `poller.ts` for all three.
 *
 * @module
 */

/** Events taken from the epoll set at once. */
export const MAX_EVENTS = 256;
/** The `epoll_data` of the `ffi` path's eventfd, never a registration's. */
export const KICK_TOKEN = 0;

/** The name of a wake path: see {@linkcode wakePath}. */
export type WakePathName = "uring" | "aio" | "ffi";

/** How the poller learns that its epoll set has events. */
export interface Wake {
  readonly path: WakePathName;
  /**
   * Makes sure `onEvents` runs once the set has events; `ref` says whether
   * that wait keeps the process alive, `set` whether any fd waits through
   * the epoll set (on the `uring` and `aio` paths, fds polled directly need
   * no watch on the set). Called whenever waiters change.
   */
  arm(ref: boolean, set: boolean): void;
  /** No one waits any more. */
  disarm(): void;
  /** Whether something is still in flight that must return before close. */
  readonly busy: boolean;
  /** Whether a wait is armed that keeps the process alive. */
  readonly holding: boolean;
  /** Releases what the wake path holds (never the epoll fd). */
  close(): void;
}

/**
 * A kernel queue of one-shot polls whose completions signal an eventfd:
 * Linux AIO (`_wake_aio.ts`) or io_uring (`_wake_uring.ts`), under the
 * wake path of `_wake_direct.ts`.
 */
export interface PollQueue {
  readonly path: "uring" | "aio";
  /** The call that submits a poll, for errors. */
  readonly call: string;
  /** Whether there is room for direct polls (one per waited-on fd). */
  readonly direct: boolean;
  /**
   * Whether closing the queue ends its outstanding polls (io_uring), so a
   * wake path that closes need not cancel them and wait.
   */
  readonly closeEnds: boolean;
  /** Signals `efd` on every completion from now on. */
  attach(efd: number): void;
  /**
   * Submits a one-shot poll of `fd` for `events`, known as `data`, in
   * `slot` (0 to {@linkcode DIRECT_MAX} - 1), or in the slot of the epoll
   * set's poll (-1). Returns 0, or the errno of a refusal.
   */
  poll(data: number, fd: number, events: number, slot: number): number;
  /** Asks for the poll `data` in `slot` to end; it completes shortly. */
  cancel(data: number, slot: number): void;
  /** Whether no completion waits (false when in doubt). */
  readonly empty: boolean;
  /** Takes the completions there are into `into`. */
  take(into: Completions): void;
  /** Takes completions, waiting up to `ns` for at least one. */
  waitTake(into: Completions, ns: bigint): void;
  /** Releases what the queue holds. */
  close(): void;
}

/** Direct polls (one watched fd each) outstanding at once. */
export const DIRECT_MAX = 48;

/** Completions taken at once by a syscall. */
export const REAP_EVENTS = 16;

/**
 * A submission's data: a number unique in the process (`nextSeq`) times
 * {@linkcode DATA_STEP}, plus, for a direct poll, its slot times 4 and 1.
 * Low two bits 0: the epoll fd's poll. Numbers, not bigints: no allocation
 * and no map per wake-up.
 */
export const DATA_STEP = 256;
/**
 * Where the submission number starts over, so that data stays an exact
 * integer below 2^53. At one submission a µs (about what one costs) it takes
 * half a year to get there, and a completion that old is long taken.
 */
const SEQ_WRAP = 2 ** 44;
let seq = 0;

/** The next submission number of this process (or Worker). */
export function nextSeq(): number {
  seq = seq >= SEQ_WRAP ? 1 : seq + 1;
  return seq;
}

/** A submission's data read from a u64 (two u32 halves, little-endian). */
export function readData(view: DataView, at: number): number {
  return view.getUint32(at, true) +
    view.getUint32(at + 4, true) * 0x1_0000_0000;
}

/** Writes `data` as a u64. */
export function writeData(view: DataView, at: number, data: number): void {
  view.setUint32(at, data % 0x1_0000_0000, true);
  view.setUint32(at + 4, Math.floor(data / 0x1_0000_0000), true);
}

/**
 * Completions taken and not yet sorted: kept in typed arrays that are
 * reused, so that taking them allocates nothing.
 */
export class Completions {
  datas = new Float64Array(REAP_EVENTS);
  results = new Int32Array(REAP_EVENTS);
  count = 0;

  add(data: number, result: number): void {
    if (this.count === this.datas.length) {
      const datas = new Float64Array(this.count * 2);
      const results = new Int32Array(this.count * 2);
      datas.set(this.datas);
      results.set(this.results);
      this.datas = datas;
      this.results = results;
    }
    this.datas[this.count] = data;
    this.results[this.count] = result;
    this.count++;
  }
}

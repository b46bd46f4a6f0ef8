/**
 * What the poller asks of a wake path, the way it learns that its epoll set
 * has events: `aio` (`_wake_aio.ts`) or `ffi` (`_wake_ffi.ts`). See
 * `poller.ts` for both.
 *
 * @module
 */

/** Events taken from the epoll set at once. */
export const MAX_EVENTS = 256;
/** The `epoll_data` of the `ffi` path's eventfd, never a registration's. */
export const KICK_TOKEN = 0;

/** The name of a wake path: see {@linkcode wakePath}. */
export type WakePathName = "aio" | "ffi";

/** How the poller learns that its epoll set has events. */
export interface Wake {
  readonly path: WakePathName;
  /**
   * Makes sure `onEvents` runs once the set has events; `ref` says whether
   * that wait keeps the process alive, `set` whether any fd waits through
   * the epoll set (on the `aio` path, fds polled directly need no watch on
   * the set). Called whenever waiters change.
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

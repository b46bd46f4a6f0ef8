/**
 * The keys of what shared-memory queue ends show only to this package's
 * own code: symbols no entry point exports, on members the documentation
 * leaves out.
 *
 * @module
 */

/**
 * The views of a queue end's ring (header words and data), for tests that
 * play a hostile peer.
 */
export const ringViews: unique symbol = Symbol("shm queue ring");

/**
 * Where a queue end's pending wait is parked: `"bell"` (Deno's event loop
 * reads the doorbell), `"poller"`, or `undefined` when none is, for tests.
 */
export const parkedOn: unique symbol = Symbol("shm queue park");

/**
 * Whether a {@linkcode SharedMemory}'s pending waits keep the process alive
 * (`ref()`, `unref()`): what a mutex's watch on its holder's pidfd follows.
 */
export const memRefed: unique symbol = Symbol("shm memory ref");

/**
 * A {@linkcode SharedMemory}'s set of callbacks told of each `ref()` and
 * `unref()` that changes its state, with the new state.
 */
export const refWatchers: unique symbol = Symbol("shm memory ref watchers");

/**
 * Bursts: the sends of one turn leave together. A sender with a burst under
 * way looks {@linkcode IDLE_TICKS} microtask turns after it started, and
 * again every as many turns while it sent meanwhile; once it sent nothing
 * over such a stretch, its batch leaves.
 *
 * @module
 */

/**
 * Microtask turns without a send after which a gathered batch goes. A loop
 * of `await tx.send()` takes fewer between two sends, so its sends travel
 * together; a request awaited before the next send (a round trip, or a
 * `for await` echo loop, about 10 turns) leaves alone, without waiting.
 * (16 made round trips a quarter slower and one-way sends no faster.) A
 * send made after this thread took the last message of a packet or woke up
 * leaves alone however few turns passed (the outbox asks `heardMark()`): a
 * request and its reply in one thread take fewer than this.
 */
export const IDLE_TICKS = 4;

const resolved = Promise.resolve();

/**
 * Calls `check` once {@linkcode IDLE_TICKS} microtask turns have passed: a
 * chain of promises without handlers until the last, so that no JavaScript
 * runs in the turns between (a lone send, the most common, costs one call).
 */
export function afterIdleTicks(check: () => void): void {
  let turn = resolved;
  for (let i = 1; i < IDLE_TICKS; i++) turn = turn.then();
  turn.then(check);
}

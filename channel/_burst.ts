/**
 * Bursts: the sends of one turn leave together. One microtask chain, the
 * ticker, runs while senders are busy: it counts microtask turns and asks
 * each sender with a burst under way whether it has been idle for
 * {@linkcode IDLE_TICKS} turns; then that sender's batch leaves. The chain
 * ends once no burst is left.
 *
 * @module
 */

/**
 * Microtask turns without a send after which a gathered batch goes. A loop
 * of `await tx.send()` takes fewer between two sends, so its sends travel
 * together; a request awaited before the next send (a round trip, or a
 * `for await` echo loop, about 10 turns) leaves alone, without waiting.
 * (16 made round trips a quarter slower and one-way sends no faster.) A
 * send made after this thread took a channel message or woke up leaves
 * alone however few turns passed (the outbox asks `heardMark()`): a request
 * and its reply in one thread take fewer than this.
 */
export const IDLE_TICKS = 4;

/** Microtask turns counted by the ticker. */
let ticks = 0;
let ticking = false;
/**
 * Bursts under way: each returns true once its sender's burst ended. An
 * array, not a set: a lone send starts and ends a burst, and a set's
 * iterator and deletions allocate on each of the ticker's turns.
 */
const bursts: (() => boolean)[] = [];

function ticker(): void {
  ticks++;
  let kept = 0;
  // A burst that ends may start another (a send from inside its flush):
  // that one is appended and asked on the next turn.
  const n = bursts.length;
  for (let i = 0; i < n; i++) {
    const ended = bursts[i];
    if (!ended()) bursts[kept++] = ended;
  }
  for (let i = n; i < bursts.length; i++) bursts[kept++] = bursts[i];
  // pop() keeps the array's storage; setting its length would drop it, and
  // the next burst would allocate it again.
  while (bursts.length > kept) bursts.pop();
  if (bursts.length > 0) queueMicrotask(ticker);
  else ticking = false;
}

/** The ticker's count now: a sender notes it at each send. */
export function currentTick(): number {
  return ticks;
}

/** Whether {@linkcode IDLE_TICKS} turns passed since `tick`. */
export function idleSince(tick: number): boolean {
  return ticks - tick >= IDLE_TICKS;
}

/**
 * Registers a sender's burst with the ticker (started if it sleeps). A
 * sender registers again only after its burst ended.
 */
export function burstStarted(ended: () => boolean): void {
  bursts.push(ended);
  if (!ticking) {
    ticking = true;
    queueMicrotask(ticker);
  }
}

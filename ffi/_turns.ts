/**
 * Turns of the event loop that reached this thread's endpoints: each
 * wake-up the poller or a shared-memory bell takes from Deno's event loop,
 * and each turn yielded on purpose. Between two different counts the event
 * loop ran, so timers and other I/O had their turn: a slice of continuous
 * delivery (`_turn.ts`, the shm rings) starts over then instead of ending
 * in a turn of its own.
 *
 * @module
 */

let turns = 0;

/** Records that a callback of the event loop (a macrotask) is running. */
export function loopTurned(): void {
  turns++;
}

/** The count so far: compare two to tell whether the event loop turned. */
export function loopTurn(): number {
  return turns;
}

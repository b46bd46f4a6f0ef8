/**
 * Turns of the event loop that reached this thread's endpoints: each
 * wake-up the poller or a shared-memory bell takes from Deno's event loop,
 * and each turn yielded on purpose. Between two different counts the event
 * loop ran, so timers and other I/O had their turn: a slice of continuous
 * delivery (`_turn.ts`, the shm rings) starts over then instead of ending
 * in a turn of its own.
 *
 * Channel messages taken are counted apart (they may come without the
 * event loop turning), the last of each packet only (one taken with more of
 * its packet behind it was not awaited: a relay's next send is gathered): a
 * channel sender tells a send made after this thread heard from a peer (a
 * request or a reply, which goes at once) from one made right after another
 * send (gathered with it) by {@linkcode heardMark}.
 *
 * @module
 */

let turns = 0;
let heard = 0;

/** Records that a callback of the event loop (a macrotask) is running. */
export function loopTurned(): void {
  turns++;
}

/** The count so far: compare two to tell whether the event loop turned. */
export function loopTurn(): number {
  return turns;
}

/** Records that a channel message was taken, the last of its packet. */
export function channelMessageTaken(): void {
  heard++;
}

/**
 * A count that moves whenever this thread heard from a peer: a turn of the
 * event loop as above, or a packet's last message taken. Equal counts at two
 * sends mean nothing came in between.
 */
export function heardMark(): number {
  return turns + heard;
}

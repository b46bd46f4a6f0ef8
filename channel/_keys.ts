/**
 * The keys of what channel ends show only to the channel's own modules:
 * symbols, so that users see no such member and no module needs another's
 * class to recognise its ends.
 *
 * @module
 */

/** A Sender's mode (`MODE_VALUE` or `MODE_BYTES`); Senders only. */
export const senderMode: unique symbol = Symbol("Sender mode");
/**
 * A Receiver's mode (`MODE_VALUE` or `MODE_BYTES`) when it knows it, else
 * `undefined`; Receivers only.
 */
export const receiverMode: unique symbol = Symbol("Receiver mode");
/**
 * Freezes a Receiver that is being sent and returns its connections;
 * Receivers only.
 */
export const beginMove: unique symbol = Symbol("Receiver begin move");
/** Ends the move of a Receiver: sent (its copy here closes) or given up. */
export const endMove: unique symbol = Symbol("Receiver end move");
/** One look at a Receiver's connections, never waiting. */
export const pollOnce: unique symbol = Symbol("Receiver poll");
/** The size of the last message a Receiver took (see `_turn.ts`). */
export const lastBytes: unique symbol = Symbol("Receiver last bytes");
/** Waits until some connection of a Receiver may have something. */
export const waitReady: unique symbol = Symbol("Receiver wait");
/**
 * Whether a Receiver's last look stopped at its budget with frames still
 * queued (a wait would find the fd ready at once).
 */
export const lookFull: unique symbol = Symbol("Receiver look full");

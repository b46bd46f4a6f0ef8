/**
 * A sender's connection to its receiver: what the receiver keeps of each
 * one, and what both ends agree on (the modes, the bounds on capacity and
 * on connections, which errors mean the peer is gone).
 *
 * @module
 */

import { invalid } from "../_channel_error.ts";
import type { OwnedFd } from "../ffi/fd.ts";
import { ERRNO, type SystemError } from "../ffi/errors.ts";
import { seqpacketProblem } from "../_channel_wire.ts";

/** A channel of values (encoded by the codec). */
export const MODE_VALUE = 0;
/** A channel of `Uint8Array`s, without serialization. */
export const MODE_BYTES = 1;

/**
 * The capacity of a sender when none is given: large enough that a sender
 * streaming small messages seldom waits for the receiver's acknowledgements
 * (each one wakes the sender; the receiver acknowledges a quarter of the
 * capacity at once), small enough to bound what is in flight.
 */
export const DEFAULT_CAPACITY = 1024;

/** The largest capacity a sender may have. */
export const MAX_CAPACITY = 1_000_000;
/** The most sender connections one receiver keeps. */
export const MAX_CONNECTIONS = 4096;
/**
 * The most connections one sender may add (clones of it, clones of those,
 * ...) while they are open.
 */
export const MAX_ADDED = 1024;

/** One sender's connection, as the receiver sees it. */
export interface Connection {
  fd: OwnedFd;
  capacity: number;
  /** Messages taken since the last acknowledgement. */
  unacked: number;
  /**
   * The records of a batch not yet taken: `left` of them in `batch` from
   * `at` on (checked when the batch arrived).
   */
  batch?: Uint8Array;
  at?: number;
  left?: number;
  /** Whether a frame came already (a hello comes first or not at all). */
  started?: boolean;
  /** For a connection a sender added: the connection it all began with. */
  origin?: Connection;
  /** The socket's identity, once the receiver needed it. */
  identity?: string;
  /** Open connections added through this one and those it added. */
  added?: number;
}

/** Whether `error` says the peer of a connection is gone. */
export function isGone(error: unknown): boolean {
  const code = (error as Partial<SystemError>)?.errno;
  return code === ERRNO.EPIPE || code === ERRNO.ECONNRESET ||
    code === ERRNO.ENOTCONN || code === ERRNO.ECONNREFUSED;
}

/** Why a peer's fd cannot be a channel connection, as InvalidData. */
export function notSeqpacket(
  what: string,
  fd: number,
): Deno.errors.InvalidData {
  return invalid(
    `${what} is ${seqpacketProblem(fd)}, not a unix seqpacket socket`,
  );
}

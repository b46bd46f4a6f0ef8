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
import { seqpacketProblem, socketIdentity } from "../_channel_wire.ts";
import { peerOf } from "../_unix_peer.ts";
import { readHangup } from "../_scm.ts";

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

/**
 * The sockets the receivers of this process hold as connections, by
 * identity, with how many receivers hold each.
 */
const held = new Map<string, number>();

/** Counts `conn` among the connections held here (once it has an identity). */
export function holdConnection(conn: Connection): void {
  try {
    conn.identity ??= socketIdentity(conn.fd.fd);
  } catch {
    // Not an open socket: it is dropped at its first read.
    return;
  }
  held.set(conn.identity, (held.get(conn.identity) ?? 0) + 1);
}

/** No longer counts `conn` among the connections held here. */
export function releaseConnection(conn: Connection): void {
  const identity = conn.identity;
  if (identity === undefined) return;
  const count = held.get(identity);
  if (count === undefined) return;
  if (count <= 1) held.delete(identity);
  else held.set(identity, count - 1);
}

/** Why a socket handed over cannot be a channel connection. */
export interface ConnectionProblem {
  /** What is wrong, to follow "a new sender's connection". */
  why: string;
  /**
   * Whether no channel end sends such a socket (a peer that does is
   * dropped), rather than one this process cannot check.
   */
  hostile: boolean;
}

/**
 * Why `fd`, handed over as a new sender or as a moved receiver's
 * connection, cannot be a channel connection, or `undefined`. Its other end
 * is a sender, held by some process; a socket whose other end no process
 * can ever use or close would stay open here for good, costing the peer
 * nothing. So the socket must be connected (not a listener), its other end
 * must be a socket some process holds (a connection waiting in a
 * listener's queue, never accepted, is held by none), and that other end
 * must not be a connection that a receiver of this process holds, nor one
 * of `alongside` (both ends would be held here). A socket of another
 * network namespace cannot be looked up: it is refused too. All of this
 * is asked of the kernel's socket diagnostics; where they are missing,
 * none of it is checked. A socket whose other end is closed already (a
 * clone closed at once) is no problem: it is dropped at its first read.
 */
export function connectionProblem(
  fd: number,
  alongside?: ReadonlySet<string>,
): ConnectionProblem | undefined {
  const identity = socketIdentity(fd);
  const colon = identity.indexOf(":");
  const ino = Number(identity.slice(colon + 1));
  if (!Number.isSafeInteger(ino)) return undefined;
  const peer = peerOf(ino);
  switch (peer.kind) {
    case "unknown":
      return undefined;
    case "absent":
      return {
        why:
          "is a socket of another network namespace, whose other end cannot be checked",
        hostile: false,
      };
    case "none":
      return { why: "has no peer (a listening socket)", hostile: true };
  }
  if (peer.ino === 0) {
    return readHangup(fd) ? undefined : {
      why:
        "is connected to a socket no process holds (a connection a listener never accepted)",
      hostile: true,
    };
  }
  const other = `${identity.slice(0, colon)}:${peer.ino}`;
  if (held.has(other) || alongside?.has(other) === true) {
    return {
      why: "is connected to a connection a receiver of this process holds",
      hostile: true,
    };
  }
  return undefined;
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

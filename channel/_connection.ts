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
import { libc } from "../ffi/libc.ts";
import { RLIMIT, SIZEOF } from "../ffi/layout.ts";
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
  /**
   * Whether a peer put it here (a sender it added, or a connection of a
   * receiver it moved here), counted against {@linkcode pushedRoom}.
   */
  pushed?: boolean;
}

/**
 * The sockets the receivers of this thread hold as connections, by
 * identity, with how many receivers hold each. (A Worker has its own.)
 */
const held = new Map<string, number>();
/** Connections of this thread's receivers that peers put there. */
let pushed = 0;
/** The most of those, once known. */
let pushedMax: number | undefined;

/**
 * Whether this thread's receivers may take `n` more connections that a
 * peer puts there (senders it adds, receivers it moves here), all
 * receivers together: at most half the soft fd limit, and 8,192. Whatever a
 * peer finds that the checks of {@linkcode connectionProblem} cannot see,
 * it cannot make this thread hold more than that.
 */
export function pushedRoom(n: number): boolean {
  return pushed + n <= pushedLimit();
}

/**
 * The bound of {@linkcode pushedRoom}, from the soft fd limit when first
 * asked (a later `setrlimit` does not move it).
 */
export function pushedLimit(): number {
  if (pushedMax === undefined) {
    const limit = new BigUint64Array(SIZEOF.rlimit / 8);
    const soft = libc().getrlimit(RLIMIT.NOFILE, limit) === 0
      ? Number(limit[0] > 1_000_000n ? 1_000_000n : limit[0])
      : 1024;
    pushedMax = Math.max(1, Math.min(MAX_PUSHED, Math.floor(soft / 2)));
  }
  return pushedMax;
}

/** The most connections peers may put in this thread's receivers. */
export const MAX_PUSHED = 8192;

/** Counts `conn` among the connections held here (once it has an identity). */
export function holdConnection(conn: Connection): void {
  if (conn.pushed === true) pushed++;
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
  if (conn.pushed === true) {
    conn.pushed = false;
    pushed--;
  }
  const identity = conn.identity;
  if (identity === undefined) return;
  const count = held.get(identity);
  if (count === undefined) return;
  if (count <= 1) held.delete(identity);
  else held.set(identity, count - 1);
}

/** Whether a receiver of this thread holds the socket of `identity`. */
export function heldHere(identity: string): boolean {
  return held.has(identity);
}

/**
 * Why `fd` (whose {@linkcode socketIdentity} is `identity`), handed over
 * as a new sender or as a moved receiver's connection, cannot be a channel
 * connection, or `undefined`. Its other end
 * is a sender, held by some process; a socket whose other end no process
 * can ever use or close would stay open here for good, costing the peer
 * nothing. So the socket must be connected (not a listener), its other end
 * must be a socket some process holds (a connection waiting in a
 * listener's queue, never accepted, is held by none), and that other end
 * must not be a connection that a receiver of this thread holds, nor one
 * of `alongside` (both ends would be held here). All of this is asked of
 * the kernel's socket diagnostics; where they cannot answer (none in this
 * kernel or sandbox, a socket of another network namespace), nothing is
 * checked, and {@linkcode pushedRoom} still bounds what peers put here. A
 * socket whose other end is closed already (a clone closed at once) is no
 * problem: it is dropped at its first read.
 */
export function connectionProblem(
  fd: number,
  identity: string,
  alongside?: ReadonlySet<string>,
): string | undefined {
  const colon = identity.indexOf(":");
  const ino = Number(identity.slice(colon + 1));
  if (!Number.isSafeInteger(ino)) return undefined;
  const peer = peerOf(ino);
  switch (peer.kind) {
    case "unknown":
    case "absent":
      return undefined;
    case "none":
      return "has no peer (a listening socket)";
  }
  if (peer.ino === 0) {
    return readHangup(fd)
      ? undefined
      : "is connected to a socket no process holds (a connection a listener never accepted)";
  }
  const other = `${identity.slice(0, colon)}:${peer.ino}`;
  if (held.has(other) || alongside?.has(other) === true) {
    return "is connected to a connection a receiver of this thread holds";
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

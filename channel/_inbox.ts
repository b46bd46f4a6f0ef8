/**
 * What a receiver reads from: one connection per sender, looked at fairly
 * (in turn, or through an epoll set once there are many), a bounded number
 * of frames per look, the messages of batches that arrived, the
 * acknowledgements that give senders their credits back, and the senders
 * that senders add.
 *
 * @module
 */

import { OwnedFd } from "../ffi/fd.ts";
import { ERRNO, type SystemError } from "../ffi/errors.ts";
import { channelMessageTaken } from "../ffi/_turns.ts";
import { invalid } from "../_channel_error.ts";
import { closeAll, receiveMessage } from "../_scm.ts";
import {
  FRAME,
  getU32,
  HEADER,
  header,
  INLINE_MAX,
  MAX_FDS,
  putU32,
  RECORD_PREFIX,
  REFUSAL,
  sendFrame,
  socketIdentity,
} from "../_channel_wire.ts";
import { ConnSet } from "../_conn_set.ts";
import { DEFAULT_LIMITS } from "./_codec_limits.ts";
import {
  type Connection,
  connectionProblem,
  heldHere,
  holdConnection,
  isGone,
  MAX_ADDED,
  MAX_CONNECTIONS,
  pushedRoom,
  releaseConnection,
} from "./_connection.ts";
import type { FrameParser } from "./_parse.ts";

/** What one look at a receiver found. */
export type Polled<T> =
  | { kind: "value"; value: T }
  | { kind: "closed" }
  | { kind: "empty" };

/** What a look that found nothing, or no connection left, returns. */
const EMPTY: Polled<never> = { kind: "empty" };
const CLOSED: Polled<never> = { kind: "closed" };
/** A message taken by a look. */
type Taken = { kind: "value"; value: unknown };

/** The largest message a receiver takes (it refuses bigger memfds). */
const MAX_MESSAGE = 2 ** 30;
/** Frames one look at a receiver reads at most (wake-up work bound). */
const POLL_BUDGET = 64;
/**
 * Connections from which a receiver keeps its own epoll set: it waits on
 * that alone and reads only the connections it names.
 */
const SET_FROM = 8;

/** What a read returns after a control frame or a dropped connection. */
const AGAIN = Symbol("again");
/** Where every frame is read: one frame is parsed at a time. */
const scratch = new Uint8Array(new ArrayBuffer(INLINE_MAX + 64));
const ackFrame = header(FRAME.ACK);

function ackEvery(capacity: number): number {
  return Math.max(1, Math.floor(capacity / 4));
}

function sendAck(conn: Connection): void {
  if (conn.unacked === 0) return;
  putU32(ackFrame, 4, conn.unacked);
  try {
    if (sendFrame(conn.fd.fd, [ackFrame], [])) conn.unacked = 0;
  } catch {
    // The sender is gone; nobody waits for credits.
    conn.unacked = 0;
  }
}

/** Waits for any of `fds` to be readable (or one to close). */
async function waitAny(
  fds: readonly OwnedFd[],
  signal: AbortSignal | undefined,
): Promise<void> {
  if (fds.length === 1) return fds[0].wait("read", signal);
  const stop = new AbortController();
  const both = signal === undefined
    ? stop.signal
    : AbortSignal.any([stop.signal, signal]);
  try {
    await Promise.any(fds.map((fd) => fd.wait("read", both)));
  } catch (error) {
    signal?.throwIfAborted();
    throw (error as AggregateError).errors?.[0] ?? error;
  } finally {
    stop.abort();
  }
}

/** The connections of one receiver and what arrived on them. */
export class Inbox {
  #conns: Connection[];
  #frames: FrameParser;
  #next = 0;
  #ref = true;
  /** The largest message taken, in bytes. */
  maxMessage = MAX_MESSAGE;
  /** What decoding one message may build. */
  limits = DEFAULT_LIMITS;
  /** The connections by socket identity, once a sender added one. */
  #identities: Map<string, Connection> | undefined;
  /** The epoll set over the connections, once there are many. */
  #set: ConnSet<Connection> | undefined;
  /** Connections holding messages of a batch, in turn order. */
  #batched = new Set<Connection>();
  #socketsFirst = false;
  #full = false;

  /**
   * The channel's mode when the receiver knows it (`MODE_VALUE` or
   * `MODE_BYTES`): frames of the other kind are refused.
   */
  readonly mode: number | undefined;

  constructor(conns: Connection[], frames: FrameParser, mode?: number) {
    this.#conns = conns;
    this.#frames = frames;
    this.mode = mode;
    for (const conn of conns) {
      holdConnection(conn);
      if (conn.batch !== undefined) this.#batched.add(conn);
    }
  }

  /** The open connections, in the order they came. */
  get conns(): readonly Connection[] {
    return this.#conns;
  }

  /** The size of the last message taken, its memfd's included. */
  get lastBytes(): number {
    return this.#frames.lastBytes;
  }

  /**
   * One look at the connections, fairly rotated: the first
   * message found, "closed" when no connection is left, else "empty". It
   * reads at most {@linkcode POLL_BUDGET} frames (control frames and empty
   * reads included); the next look goes on where this one stopped.
   */
  poll(): Polled<unknown> {
    this.#full = false;
    const conns = this.#conns;
    if (this.#set === undefined) {
      // One connection in the middle of a batch: its next message, with no
      // look at the socket (the most common look of a busy receiver).
      if (conns.length === 1 && conns[0].batch !== undefined) {
        return this.#record(conns[0]);
      }
      if (conns.length >= SET_FROM) this.#makeSet();
    }
    return this.#set === undefined ? this.#pollEach() : this.#pollReady();
  }

  /**
   * Whether a look would only cost a syscall that a wait can make instead:
   * one connection, polled directly (its poll completes at once when a
   * frame is there), with nothing of a batch left here.
   */
  get armFirst(): boolean {
    if (this.#set !== undefined || this.#conns.length !== 1) return false;
    const conn = this.#conns[0];
    return conn.batch === undefined && conn.fd.waitsDirectly;
  }

  /**
   * Whether the last look stopped at its budget with frames still to read:
   * the receiver should then yield a macrotask turn and look again rather
   * than wait (a wait on a ready fd need not let the event loop turn).
   */
  get full(): boolean {
    return this.#full;
  }

  /** A look at each connection in turn. */
  #pollEach(): Polled<unknown> {
    const conns = this.#conns.slice();
    const n = conns.length;
    let budget = POLL_BUDGET;
    let k = 0;
    for (; k < n && budget > 0; k++) {
      const conn = conns[(this.#next + k) % n];
      while (budget > 0) {
        budget--;
        const got = this.#read(conn);
        if (got === undefined) break;
        if (got !== AGAIN) {
          this.#next = (this.#next + k + 1) % Math.max(1, this.#conns.length);
          return got;
        }
        // A control frame was taken, or the connection closed.
        if (conn.fd.closed) break;
      }
    }
    if (this.#conns.length === 0) return CLOSED;
    if (budget === 0) {
      this.#next = (this.#next + k) % this.#conns.length;
      this.#full = true;
    }
    return EMPTY;
  }

  /**
   * A look at the connections the epoll set names ready, after the
   * messages of batches already here.
   */
  #pollReady(): Polled<unknown> {
    // Batches already here and ready sockets take turns: neither starves.
    this.#socketsFirst = !this.#socketsFirst;
    if (this.#socketsFirst) {
      const polled = this.#pollSockets();
      if (polled.kind !== "empty") return polled;
    }
    for (const conn of this.#batched) {
      this.#batched.delete(conn);
      return this.#record(conn);
    }
    if (!this.#socketsFirst) return this.#pollSockets();
    return this.#conns.length === 0 ? CLOSED : EMPTY;
  }

  /** Reads the connections the epoll set names ready. */
  #pollSockets(): Polled<unknown> {
    let budget = POLL_BUDGET;
    for (const conn of this.#set!.ready()) {
      if (conn.fd.closed) continue;
      while (budget > 0) {
        budget--;
        const got = this.#read(conn);
        if (got === undefined) break;
        if (got !== AGAIN) return got;
        if (conn.fd.closed) break;
      }
      if (budget === 0) {
        this.#full = true;
        break;
      }
    }
    return this.#conns.length === 0 ? CLOSED : EMPTY;
  }

  /** Puts the connections in an epoll set (or goes on without one). */
  #makeSet(): void {
    let set: ConnSet<Connection> | undefined;
    try {
      set = new ConnSet<Connection>("Receiver");
      for (const conn of this.#conns) set.add(conn.fd.fd, conn);
    } catch {
      // Out of fds or memory: each connection is looked at in turn.
      set?.close();
      return;
    }
    if (!this.#ref) set.unref();
    this.#set = set;
  }

  /** Waits until some connection may have something. */
  wait(signal?: AbortSignal): Promise<void> {
    if (this.#set !== undefined) return this.#set.wait(signal);
    return waitAny(this.#conns.map((conn) => conn.fd), signal);
  }

  /**
   * {@linkcode wait} without a promise where there is one connection (see
   * `PollHandle.waitThen`): `ready` is called from the poller's dispatch.
   */
  waitThen(
    signal: AbortSignal | undefined,
    ready: () => void,
    fail: (error: unknown) => void,
  ): void {
    if (this.#set === undefined && this.#conns.length === 1) {
      return this.#conns[0].fd.waitThen("read", ready, fail, signal);
    }
    this.wait(signal).then(ready, fail);
  }

  #drop(conn: Connection): void {
    const at = this.#conns.indexOf(conn);
    if (at === -1) return;
    this.#conns.splice(at, 1);
    conn.batch = undefined;
    this.#batched.delete(conn);
    this.#set?.remove(conn.fd.fd, conn);
    if (conn.origin !== undefined) conn.origin.added!--;
    if (conn.identity !== undefined) this.#identities?.delete(conn.identity);
    releaseConnection(conn);
    conn.fd.close();
  }

  /**
   * Takes in the connection a sender added through `via`: once per socket,
   * within the limits (a refused sender is told why).
   */
  #addPeer(via: Connection, fd: number, capacity: number): void {
    const identities = this.#identities ??= new Map(
      this.#conns.map((conn) => {
        conn.identity ??= socketIdentity(conn.fd.fd);
        return [conn.identity, conn];
      }),
    );
    const identity = socketIdentity(fd);
    if (identities.has(identity)) {
      // The same socket again: the receiver holds it already.
      closeAll([fd]);
      return;
    }
    // A sender's clone is a new socket pair's end: held by no receiver
    // yet, and connected to one some process holds.
    const problem = heldHere(identity)
      ? "is held by another receiver of this thread already"
      : connectionProblem(fd, identity);
    if (problem !== undefined) {
      // No sender's clone is such a socket: the sender that sent it goes.
      closeAll([fd]);
      throw invalid(`a new sender's connection ${problem}`);
    }
    const origin = via.origin ?? via;
    const refusal = this.#conns.length >= MAX_CONNECTIONS
      ? REFUSAL.FULL
      : (origin.added ?? 0) >= MAX_ADDED
      ? REFUSAL.PER_SENDER
      : !pushedRoom(1)
      ? REFUSAL.THREAD_FULL
      : 0;
    if (refusal !== 0) {
      try {
        sendFrame(fd, [header(FRAME.REFUSED, refusal)], []);
      } catch {
        // The new sender is gone already.
      }
      closeAll([fd]);
      return;
    }
    const owned = new OwnedFd(fd, "Receiver");
    if (!this.#ref) owned.unref();
    origin.added = (origin.added ?? 0) + 1;
    const conn = {
      fd: owned,
      capacity,
      unacked: 0,
      origin,
      identity,
      pushed: true,
    };
    identities.set(identity, conn);
    this.#conns.push(conn);
    holdConnection(conn);
    try {
      this.#set?.add(owned.fd, conn);
    } catch {
      // The set cannot take it (out of memory): the sender is refused.
      this.#drop(conn);
    }
  }

  /**
   * Reads one frame from `conn`, or takes the next message of the batch it
   * is in: a value, `AGAIN` after dropping the connection or taking a
   * control frame, `undefined` when nothing is there. A malformed frame
   * drops the connection and throws.
   */
  #read(conn: Connection): Taken | typeof AGAIN | undefined {
    if (conn.batch !== undefined) return this.#record(conn);
    let got;
    try {
      got = receiveMessage(conn.fd.fd, scratch, MAX_FDS, false);
    } catch (error) {
      // A sender that closed with unread acks makes the kernel report
      // ECONNRESET once, ahead of the frames still queued: read on, end of
      // stream follows them.
      if ((error as Partial<SystemError>)?.errno === ERRNO.ECONNRESET) {
        return AGAIN;
      }
      this.#drop(conn);
      if (isGone(error)) return AGAIN;
      throw invalid((error as Error).message);
    }
    if (got === null) return undefined;
    if (got.bytes === 0 && got.fds.length === 0) {
      this.#drop(conn);
      return AGAIN;
    }
    // Until the fds are handed on (adopted, or to #message, which closes
    // them on failure), a refused frame closes them here.
    let handedOn = false;
    try {
      const first = conn.started !== true;
      conn.started = true;
      const type = this.#frames.check(
        scratch,
        got.bytes,
        got.flags,
        got.fds,
        first,
      );
      const a = getU32(scratch, 4);
      if (type === FRAME.ADD_PEER) {
        handedOn = true;
        this.#addPeer(conn, got.fds[0], a);
        return AGAIN;
      }
      if (type === FRAME.HELLO) {
        conn.capacity = a;
        return AGAIN;
      }
      if (type === FRAME.BATCH) {
        conn.batch = scratch.slice(HEADER, got.bytes);
        conn.at = 0;
        conn.left = a;
        // Its messages are out of the channel: the sender may send more
        // while they are taken from here.
        this.#took(conn, a);
        return this.#record(conn);
      }
      handedOn = true;
      const carried = got.fds.length;
      // The next send of this thread is an answer, or a new request: it
      // goes at once (see Outbox).
      channelMessageTaken();
      const value = this.#message(scratch, 0, got.bytes, got.fds);
      this.#took(conn);
      // A sender has few frames with fds in flight: each is acknowledged
      // at once, so that the sender may send the next.
      if (carried > 0) sendAck(conn);
      return { kind: "value", value };
    } catch (error) {
      if (!handedOn) closeAll(got.fds);
      this.#drop(conn);
      throw error;
    }
  }

  /** Takes the next message of the batch `conn` is in. */
  #record(conn: Connection): Taken {
    const batch = conn.batch!;
    const at = conn.at!;
    const start = at + RECORD_PREFIX;
    const end = start + getU32(batch, at);
    conn.left!--;
    if (conn.left === 0) {
      // The batch's last message: the next send may answer it (goes at
      // once). A send after one taken with more behind it, as a relay's,
      // is gathered with the sends after the next ones.
      channelMessageTaken();
      conn.batch = undefined;
      this.#batched.delete(conn);
    } else {
      conn.at = end;
      // Behind the other connections with batches: they take turns (alone,
      // it is already last).
      const batched = this.#batched;
      if (batched.size !== 1 || !batched.has(conn)) {
        batched.delete(conn);
        batched.add(conn);
      }
    }
    let value;
    try {
      value = this.#message(batch, start, end, []);
    } catch (error) {
      this.#drop(conn);
      throw error;
    }
    return { kind: "value", value };
  }

  /** Counts messages taken; acknowledges a quarter of the capacity at once. */
  #took(conn: Connection, n = 1): void {
    conn.unacked += n;
    if (conn.unacked >= ackEvery(conn.capacity)) sendAck(conn);
  }

  /** Decodes a message frame under the receiver's limits. */
  #message(
    buf: Uint8Array,
    start: number,
    end: number,
    fds: number[],
  ): unknown {
    return this.#frames.message(
      buf,
      start,
      end,
      fds,
      this.maxMessage,
      this.limits,
      this.mode,
    );
  }

  /** Lets pending receives keep the process alive (the default). */
  ref(): void {
    this.#ref = true;
    this.#set?.ref();
    for (const conn of this.#conns) conn.fd.ref();
  }

  /** Lets the process exit while a receive is pending. */
  unref(): void {
    this.#ref = false;
    this.#set?.unref();
    for (const conn of this.#conns) conn.fd.unref();
  }

  /** Closes every connection. */
  close(): void {
    this.#set?.close();
    this.#set = undefined;
    for (const conn of this.#conns) {
      releaseConnection(conn);
      conn.fd.close();
    }
    this.#conns = [];
    this.#batched.clear();
    this.#identities = undefined;
  }

  /** Gives up the one connection's fd, the set closed. */
  release(): number {
    this.#set?.close();
    this.#set = undefined;
    const conn = this.#conns[0];
    releaseConnection(conn);
    const fd = conn.fd.release();
    this.#conns = [];
    return fd;
  }
}

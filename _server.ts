/**
 * What both named servers share: their options, a fresh random name
 * listened on, the accept of one client with its checks, and the limits of
 * an accept.
 *
 * @module
 */

import { checkOptionsObject } from "./_socket_options.ts";
import { libc } from "./ffi/libc.ts";
import { OwnedFd } from "./ffi/fd.ts";
import { closedError } from "./ffi/errors.ts";
import { type DecodeLimits, Receiver } from "./channel.ts";
import { resolveLimits } from "./channel/_codec_limits.ts";
import { listen, type UnixListener, type UnixSocket } from "./socketpair.ts";
import { randomName } from "./_unix_addr.ts";
import { releaseFd } from "./_keys.ts";

export const PREFIX = "conduit-oneshot/";

/** Options for {@linkcode OneShotServer.accept} and {@linkcode ChannelServer.accept}. */
export interface ServerAcceptOptions {
  /** Aborting it rejects the pending accept with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Milliseconds to wait before rejecting with `Deno.errors.TimedOut`, at
   * most 2147483647 (a timer's limit; a larger one, `Infinity` included, is
   * a `RangeError`). Default: no limit.
   */
  timeout?: number;
}

/** Options for the servers. */
export interface ServerOptions {
  /**
   * Decides whether a connecting user may stay connected. Default: only
   * this process's own user (`getuid()`).
   */
  allowUid?: (uid: number) => boolean;
  /**
   * What decoding one message may build, for every receiver the server
   * returns (see `Receiver.limits`); `OneShotServer.accept` decodes the
   * first message under them. Fields left out keep their defaults.
   */
  limits?: DecodeLimits;
}

/** What a server shows when inspected: its listener's fd and state, its name. */
export function serverFields(
  listener: UnixListener,
  name: string,
  ref: boolean,
): object {
  if (listener.closed) return { state: "closed", name };
  return ref
    ? { fd: listener.rawFd, state: "open", name }
    : { fd: listener.rawFd, state: "open", ref: false, name };
}

/** A fresh server name: the prefix and 128 random bits. */
export function serverName(): string {
  return PREFIX + randomName(32);
}

/** The longest timer a runtime sets: 2^31 - 1 ms (about 24.8 days). */
const MAX_TIMEOUT = 2_147_483_647;

/**
 * A deadline and abort signal combined, cleared by `done()`. When the
 * deadline passes, the TimedOut error says what was still awaited, as
 * `waitingFor()` tells it at that moment.
 */
export function limits(
  options: ServerAcceptOptions,
  doing: string,
  waitingFor: () => string = () => "no client connected",
): { signal: AbortSignal; done(): void } {
  const { timeout } = options;
  if (timeout !== undefined && typeof timeout !== "number") {
    throw new TypeError(
      `Cannot ${doing}: timeout must be a number of milliseconds, got ${typeof timeout}`,
    );
  }
  if (timeout !== undefined && !(timeout >= 0 && timeout <= MAX_TIMEOUT)) {
    throw new RangeError(
      `Cannot ${doing}: timeout must be between 0 and ${MAX_TIMEOUT} milliseconds (a timer's limit), got ${timeout}`,
    );
  }
  const controller = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  if (timeout !== undefined) {
    timer = setTimeout(() => {
      controller.abort(
        new Deno.errors.TimedOut(
          `Cannot ${doing}: ${waitingFor()} within ${timeout} ms`,
        ),
      );
    }, timeout);
  }
  const signal = options.signal === undefined
    ? controller.signal
    : AbortSignal.any([controller.signal, options.signal]);
  return {
    signal,
    done() {
      clearTimeout(timer);
    },
  };
}

/**
 * Accepts connections until one of a user that `allowUid` lets in,
 * dropping the others, and returns it as a receiver. The client's hello
 * (its capacity) is its first frame; the receiver takes it before any
 * message.
 */
export async function acceptClient<T>(
  server: string,
  listener: UnixListener,
  signal: AbortSignal,
  allowUid: (uid: number) => boolean,
  decodeLimits: DecodeLimits,
): Promise<Receiver<T>> {
  for (;;) {
    let conn: UnixSocket;
    try {
      conn = await listener.accept({ signal });
    } catch (error) {
      // The listener is the server's own: a closed one is the server.
      if (error instanceof Deno.errors.BadResource && listener.closed) {
        throw closedError(server);
      }
      throw error;
    }
    try {
      if (!allowUid(conn.peerCredentials().uid)) {
        conn.close();
        continue;
      }
    } catch (error) {
      conn.close();
      throw error;
    }
    // Until the hello arrives, every message is acknowledged.
    const rx = new Receiver<T>([{
      fd: new OwnedFd(conn[releaseFd](), "Receiver"),
      capacity: 1,
      unacked: 0,
    }]);
    rx.limits = decodeLimits;
    return rx;
  }
}

export function sameUser(): (uid: number) => boolean {
  const me = libc().getuid();
  return (uid) => uid === me;
}

/** What both servers hold: a fresh random name, listened on. */
export interface Listening {
  /** The abstract name, for `connectOneShot()`. */
  name: string;
  /** The seqpacket listener on it. */
  listener: UnixListener;
  /** Whether a client of this uid may connect. */
  allow: (uid: number) => boolean;
  /** The limits of the receivers the server hands out. */
  decodeLimits: DecodeLimits;
}

/** What both servers start with: a fresh random name, listened on. */
export function listenOnRandomName(options: ServerOptions): Listening {
  checkOptionsObject(options, "create server");
  const decodeLimits = resolveLimits(options.limits, "create server");
  const allowUid = options.allowUid;
  if (allowUid !== undefined && typeof allowUid !== "function") {
    throw new TypeError(
      `Cannot create server: allowUid must be a function of a uid, got ${
        allowUid === null ? "null" : typeof allowUid
      }`,
    );
  }
  const name = serverName();
  const listener = listen({ abstract: name, type: "seqpacket" });
  return {
    name,
    listener,
    allow: allowUid ?? sameUser(),
    decodeLimits,
  };
}

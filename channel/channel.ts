/**
 * {@linkcode channel} and {@linkcode bytesChannel}: a new channel, as its
 * sender and its receiver.
 *
 * @module
 */

import { OwnedFd } from "../ffi/fd.ts";
import { closeAll } from "../_scm.ts";
import { markSocket, seqpacketPair } from "../_channel_wire.ts";
import { checkNumberOption, checkOptionsObject } from "../_socket_options.ts";
import { type DecodeLimits, resolveLimits } from "./_codec_limits.ts";
import {
  DEFAULT_CAPACITY,
  MAX_CAPACITY,
  MODE_BYTES,
  MODE_VALUE,
} from "./_connection.ts";
import { Receiver } from "./receiver.ts";
import { Sender } from "./sender.ts";

export type { DecodeLimits };

/** Options for {@linkcode channel} and {@linkcode bytesChannel}. */
export interface ChannelOptions {
  /**
   * Messages each sender may have in flight (sent but not yet read by the
   * receiving process) before `send()` waits. Default 1024, at most
   * 1_000_000. Of these, at most 64 may carry fds (a message too large for
   * one packet travels in a memfd; endpoints travel as fds): the kernel
   * counts each fd in flight against the sending user's fd limit.
   */
  capacity?: number;
}

/** Options for {@linkcode channel}. */
export interface ValueChannelOptions extends ChannelOptions {
  /**
   * What decoding one message may build, for the receiver: see
   * {@linkcode Receiver.limits}. Fields left out keep their defaults.
   */
  limits?: DecodeLimits;
}

function checkCapacity(value: number | undefined, doing: string): number {
  if (value === undefined) return DEFAULT_CAPACITY;
  checkNumberOption(value, "capacity", doing);
  if (!Number.isInteger(value) || value < 1 || value > MAX_CAPACITY) {
    throw new RangeError(
      `Cannot ${doing}: capacity must be an integer from 1 to ${MAX_CAPACITY}, got ${value}`,
    );
  }
  return value;
}

function makePair<T>(capacity: number, mode: number): [Sender<T>, Receiver<T>] {
  const [s, r] = seqpacketPair();
  try {
    markSocket(s, "s", mode, capacity);
    markSocket(r, "r", mode, capacity);
  } catch (error) {
    closeAll([s, r]);
    throw error;
  }
  return [
    new Sender<T>(s, capacity, mode),
    new Receiver<T>([{
      fd: new OwnedFd(r, "Receiver"),
      capacity,
      unacked: 0,
    }], mode),
  ];
}

/** A sender and its receiver; `using` closes both. */
export type Channel<T> = [Sender<T>, Receiver<T>] & Disposable;

function withDispose<T>(pair: [Sender<T>, Receiver<T>]): Channel<T> {
  return Object.assign(pair, {
    [Symbol.dispose]() {
      pair[0].close();
      pair[1].close();
    },
  });
}

/**
 * Creates a channel of structured-clone values (and endpoints). Keep one
 * end, send the other to another process inside a message, or hand it to a
 * child (`spawn({ fds })`, rebuilt there by `fromFd()`).
 *
 * @typeParam T The message type.
 * @param options The capacity of each sender, the receiver's limits.
 * @returns The sender and the receiver; `using` closes both.
 *
 * @example A bounded channel
 * ```ts
 * import { channel } from "@conduit/ipc/channel";
 *
 * using ch = channel<{ n: number; bytes: Uint8Array }>({ capacity: 2 });
 * const [tx, rx] = ch;
 * await tx.send({ n: 1, bytes: new Uint8Array(8) });
 * console.log((await rx.recv()).bytes.length); // 8
 * ```
 */
export function channel<T>(options: ValueChannelOptions = {}): Channel<T> {
  checkOptionsObject(options, "create channel");
  const capacity = checkCapacity(options.capacity, "create channel");
  const limits = resolveLimits(options.limits, "create channel");
  const pair = makePair<T>(capacity, MODE_VALUE);
  pair[1].limits = limits;
  return withDispose(pair);
}

/**
 * Creates a channel of `Uint8Array` messages: no serialization, each
 * message arrives whole as one `Uint8Array`, whatever its size.
 *
 * @param options The capacity of each sender.
 * @returns The sender and the receiver; `using` closes both.
 *
 * @example Bytes through a channel
 * ```ts
 * import { bytesChannel } from "@conduit/ipc/channel";
 *
 * using ch = bytesChannel();
 * const [tx, rx] = ch;
 * await tx.send(new Uint8Array([1, 2, 3]));
 * console.log(await rx.recv()); // Uint8Array(3) [ 1, 2, 3 ]
 * ```
 */
export function bytesChannel(
  options: ChannelOptions = {},
): Channel<Uint8Array> {
  checkOptionsObject(options, "create bytes channel");
  const capacity = checkCapacity(options.capacity, "create bytes channel");
  return withDispose(makePair<Uint8Array>(capacity, MODE_BYTES));
}

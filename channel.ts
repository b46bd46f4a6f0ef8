/**
 * Typed channels between processes, in the spirit of Servo's ipc-channel:
 * {@linkcode channel} gives a {@linkcode Sender} and a {@linkcode Receiver}
 * of structured-clone values (plus endpoints, which travel as fds and arrive
 * live), {@linkcode bytesChannel} carries `Uint8Array`s without
 * serialization, and {@linkcode ReceiverSet} waits on many receivers.
 *
 * - Each sender has its own `SOCK_SEQPACKET` connection to the receiver:
 *   a frame arrives whole or not at all, even when its sender is killed.
 *   Frames above 64 KiB travel in a sealed memfd, so messages of any size
 *   (up to `maxMessageBytes`, 1 GiB by default) arrive whole.
 * - Capacity is per sender: a sender may have `capacity` messages in the
 *   channel that the receiving process has not read yet; then `send()`
 *   waits until the receiver acknowledges some (credit-based flow control,
 *   acknowledged a quarter of the capacity at a time). Messages that
 *   travelled together count as read once their packet is read, though
 *   `recv()` hands them out one at a time.
 * - Messages sent back to back travel together: the first send of a turn
 *   goes out at once, the ones right after it are gathered and leave in
 *   one packet (in order) when the sends stop, when a packet is full, or
 *   before this thread spins waiting for anything. A receiver takes a
 *   whole packet per read and hands its messages out one by one.
 * - Waits spin briefly before parking, only while recent spins were
 *   answered (`spin: 0` turns that off, a number of µs makes it fixed),
 *   and a receive loop fed faster than it reads still yields a macrotask
 *   turn every 1,024 messages or 2 ms, so timers and other I/O run.
 * - `tx.clone()` makes another sender of the same channel; the receiver
 *   reports {@linkcode ChannelClosedError} once every sender, in every
 *   process, is closed.
 * - Values are encoded by a compact binary codec (not `node:v8`); the bytes
 *   of typed arrays, `DataView`s and `ArrayBuffer`s travel beside the
 *   encoded header, written straight from the caller's buffers. Strings
 *   travel as UTF-8, so a lone surrogate (half of a UTF-16 pair) arrives
 *   as U+FFFD, as through `TextEncoder`.
 * - Sending a `Sender` sends a new sender of its channel (the original stays
 *   usable); sending a `Receiver` moves it: this process's copy is closed.
 *   Other endpoints (pipe ends, sockets, shared memory, queue ends) arrive
 *   as copies of the same open file; this process keeps its own unless they
 *   are listed in `transfer`.
 * - Nothing from the peer is trusted: a malformed frame rejects the receive
 *   with `Deno.errors.InvalidData`, closes every fd that came with it, and
 *   drops that sender's connection. Every connection a peer hands over
 *   must be a unix seqpacket socket; the same socket handed over twice is
 *   kept once, and one sender may add at most 1024 others (a receiver
 *   holds at most 4096). A receive does a bounded amount of work per
 *   wake-up, however fast a peer writes.
 *
 * @example Values across a channel
 * ```ts
 * import { channel } from "@conduit/ipc/channel";
 *
 * const [tx, rx] = channel<{ n: number; when: Date }>();
 * await tx.send({ n: 1, when: new Date(0) });
 * console.log(await rx.recv()); // { n: 1, when: 1970-01-01T00:00:00.000Z }
 * tx.close();
 * rx.close();
 * ```
 *
 * @module
 */

export { ChannelClosedError } from "./_channel_error.ts";
export {
  bytesChannel,
  type Channel,
  channel,
  type ChannelOptions,
  type DecodeLimits,
  type ValueChannelOptions,
} from "./channel/channel.ts";
export { type ChannelSendOptions, Sender } from "./channel/sender.ts";
export { type ChannelRecvOptions, Receiver } from "./channel/receiver.ts";
export { ReceiverSet, type SelectResult } from "./channel/receiver_set.ts";
// Received fds become endpoints of every kind: see _received.ts.
import "./_adopt.ts";

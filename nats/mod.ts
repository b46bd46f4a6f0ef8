/**
 * Channels beyond one machine: {@linkcode natsSender} and
 * {@linkcode natsReceiver} carry the values of a typed channel over
 * [NATS](https://nats.io), on a subject, with the same codec as local
 * channels (maps, dates, bigints, typed arrays, nested objects, cycles) and
 * the same surface: `send`, `recv`, `tryRecv`, `for await`, `readable`,
 * `close`, and {@linkcode ChannelClosedError} once every sender is closed.
 * {@linkcode natsChannel} makes both ends on one connection.
 *
 * Endpoints (pipe ends, sockets, shared memory, local channel ends) are file
 * descriptors of one machine: a value that holds one fails at `send` with a
 * `DOMException` named `DataCloneError`.
 *
 * Delivery, as NATS gives it:
 *
 * - **Core NATS (the default): at most once.** A value reaches the receivers
 *   subscribed when it is published; nothing is stored. A receiver must be
 *   open before the values it should get are sent. Values in flight when the
 *   connection drops are lost (the receiver counts the gaps it sees in
 *   {@linkcode NatsReceiver.lost}); values sent while it is down wait in
 *   the sender (up to `capacity`, then `send()` waits), and both ends
 *   reconnect by themselves. The sender paces itself on round trips to the
 *   server, but nothing flows back from the receiver: one more than
 *   `maxPendingBytes` behind drops what comes next (counted in
 *   {@linkcode NatsReceiver.dropped}).
 * - **JetStream (`jetstream: true`): at least once, durable.** Values are
 *   stored in a stream on the server's disk (a work-queue stream of the
 *   subject, made on first use, unless one already binds the subject) and
 *   read through a durable consumer, so a receiver that starts later, or
 *   dies and comes back, gets everything not yet acknowledged. `send()`
 *   waits while `capacity` values are not yet acknowledged by the server
 *   (backpressure through acknowledgements); after a reconnection, once
 *   the stream answers again, values it did not acknowledge are sent again,
 *   in order (it drops the copies within its two-minute duplicate window,
 *   and the receiver drops any copy of a value it already took among each
 *   sender's last 8,192, such as one the stream stored twice around a
 *   server restart).
 *   The receiver acknowledges what it has taken as it asks for more: every
 *   64 values while they keep coming, at once when it has to wait, and when
 *   it closes. A receiver that dies gets again what it took since its last
 *   acknowledgement (the value it was handling, and at most 63 before it).
 * - **Order:** per subject, the order the server received them; each
 *   sender's values arrive in the order sent. Values of different senders
 *   interleave.
 *
 * End of stream: each sender's `close()` publishes an end-of-stream marker;
 * a receiver reports {@linkcode ChannelClosedError} once every sender it
 * has heard from has closed (set `endWithSenders: false` for a receiver
 * that outlives its senders). With core NATS the marker can be lost like any
 * message: pass a signal to bound a wait.
 *
 * Needs `--allow-net` for the server's address only.
 *
 * @example Both ends on one connection
 * ```ts ignore
 * import { natsChannel } from "@conduit/ipc/nats";
 *
 * const [tx, rx] = await natsChannel<{ n: number; when: Date }>("jobs", {
 *   servers: "127.0.0.1:4222",
 * });
 * await tx.send({ n: 1, when: new Date(0) });
 * console.log(await rx.recv()); // { n: 1, when: 1970-01-01T00:00:00.000Z }
 * await tx.close();
 * await rx.close();
 * ```
 *
 * @module
 */

export { ChannelClosedError } from "../_channel_error.ts";
export type { DecodeLimits } from "../channel/_codec_limits.ts";
export type {
  NatsChannelOptions,
  NatsConnectOptions,
  NatsJetStreamOptions,
  NatsReceiverOptions,
  NatsRecvOptions,
  NatsSenderOptions,
  NatsSendOptions,
} from "./options.ts";
export { NatsSender } from "./sender.ts";
export { NatsReceiver } from "./receiver.ts";
export { natsChannel, natsReceiver, natsSender } from "./open.ts";

/**
 * The options of NATS channels: how to reach the server, JetStream
 * settings, and the options of each end and of its calls.
 *
 * @module
 */

import type { DecodeLimits } from "../channel/_codec_limits.ts";

/** How to reach the NATS server. */
export interface NatsConnectOptions {
  /**
   * The server or servers, such as `"nats.example.com:4222"`. Default
   * `"127.0.0.1:4222"`.
   */
  servers?: string | string[];
  /**
   * A connection to use instead: a `NatsConnection` from `connect()` of the
   * `nats` package (`npm:nats@2.29`), for credentials, TLS and the like.
   * The ends never close it.
   */
  connection?: object;
  /** The connection's name, as the server's monitoring shows it. */
  name?: string;
  /** Milliseconds between attempts to reconnect. Default 250. */
  reconnectTimeWait?: number;
  /** Attempts to reconnect before giving up; -1 (the default) never gives up. */
  maxReconnectAttempts?: number;
}

/** JetStream settings of a channel. */
export interface NatsJetStreamOptions {
  /**
   * The stream. Default: the stream that already binds the subject, else a
   * new work-queue stream named after the subject.
   */
  stream?: string;
  /** The receiver's durable consumer. Default `"receiver"`. */
  durable?: string;
  /**
   * Milliseconds the server waits for a delivered value's acknowledgement
   * before it delivers the value again. Default 30_000.
   */
  ackWait?: number;
}

/** Options for {@linkcode natsSender}. */
export interface NatsSenderOptions extends NatsConnectOptions {
  /** Store values in a JetStream stream (at least once, durable). */
  jetstream?: boolean | NatsJetStreamOptions;
  /**
   * With JetStream, the values `send()` may have unacknowledged before it
   * waits; with core NATS, the values between two round trips to the server
   * (which bound what the client buffers). Default 256.
   */
  capacity?: number;
}

/** Options for {@linkcode natsReceiver}. */
export interface NatsReceiverOptions extends NatsConnectOptions {
  /** Read from a JetStream stream through a durable consumer. */
  jetstream?: boolean | NatsJetStreamOptions;
  /** With JetStream, the values fetched ahead of `recv()`. Default 256. */
  capacity?: number;
  /**
   * With core NATS, the bytes a receiver holds that `recv()` has not taken,
   * each value counted with 256 bytes more for what holding it costs (so
   * empty values count too); beyond it, arriving values are dropped (a value
   * that finds nothing held is always taken). A positive integer; default
   * 64 MiB.
   */
  maxPendingBytes?: number;
  /**
   * Report {@linkcode ChannelClosedError} once every sender heard from has
   * closed. Default true.
   */
  endWithSenders?: boolean;
  /**
   * What decoding one value may build: see {@linkcode NatsReceiver.limits}.
   * Fields left out keep their defaults.
   */
  limits?: DecodeLimits;
}

/** Options for {@linkcode natsChannel}. */
export interface NatsChannelOptions
  extends NatsSenderOptions, NatsReceiverOptions {}

/** Options for {@linkcode NatsSender.send}. */
export interface NatsSendOptions {
  /** Aborting it while the send still waits gives the send up. */
  signal?: AbortSignal;
}

/** Options for {@linkcode NatsReceiver.recv}. */
export interface NatsRecvOptions {
  /** Aborting it rejects the pending receive with the signal's reason. */
  signal?: AbortSignal;
}

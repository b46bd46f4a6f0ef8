/**
 * Opening NATS channel ends: {@linkcode natsSender},
 * {@linkcode natsReceiver} and {@linkcode natsChannel}, each on a
 * connection of its own or on the one it is given.
 *
 * @module
 */

import { resolveLimits } from "../channel/_codec_limits.ts";
import { Link } from "./_link.ts";
import { type ConsumerSpec, ensureStream } from "./_jetstream.ts";
import {
  checkCapacity,
  checkDurable,
  checkMaxPending,
  checkServers,
  checkSubject,
} from "./_checks.ts";
import { checkOptionsObject } from "../_socket_options.ts";
import type {
  NatsChannelOptions,
  NatsConnectOptions,
  NatsJetStreamOptions,
  NatsReceiverOptions,
  NatsSenderOptions,
} from "./options.ts";
import { NatsReceiver } from "./receiver.ts";
import { NatsSender, type Stored } from "./sender.ts";
import { startReceiver } from "./_keys.ts";

function jetstreamOptions(
  value: boolean | NatsJetStreamOptions | undefined,
): NatsJetStreamOptions | undefined {
  if (value === undefined || value === false) return undefined;
  return value === true ? {} : value;
}

async function openReceiver<T>(
  link: Link,
  subject: string,
  options: NatsReceiverOptions,
): Promise<NatsReceiver<T>> {
  const jsOptions = jetstreamOptions(options.jetstream);
  if (jsOptions === undefined) {
    const receiver = new NatsReceiver<T>(link, subject, options, undefined);
    // The subscription is on the server before anyone is told to send.
    await link.nc.flush();
    return receiver;
  }
  const capacity = checkCapacity(options.capacity, "open NATS receiver");
  const jsm = await link.nc.jetstreamManager();
  const ref = await ensureStream(jsm, subject, jsOptions.stream);
  const spec: ConsumerSpec = {
    subject,
    durable: jsOptions.durable ?? "receiver",
    maxAckPending: Math.max(1000, capacity * 4),
    ackWaitMs: jsOptions.ackWait ?? 30_000,
  };
  const receiver = new NatsReceiver<T>(link, subject, options, {
    jsm,
    ref,
    spec,
  });
  try {
    await receiver[startReceiver]();
  } catch (error) {
    await receiver.close();
    throw error;
  }
  return receiver;
}

async function openSender<T>(
  link: Link,
  subject: string,
  options: NatsSenderOptions,
): Promise<NatsSender<T>> {
  const capacity = checkCapacity(options.capacity, "open NATS sender");
  const jsOptions = jetstreamOptions(options.jetstream);
  let stored: Stored | undefined;
  if (jsOptions !== undefined) {
    const jsm = await link.nc.jetstreamManager();
    stored = { ref: await ensureStream(jsm, subject, jsOptions.stream), jsm };
  }
  return new NatsSender<T>(link, subject, capacity, stored);
}

async function withLink<R>(
  options: NatsConnectOptions,
  open: (link: Link) => Promise<R>,
): Promise<R> {
  const link = await Link.open(options);
  try {
    return await open(link);
  } catch (error) {
    await link.abandon();
    throw error;
  }
}

/**
 * Opens the sending end of a channel on `subject`.
 *
 * @typeParam T The message type.
 * @param subject The NATS subject, such as `"orders.eu"` (no wildcards).
 * @param options The server, JetStream, capacity.
 * @returns The sender.
 * @throws {TypeError} For an invalid subject.
 *
 * @example A producer on one machine
 * ```ts ignore
 * import { natsSender } from "@conduit/ipc/nats";
 *
 * await using tx = await natsSender<{ id: number }>("orders", {
 *   servers: "nats.example.com:4222",
 *   jetstream: true,
 * });
 * for (let id = 0; id < 10; id++) await tx.send({ id });
 * ```
 */
export function natsSender<T>(
  subject: string,
  options: NatsSenderOptions = {},
): Promise<NatsSender<T>> {
  try {
    checkOptionsObject(options, "open NATS sender");
    checkServers(options.servers, "open NATS sender");
    checkSubject(subject, "open NATS sender");
    checkCapacity(options.capacity, "open NATS sender");
  } catch (error) {
    return Promise.reject(error);
  }
  return withLink(options, (link) => openSender<T>(link, subject, options));
}

/**
 * Opens the receiving end of a channel on `subject`. With core NATS, the
 * subscription is on the server when this resolves: values sent after that
 * arrive.
 *
 * @typeParam T The message type.
 * @param subject The NATS subject (no wildcards).
 * @param options The server, JetStream, capacity.
 * @returns The receiver.
 * @throws {TypeError} For an invalid subject, or a durable consumer that
 * reads another subject.
 *
 * @example A consumer on another machine
 * ```ts ignore
 * import { natsReceiver } from "@conduit/ipc/nats";
 *
 * await using rx = await natsReceiver<{ id: number }>("orders", {
 *   servers: "nats.example.com:4222",
 *   jetstream: { durable: "billing" },
 * });
 * for await (const order of rx) console.log(order.id);
 * ```
 */
export function natsReceiver<T>(
  subject: string,
  options: NatsReceiverOptions = {},
): Promise<NatsReceiver<T>> {
  try {
    checkOptionsObject(options, "open NATS receiver");
    checkServers(options.servers, "open NATS receiver");
    checkSubject(subject, "open NATS receiver");
    checkCapacity(options.capacity, "open NATS receiver");
    resolveLimits(options.limits, "open NATS receiver");
    checkMaxPending(options.maxPendingBytes, 0, "open NATS receiver");
    const js = jetstreamOptions(options.jetstream);
    checkDurable(js?.durable, "open NATS receiver");
  } catch (error) {
    return Promise.reject(error);
  }
  return withLink(options, (link) => openReceiver<T>(link, subject, options));
}

/**
 * Opens both ends of a channel on `subject`, on one connection (closed
 * when both ends are). The receiver is ready before the sender exists.
 *
 * @typeParam T The message type.
 * @param subject The NATS subject (no wildcards).
 * @param options The server, JetStream, capacity.
 * @returns The sender and the receiver.
 *
 * @example Round trip through the server
 * ```ts ignore
 * import { natsChannel } from "@conduit/ipc/nats";
 *
 * const [tx, rx] = await natsChannel<bigint>("big", { jetstream: true });
 * await tx.send(2n ** 100n);
 * console.log(await rx.recv()); // 1267650600228229401496703205376n
 * await tx.close();
 * await rx.close();
 * ```
 */
export function natsChannel<T>(
  subject: string,
  options: NatsChannelOptions = {},
): Promise<[NatsSender<T>, NatsReceiver<T>]> {
  try {
    checkOptionsObject(options, "open NATS channel");
    checkServers(options.servers, "open NATS channel");
    checkSubject(subject, "open NATS channel");
    checkCapacity(options.capacity, "open NATS channel");
    resolveLimits(options.limits, "open NATS channel");
    checkMaxPending(options.maxPendingBytes, 0, "open NATS channel");
    const js = jetstreamOptions(options.jetstream);
    checkDurable(js?.durable, "open NATS channel");
  } catch (error) {
    return Promise.reject(error);
  }
  return withLink(options, async (link) => {
    const receiver = await openReceiver<T>(link, subject, options);
    try {
      return [await openSender<T>(link, subject, options), receiver];
    } catch (error) {
      await receiver.close();
      throw error;
    }
  });
}

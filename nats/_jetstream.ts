/**
 * The JetStream side of NATS channels: the stream that stores a subject, the
 * durable consumer that a receiver reads through, and the few protocol
 * details the ends handle themselves (publish acknowledgements, pull
 * requests, delivery metadata), so that order and acknowledgement stay under
 * their control across reconnections.
 *
 * @module
 */

import {
  AckPolicy,
  DeliverPolicy,
  type JetStreamManager,
  type NatsConnection,
  RetentionPolicy,
  StorageType,
} from "nats";

/** Where a channel's stream and consumer are. */
/** Pause before trying a JetStream set-up step again. */
export const RETRY_MS = 250;

export interface StreamRef {
  /** The stream's name. */
  stream: string;
  /** Whether it removes a message once acknowledged (its own stream). */
  workqueue: boolean;
}

/** The JetStream API prefix (no domains). */
const API = "$JS.API";

/** A stream name for a subject: what it may hold, plus a hash of the rest. */
export function streamNameFor(subject: string): string {
  let hash = 0x811c9dc5;
  for (let i = 0; i < subject.length; i++) {
    hash = Math.imul(hash ^ subject.charCodeAt(i), 0x01000193) >>> 0;
  }
  const safe = subject.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 64);
  return `CONDUIT_${safe}_${hash.toString(16).padStart(8, "0")}`;
}

function apiCode(error: unknown): number | undefined {
  return (error as { api_error?: { err_code?: number } })?.api_error?.err_code;
}

/**
 * Whether JetStream refused a request (as opposed to a request that timed
 * out or a connection that dropped, which are worth another try).
 */
export function isRefusal(error: unknown): boolean {
  return apiCode(error) !== undefined || error instanceof TypeError;
}

const STREAM_NOT_FOUND = 10059;
const CONSUMER_NOT_FOUND = 10014;

/**
 * The stream that takes `subject`: the one named `name` or the one that
 * already binds the subject, else a new work-queue stream on file storage
 * that binds only this subject.
 */
export async function ensureStream(
  jsm: JetStreamManager,
  subject: string,
  name: string | undefined,
): Promise<StreamRef> {
  if (name === undefined) {
    try {
      name = await jsm.streams.find(subject);
    } catch {
      name = streamNameFor(subject);
    }
  }
  for (let attempt = 0;; attempt++) {
    try {
      const info = await jsm.streams.info(name);
      return {
        stream: name,
        workqueue: info.config.retention === RetentionPolicy.Workqueue,
      };
    } catch (error) {
      if (apiCode(error) !== STREAM_NOT_FOUND || attempt > 0) throw error;
    }
    try {
      await jsm.streams.add({
        name,
        subjects: [subject],
        retention: RetentionPolicy.Workqueue,
        storage: StorageType.File,
      });
    } catch {
      // Another end created it meanwhile: read it on the next pass.
    }
  }
}

/** Consumer settings a receiver asks for. */
export interface ConsumerSpec {
  subject: string;
  durable: string;
  maxAckPending: number;
  ackWaitMs: number;
}

/** Thrown inside {@linkcode resetConsumer} for a consumer half deleted. */
const CONSUMER_GONE = new Error("consumer gone");

/**
 * Makes the durable consumer deliver, in stream order, everything not yet
 * acknowledged. A consumer with deliveries still unacknowledged (a receiver
 * that died, or a connection that dropped) would send those again only when
 * their ack wait runs out, after newer messages; so it is made anew from its
 * acknowledgement floor, and the server delivers again from there at once.
 * One receiver per durable name at a time: this resets any other.
 */
export async function resetConsumer(
  jsm: JetStreamManager,
  ref: StreamRef,
  spec: ConsumerSpec,
): Promise<void> {
  let start = 0;
  try {
    const info = await jsm.consumers.info(ref.stream, spec.durable);
    // A consumer being deleted can answer without its config: made anew.
    if (info?.config === undefined) throw CONSUMER_GONE;
    if (info.config.filter_subject !== spec.subject) {
      throw new TypeError(
        `Cannot open NATS receiver: consumer ${spec.durable} of stream ${ref.stream} reads ${info.config.filter_subject}, not ${spec.subject}`,
      );
    }
    if (info.config.ack_policy !== AckPolicy.Explicit) {
      throw new TypeError(
        `Cannot open NATS receiver: consumer ${spec.durable} of stream ${ref.stream} has ack policy ${info.config.ack_policy}, not explicit`,
      );
    }
    if (info.num_ack_pending === 0 && info.num_redelivered === 0) return;
    start = info.ack_floor.stream_seq + 1;
    await jsm.consumers.delete(ref.stream, spec.durable);
  } catch (error) {
    if (error !== CONSUMER_GONE && apiCode(error) !== CONSUMER_NOT_FOUND) {
      throw error;
    }
  }
  const fromFloor = start > 0 && !ref.workqueue;
  await jsm.consumers.add(ref.stream, {
    durable_name: spec.durable,
    filter_subject: spec.subject,
    // A work-queue stream requires explicit acknowledgements.
    ack_policy: AckPolicy.Explicit,
    deliver_policy: fromFloor ? DeliverPolicy.StartSequence : DeliverPolicy.All,
    ...(fromFloor ? { opt_start_seq: start } : {}),
    max_ack_pending: spec.maxAckPending,
    ack_wait: spec.ackWaitMs * 1_000_000,
  });
}

/** Asks the consumer for up to `batch` messages, delivered to `inbox`. */
export function pull(
  nc: NatsConnection,
  ref: StreamRef,
  durable: string,
  inbox: string,
  batch: number,
  expiresMs: number,
): void {
  nc.publish(
    `${API}.CONSUMER.MSG.NEXT.${ref.stream}.${durable}`,
    JSON.stringify({ batch, expires: expiresMs * 1_000_000 }),
    { reply: inbox },
  );
}

const DIGITS = /^\d+$/;

/**
 * The stream sequence of a delivered message, from its ack subject (v1:
 * `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`,
 * v2 adds a domain and an account hash after `ACK` and a token at the end),
 * or `undefined` when the subject is no ack subject.
 */
export function streamSeqOf(reply: string | undefined): number | undefined {
  if (reply === undefined || !reply.startsWith("$JS.ACK.")) return undefined;
  const tokens = reply.split(".");
  const at = tokens.length === 9 ? 5 : tokens.length >= 11 ? 7 : -1;
  if (at === -1 || !DIGITS.test(tokens[at])) return undefined;
  const seq = Number(tokens[at]);
  return Number.isSafeInteger(seq) && seq > 0 ? seq : undefined;
}

/** What a publish acknowledgement says. */
export type PubAck =
  | { ok: true; duplicate: boolean }
  | { ok: false; error: string };

/** Reads a publish acknowledgement (JSON from the stream). */
export function parsePubAck(data: Uint8Array): PubAck {
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder().decode(data));
  } catch {
    return { ok: false, error: "the acknowledgement is not JSON" };
  }
  const ack = body as {
    stream?: unknown;
    seq?: unknown;
    duplicate?: unknown;
    error?: { description?: unknown; code?: unknown };
  };
  if (ack?.error !== undefined) {
    return {
      ok: false,
      error: String(ack.error?.description ?? ack.error?.code ?? "error"),
    };
  }
  if (typeof ack?.seq !== "number" || typeof ack?.stream !== "string") {
    return { ok: false, error: "the acknowledgement names no sequence" };
  }
  return { ok: true, duplicate: ack.duplicate === true };
}

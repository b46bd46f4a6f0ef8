/**
 * What `shm_server.ts` and `shm_client.ts` say to each other.
 *
 * 1. The client connects to the server's name (`connectOneShot`, a
 *    `ChannelServer`, same user only) and sends a {@linkcode Hello} holding
 *    the sender of a channel of its own.
 * 2. The server makes two shared-memory queues for this client alone and
 *    sends their ends back on that channel in a {@linkcode Grant}: they
 *    cross as fds (SCM_RIGHTS) and arrive as live endpoints.
 * 3. From then on, requests and replies go through shared memory only.
 *    A request is a u32 sequence number and a payload; its reply is the
 *    sequence number, the payload's length and its FNV-1a checksum, which
 *    the client compares with its own.
 *
 * @module
 */

import type { Sender, ShmReceiver, ShmSender } from "../mod.ts";

/** The client's first message on the server's channel. */
export interface Hello {
  /** The client's pid, as it says. */
  pid: number;
  /** Where the server sends the {@linkcode Grant}. */
  reply: Sender<Grant>;
}

/** The server's answer: this client's two queues. */
export interface Grant {
  /** The server's number for this client. */
  id: number;
  /** Requests go here. */
  toServer: ShmSender;
  /** Replies come from here. */
  fromServer: ShmReceiver;
}

/** Bytes of a reply. */
export const REPLY_BYTES = 12;

/** FNV-1a, 32 bits. */
export function fnv1a(bytes: Uint8Array, from = 0): number {
  let hash = 0x811c9dc5;
  for (let i = from; i < bytes.length; i++) {
    hash = Math.imul(hash ^ bytes[i], 0x01000193);
  }
  return hash >>> 0;
}

/** A request: sequence number, then the payload. */
export function request(seq: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + payload.length);
  new DataView(out.buffer).setUint32(0, seq, true);
  out.set(payload, 4);
  return out;
}

/** The reply to a request, or `undefined` when it is too short to be one. */
export function answer(message: Uint8Array): Uint8Array | undefined {
  if (message.length < 4) return undefined;
  const out = new Uint8Array(REPLY_BYTES);
  const view = new DataView(out.buffer);
  view.setUint32(
    0,
    new DataView(message.buffer, message.byteOffset).getUint32(0, true),
    true,
  );
  view.setUint32(4, message.length - 4, true);
  view.setUint32(8, fnv1a(message, 4), true);
  return out;
}

/** A reply's fields, or `undefined` when it is malformed. */
export function readReply(
  message: Uint8Array,
): { seq: number; length: number; checksum: number } | undefined {
  if (message.length !== REPLY_BYTES) return undefined;
  const view = new DataView(message.buffer, message.byteOffset, REPLY_BYTES);
  return {
    seq: view.getUint32(0, true),
    length: view.getUint32(4, true),
    checksum: view.getUint32(8, true),
  };
}

/** A small deterministic generator, so a client's payloads can be redone. */
export function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

/** A non-negative integer option, checked. */
export function count(
  text: string | undefined,
  name: string,
  fallback: number,
): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(
      `--${name} must be a non-negative integer, got ${text}`,
    );
  }
  return value;
}

/**
 * A client's side of the exchange, whatever carries it: random requests
 * of up to `size` bytes, at most `window` of them unanswered, each reply
 * checked against the request it answers.
 */
export class RequestWindow {
  /** Payload bytes sent so far. */
  bytes = 0;
  #digest = 0;
  #credit: number;
  #gotCredit: (() => void) | undefined;
  #next: () => number;
  #size: number;
  #expected: { length: number; checksum: number }[] = [];

  /**
   * @param seed Seeds the payloads (a client's pid).
   * @param size The largest payload, in bytes.
   * @param window How many requests may be unanswered.
   */
  constructor(seed: number, size: number, window: number) {
    this.#next = random(seed);
    this.#size = size;
    this.#credit = window;
  }

  /** The XOR of every payload's checksum, as 8 hex digits. */
  get digest(): string {
    return this.#digest.toString(16).padStart(8, "0");
  }

  /** Waits for room in the window, then makes request `seq`. */
  async next(seq: number): Promise<Uint8Array> {
    while (this.#credit === 0) {
      await new Promise<void>((resolve) => this.#gotCredit = resolve);
    }
    this.#credit--;
    const next = this.#next;
    const payload = new Uint8Array(1 + Math.floor(next() * this.#size));
    for (let i = 0; i < payload.length; i += 64) payload[i] = next() * 256;
    const checksum = fnv1a(payload);
    this.#expected.push({ length: payload.length, checksum });
    this.bytes += payload.length;
    this.#digest = (this.#digest ^ checksum) >>> 0;
    return request(seq, payload);
  }

  /**
   * Checks the reply to request `seq` and opens the window by one.
   *
   * @throws {Error} When the reply does not answer that request.
   */
  answered(seq: number, message: Uint8Array): void {
    const reply = readReply(message);
    const want = this.#expected[seq];
    if (
      reply === undefined || reply.seq !== seq ||
      reply.length !== want.length || reply.checksum !== want.checksum
    ) {
      throw new Error(
        `Reply ${seq} does not match: ${JSON.stringify(reply)}, expected ${
          JSON.stringify(want)
        }`,
      );
    }
    this.#credit++;
    this.#gotCredit?.();
    this.#gotCredit = undefined;
  }
}

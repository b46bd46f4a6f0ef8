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

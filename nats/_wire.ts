/**
 * What travels in one NATS message of a channel: a small header (kind,
 * version, the sender's id and its sequence number), then for a value the
 * channel codec's head and blobs, in one payload.
 *
 * ```
 * u8 kind (1 value, 2 end of stream) | u8 version | 8 bytes sender id
 * u64 seq (little-endian, below 2^53) | value: varint tree length,
 * varint head length, head, blobs
 * ```
 *
 * The sequence number has a fixed width so that a sender numbers a message
 * only when it publishes it ({@linkcode setSeq}).
 *
 * Nothing read from a message is trusted: every length is checked against
 * the payload, and a malformed one throws `Deno.errors.InvalidData`.
 *
 * @module
 */

import { invalid } from "../_channel_error.ts";
import { Reader, Writer } from "../channel/_codec_bytes.ts";
import { decode, readBlobTable } from "../channel/_codec_decode.ts";
import { encode } from "../channel/_codec_encode.ts";
import type { DecodeLimits } from "../channel/_codec_limits.ts";
import type { EndpointHooks } from "../channel/_codec_tags.ts";

/** The message kinds. */
export const KIND = { VALUE: 1, END: 2 } as const;
/**
 * The wire version; a message of another version is refused. 2 since a
 * value carries a `DOMException`'s name (version 1 read it differently).
 */
export const VERSION = 2;
/** Bytes of a sender id. */
export const ID_BYTES = 8;
/** Where the sequence number is. */
const SEQ_AT = 2 + ID_BYTES;
/** Bytes of the fixed header. */
export const HEADER_BYTES = SEQ_AT + 8;

const HEX = Array.from(
  { length: 256 },
  (_, i) => i.toString(16).padStart(2, "0"),
);

/** A fresh random sender id. */
export function newSenderId(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(ID_BYTES));
}

/** A sender id as 16 hex digits. */
export function idText(bytes: Uint8Array): string {
  let id = "";
  for (let i = 0; i < ID_BYTES; i++) id += HEX[bytes[i]];
  return id;
}

/**
 * Whether `value` is bound to this host: an endpoint of this module (or
 * anything else that exposes the fd it owns through a `rawFd` accessor).
 */
function hostBound(value: object): boolean {
  return "rawFd" in value && !Object.hasOwn(value, "rawFd");
}

const outgoing: EndpointHooks = {
  encode(value: object): boolean {
    if (hostBound(value)) {
      const name = value.constructor?.name || "endpoint";
      throw new DOMException(
        `Cannot send on NATS channel: a ${name} could not be cloned: it is a file descriptor of this machine, and endpoints cannot cross machines`,
        "DataCloneError",
      );
    }
    return false;
  },
  decode(): unknown {
    throw new Error("unreachable");
  },
};

const incoming: EndpointHooks = {
  encode(): boolean {
    return false;
  },
  decode(): unknown {
    throw invalid("an endpoint arrived over NATS, where none can travel");
  },
};

function header(out: Writer, kind: number, sender: Uint8Array): void {
  out.u8(kind);
  out.u8(VERSION);
  out.ensure(ID_BYTES + 8);
  out.buf.set(sender, out.pos);
  out.pos += ID_BYTES + 8;
}

/** Numbers a message made by {@linkcode encodeValue} or {@linkcode encodeEnd}. */
export function setSeq(payload: Uint8Array, seq: number): void {
  const view = new DataView(payload.buffer, payload.byteOffset, HEADER_BYTES);
  view.setUint32(SEQ_AT, seq >>> 0, true);
  view.setUint32(SEQ_AT + 4, Math.floor(seq / 2 ** 32), true);
}

/**
 * Encodes one value as a message payload (a fresh buffer), to be numbered
 * with {@linkcode setSeq}.
 *
 * @throws {DOMException} `DataCloneError` for what cannot travel, endpoints
 * included.
 */
export function encodeValue(
  value: unknown,
  sender: Uint8Array,
): Uint8Array<ArrayBuffer> {
  let encoded;
  try {
    encoded = encode(value, outgoing);
  } catch (error) {
    throw onNats(error);
  }
  const { head, treeLength, blobs, blobBytes } = encoded;
  const out = new Writer(32);
  header(out, KIND.VALUE, sender);
  out.varint(treeLength);
  out.varint(head.byteLength);
  const payload = new Uint8Array(out.pos + head.byteLength + blobBytes);
  payload.set(out.buf.subarray(0, out.pos));
  let at = out.pos;
  payload.set(head, at);
  at += head.byteLength;
  for (const blob of blobs) {
    payload.set(blob, at);
    at += blob.byteLength;
  }
  return payload;
}

/**
 * The codec's refusal of a value, as said by a NATS channel ("Cannot send
 * on NATS channel: ..."); any other error as it is.
 */
function onNats(error: unknown): unknown {
  const LOCAL = "Cannot send on channel: ";
  if (!(error instanceof Error || error instanceof DOMException)) return error;
  if (!error.message.startsWith(LOCAL)) return error;
  const message = `Cannot send on NATS channel: ${
    error.message.slice(LOCAL.length)
  }`;
  return error instanceof DOMException
    ? new DOMException(message, error.name)
    : new (error.constructor as ErrorConstructor)(message, { cause: error });
}

/** Encodes a sender's end-of-stream marker, to be numbered like a value. */
export function encodeEnd(sender: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Writer(32);
  header(out, KIND.END, sender);
  return out.buf.slice(0, out.pos);
}

/** A message whose header was read; the value is decoded on demand. */
export interface Parsed {
  kind: number;
  sender: string;
  seq: number;
  /** Where the value's tree lengths start (for {@linkcode decodeValue}). */
  at: number;
}

/** Reads a message's header. */
export function parse(payload: Uint8Array): Parsed {
  const input = new Reader(payload);
  const kind = input.u8();
  if (kind !== KIND.VALUE && kind !== KIND.END) {
    throw invalid(`unknown message kind ${kind}`);
  }
  const version = input.u8();
  if (version !== VERSION) throw invalid(`unknown version ${version}`);
  const sender = idText(input.bytes(ID_BYTES));
  input.bytes(8);
  const lo = input.view.getUint32(SEQ_AT, true);
  const hi = input.view.getUint32(SEQ_AT + 4, true);
  const seq = hi * 2 ** 32 + lo;
  if (seq < 1 || !Number.isSafeInteger(seq)) {
    throw invalid(`sequence number ${seq} out of range`);
  }
  if (kind === KIND.END && input.left !== 0) {
    throw invalid("bytes after an end-of-stream marker");
  }
  return { kind, sender, seq, at: input.pos };
}

/**
 * Decodes the value of a message {@linkcode parse} read, within the
 * receiver's limits.
 */
export function decodeValue(
  payload: Uint8Array,
  parsed: Parsed,
  limits: Readonly<Required<DecodeLimits>>,
): unknown {
  const input = new Reader(payload, parsed.at);
  const treeLength = input.varint();
  const headLength = input.varint();
  if (headLength > input.left) throw invalid("head past the message");
  const head = payload.subarray(input.pos, input.pos + headLength);
  const blobsAt = input.pos + headLength;
  const specs = readBlobTable(
    head,
    treeLength,
    payload.byteLength - blobsAt,
    limits,
  );
  const offsets: number[] = [];
  let at = blobsAt;
  for (const spec of specs) {
    offsets.push(at);
    at += spec.length;
  }
  const blob = (index: number): ArrayBuffer => {
    const start = payload.byteOffset + offsets[index];
    return payload.buffer.slice(
      start,
      start + specs[index].length,
    ) as ArrayBuffer;
  };
  return decode(head, treeLength, specs, blob, incoming, limits);
}

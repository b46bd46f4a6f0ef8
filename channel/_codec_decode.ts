/**
 * The decoding half of the channel value codec (the tag table and grammar
 * are in `_codec_tags.ts`): one reader function per tag, over one decoder
 * state.
 *
 * Decoding trusts nothing: every tag, length, count, index and offset is
 * checked against what is left of the input, and what the value would
 * build (its estimated memory, its element count, its nesting) against the
 * receiver's {@linkcode DecodeLimits}, each container, string and bigint
 * before it is allocated. Any violation throws `Deno.errors.InvalidData`.
 *
 * @module
 */

import { invalid } from "../_channel_error.ts";
import { Reader } from "./_codec_bytes.ts";
import {
  type DecodeLimits,
  DEFAULT_LIMITS,
  overLimit,
} from "./_codec_limits.ts";
import {
  DOM_EXCEPTION,
  type EndpointHooks,
  ERROR_CLASSES,
  MAX_BIGINT_BYTES,
  TAG,
  VIEW_KINDS,
} from "./_codec_tags.ts";

/** Where a blob's bytes are, once the table is read. */
export interface BlobSpec {
  start: number;
  length: number;
}

// What the decoded objects cost, in bytes: V8's 64-bit sizes rounded up,
// each object with its slot in the back-reference table. Decoding charges
// them to the budget before it allocates.
const COST = {
  /** A heap number (floats, and ints beyond the small-integer range). */
  NUMBER: 16,
  /** A string's header; its characters add their UTF-8 length. */
  STRING: 24,
  /** A bigint's header; each byte of magnitude adds BIGINT_BYTE. */
  BIGINT: 24,
  /** Hex text (two UTF-16 units per byte, then a one-byte string), result. */
  BIGINT_BYTE: 5,
  OBJECT: 64,
  /** One own property of an object, besides its key and value. */
  PROPERTY: 48,
  ARRAY: 64,
  /** One array slot (the value in it costs its own). */
  SLOT: 8,
  MAP: 192,
  MAP_ENTRY: 40,
  SET: 192,
  SET_ENTRY: 24,
  DATE: 104,
  /** A RegExp; its source adds twice its length (parsed and kept). */
  REGEXP: 320,
  ARRAY_BUFFER: 96,
  VIEW: 128,
  /** An Error, with the stack trace V8 captures when it is made. */
  ERROR: 512,
  BOXED: 64,
  ENDPOINT: 256,
  /** One entry of the blob table. */
  BLOB: 64,
} as const;

const NO_BUFFERS: (ArrayBuffer | undefined)[] = [];

/** The blob table of a message without blobs (most messages). */
export const NO_BLOBS: readonly BlobSpec[] = Object.freeze([]);

/**
 * Reads the blob table of a head: each blob's original start offset and
 * length. The head is `head[start, end)` (all of `head` by default).
 * `available` is the number of blob bytes that came with the head; the
 * lengths must add up to exactly that. The blob count is checked against
 * `limits` before anything is built.
 */
export function readBlobTable(
  head: Uint8Array,
  treeLength: number,
  available: number,
  limits: Readonly<Required<DecodeLimits>> = DEFAULT_LIMITS,
  start = 0,
  end: number = head.byteLength,
): readonly BlobSpec[] {
  if (treeLength > end - start) throw invalid("tree length out of range");
  // Most messages have no blobs: a table of one zero byte.
  if (end - start === treeLength + 1 && head[start + treeLength] === 0) {
    if (available !== 0) {
      throw invalid(`blobs claim 0 of the ${available} bytes sent`);
    }
    return NO_BLOBS;
  }
  const input = new Reader(head, start + treeLength, end);
  const count = input.varint();
  checkBlobCount(count, limits);
  if (count > input.left) {
    throw invalid(`count ${count} exceeds the ${input.left} bytes left`);
  }
  if (count === 0) {
    if (input.left !== 0) throw invalid("bytes after the blob table");
    if (available !== 0) {
      throw invalid(`blobs claim 0 of the ${available} bytes sent`);
    }
    return NO_BLOBS;
  }
  const specs: BlobSpec[] = [];
  let total = 0;
  for (let i = 0; i < count; i++) {
    const blobStart = input.varint();
    const length = input.varint();
    total += length;
    if (total > available) {
      throw invalid(`blobs claim more than the ${available} bytes sent`);
    }
    specs.push({ start: blobStart, length });
  }
  if (input.left !== 0) throw invalid("bytes after the blob table");
  if (total !== available) {
    throw invalid(`blobs claim ${total} of the ${available} bytes sent`);
  }
  return specs;
}

/** Throws when a blob table of `count` entries is over `limits`. */
function checkBlobCount(
  count: number,
  limits: Readonly<Required<DecodeLimits>>,
): void {
  if (count > limits.maxElements) {
    throw overLimit("maxElements", limits.maxElements, `${count} blobs`);
  }
  if (count * COST.BLOB > limits.maxBytes) {
    throw overLimit("maxBytes", limits.maxBytes, `${count} blobs`);
  }
}

/**
 * The most bytes a blob table entry takes: two varints of at most 8 bytes
 * (what {@linkcode Reader.varint} reads).
 */
const MAX_ENTRY_BYTES = 16;

/**
 * Checks the sizes of a head that is not read yet (a large message's, in
 * its memfd) against `limits`, so that a bogus one is refused before its
 * bytes are allocated and read:
 *
 * - the tree: every byte of it builds at least 8/9 of a byte of the value
 *   as {@linkcode decode} counts it (the cheapest: a small integer padded
 *   to 9 bytes in an array slot of 8), so a tree longer than 9/8 of
 *   `maxBytes`, a top-level value's 16 bytes and `endpointBytes` for each
 *   endpoint it may carry cannot decode within it. Endpoints are charged
 *   a fixed cost whatever they take in the tree (a moved receiver carries
 *   what it held of a batch): `endpointBytes` is the most one fd's worth
 *   of endpoint takes.
 * - the blob table, of `tableLength` bytes, whose first bytes (up to 8)
 *   are `tableStart`: its count must be within the limits, and its entries
 *   must fit in it.
 *
 * @throws {Deno.errors.InvalidData} When they cannot be a value's.
 */
export function checkHeadSize(
  treeLength: number,
  tableLength: number,
  tableStart: Uint8Array,
  limits: Readonly<Required<DecodeLimits>>,
  endpointBytes: number,
): void {
  const maxTree = limits.maxBytes + Math.ceil(limits.maxBytes / 8) + 16 +
    limits.maxEndpoints * endpointBytes;
  if (treeLength > maxTree) {
    throw overLimit(
      "maxBytes",
      limits.maxBytes,
      `a value encoded in ${treeLength} bytes`,
    );
  }
  const input = new Reader(tableStart);
  const count = input.varint();
  checkBlobCount(count, limits);
  if (tableLength > input.pos + count * MAX_ENTRY_BYTES) {
    throw invalid(`a blob table of ${tableLength} bytes for ${count} blobs`);
  }
}

/**
 * Decodes a value tree: `head[start, start + treeLength)`. `blob(i)`
 * returns blob `i`'s bytes as a fresh ArrayBuffer (called at most once per
 * blob). What the value would build is checked against `limits` as it
 * goes, each container and string before it is allocated; going over
 * throws `Deno.errors.InvalidData` naming the limit.
 */
export function decode(
  head: Uint8Array,
  treeLength: number,
  specs: readonly BlobSpec[],
  blob: (index: number) => ArrayBuffer,
  hooks: EndpointHooks,
  limits: Readonly<Required<DecodeLimits>> = DEFAULT_LIMITS,
  start = 0,
): unknown {
  const end = start + treeLength;
  const input = new Reader(head, start, end);
  const d = new Decoder(input, specs, blob, hooks, limits);
  const value = readValue(d, 0);
  if (input.pos !== end) throw invalid("bytes after the value");
  return value;
}

/** "`what` of `n` `unit`", or `what` alone without a unit. */
function named(what: string, n: number, unit: string | undefined): string {
  return unit === undefined ? what : `${what} of ${n} ${unit}`;
}

/**
 * The state of one decode: the input, the objects met so far (for
 * back-references), the blobs, and what is left of the limits.
 */
class Decoder {
  readonly input: Reader;
  /** The objects met so far, made at the first (most values have none). */
  objects: unknown[] | undefined;
  readonly specs: readonly BlobSpec[];
  readonly buffers: (ArrayBuffer | undefined)[];
  readonly blob: (index: number) => ArrayBuffer;
  readonly hooks: EndpointHooks;
  readonly limits: Readonly<Required<DecodeLimits>>;
  elementsLeft: number;
  bytesLeft: number;

  constructor(
    input: Reader,
    specs: readonly BlobSpec[],
    blob: (index: number) => ArrayBuffer,
    hooks: EndpointHooks,
    limits: Readonly<Required<DecodeLimits>>,
  ) {
    this.input = input;
    this.specs = specs;
    // Never written without blobs (bufferAt checks the index first).
    this.buffers = specs.length === 0 ? NO_BUFFERS : new Array(specs.length);
    this.blob = blob;
    this.hooks = hooks;
    this.limits = limits;
    // The blobs were counted as elements when their table was read.
    this.elementsLeft = limits.maxElements - specs.length;
    this.bytesLeft = limits.maxBytes - specs.length * COST.BLOB;
  }

  /**
   * Takes `bytes` from the budget; `what` names them in the error, as
   * "`what` of `n` `unit`" when `unit` is given (made only then: a decode
   * names every container and string it meets).
   */
  charge(bytes: number, what: string, n = 0, unit?: string): void {
    this.bytesLeft -= bytes;
    if (this.bytesLeft < 0) throw this.overBytes(what, n, unit);
  }

  /** Takes one element from the budget; named as {@linkcode charge} says. */
  element(what: string, n = 0, unit?: string): void {
    if (--this.elementsLeft < 0) throw this.overElements(what, n, unit);
  }

  /** The failure of a value with more elements than the limit. */
  overElements(what: string, n = 0, unit?: string): Deno.errors.InvalidData {
    return overLimit(
      "maxElements",
      this.limits.maxElements,
      named(what, n, unit),
    );
  }

  /** The failure of a value that would take more bytes than the limit. */
  overBytes(what: string, n = 0, unit?: string): Deno.errors.InvalidData {
    return overLimit("maxBytes", this.limits.maxBytes, named(what, n, unit));
  }

  /**
   * Before a container of `count` items is built: the items must fit the
   * element budget, and `each` bytes apiece the byte budget, then they
   * must fit in the input (each item takes at least one byte).
   */
  reserve(
    count: number,
    each: number,
    what: string,
    unit?: string,
    n = count,
  ): void {
    if (count > this.elementsLeft) throw this.overElements(what, n, unit);
    if (count * each > this.bytesLeft) throw this.overBytes(what, n, unit);
    if (count > this.input.end - this.input.pos) {
      throw invalid(`count ${count} exceeds the ${this.input.left} bytes left`);
    }
  }

  /** A string, its size charged before it is made. */
  string(what: string): string {
    const n = this.input.varint();
    this.bytesLeft -= COST.STRING + n;
    if (this.bytesLeft < 0) throw this.overBytes(what, n, "bytes");
    return this.input.stringOf(n);
  }

  /** The buffer of blob `index`, read once. */
  bufferAt(index: number): ArrayBuffer {
    if (index >= this.specs.length) {
      throw invalid(`blob ${index} does not exist`);
    }
    return this.buffers[index] ??= this.blob(index);
  }
}

/** Records an object for back-references; returns its index. */
function remember(d: Decoder, object: unknown): number {
  const objects = d.objects ??= [];
  objects.push(object);
  return objects.length - 1;
}

/** Reads any value: its tag, then what that tag's reader takes. */
function readValue(d: Decoder, depth: number): unknown {
  if (depth > d.limits.maxDepth) {
    throw overLimit("maxDepth", d.limits.maxDepth, "the value nests deeper");
  }
  // The element taken and the tag read in line: the code of a message's
  // first few hundred values runs unoptimized, where calls cost most.
  if (--d.elementsLeft < 0) throw d.overElements("too many values");
  const input = d.input;
  if (input.pos >= input.end) throw invalid("value cut short");
  const tag = input.buf[input.pos++];
  switch (tag) {
    case TAG.UNDEFINED:
      return undefined;
    case TAG.NULL:
      return null;
    case TAG.TRUE:
      return true;
    case TAG.FALSE:
      return false;
    case TAG.INT:
      return readInt(d);
    case TAG.FLOAT:
      d.bytesLeft -= COST.NUMBER;
      if (d.bytesLeft < 0) throw d.overBytes("a number");
      return input.f64();
    case TAG.BIGINT:
      return readBigint(d);
    case TAG.STRING:
      return d.string("a string");
    case TAG.ARRAY:
      return readArray(d, depth);
    case TAG.OBJECT:
      return readObject(d, depth);
    case TAG.DATE:
      return readDate(d);
    case TAG.REGEXP:
      return readRegExp(d);
    case TAG.MAP:
      return readMap(d, depth);
    case TAG.SET:
      return readSet(d, depth);
    case TAG.ARRAY_BUFFER:
      return readArrayBuffer(d);
    case TAG.VIEW:
      return readView(d);
    case TAG.ERROR:
      return readError(d, depth);
    case TAG.REF:
      return readRef(d);
    case TAG.ENDPOINT:
      return readEndpoint(d);
    case TAG.BOXED:
      return readBoxed(d, depth);
    default:
      throw invalid(`unknown tag ${tag}`);
  }
}

function readInt(d: Decoder): number {
  const z = d.input.varint();
  if (z > 0xffff_ffff) throw invalid("int out of range");
  const value = (z >>> 1) ^ -(z & 1);
  // Beyond 31 bits, V8 keeps the number on the heap.
  if (value !== (value << 1) >> 1) d.charge(COST.NUMBER, "a number");
  return value;
}

/** Each byte's two hex digits, as the two bytes of one UTF-16 unit. */
const HEX_PAIRS = new Uint16Array(256);
{
  const bytes = new Uint8Array(HEX_PAIRS.buffer);
  for (let i = 0; i < 256; i++) {
    const text = i.toString(16).padStart(2, "0");
    bytes[2 * i] = text.charCodeAt(0);
    bytes[2 * i + 1] = text.charCodeAt(1);
  }
}
const latin1 = new TextDecoder("latin1");

/**
 * Turns a little-endian magnitude into a bigint through hex text, in time
 * linear in its length (shifting in one byte at a time is quadratic:
 * minutes for a few hundred KiB).
 */
function bigintOf(bytes: Uint8Array): bigint {
  const n = bytes.length;
  const text = new Uint16Array(n);
  for (let i = 0; i < n; i++) text[n - 1 - i] = HEX_PAIRS[bytes[i]];
  return BigInt("0x" + latin1.decode(text));
}

function readBigint(d: Decoder): bigint {
  const input = d.input;
  const sign = input.u8();
  if (sign > 1) throw invalid("bad bigint sign");
  const n = input.varint();
  if (n > MAX_BIGINT_BYTES) throw invalid("bigint too large");
  d.charge(COST.BIGINT + n * COST.BIGINT_BYTE, "a bigint", n, "bytes");
  const bytes = input.bytes(n);
  if (n === 0) return 0n;
  const magnitude = bigintOf(bytes);
  return sign ? -magnitude : magnitude;
}

function readArray(d: Decoder, depth: number): unknown[] {
  const input = d.input;
  const length = input.varint();
  const what = "an array";
  d.reserve(length, COST.SLOT, what, "items");
  d.charge(COST.ARRAY + length * COST.SLOT, what, length, "items");
  // Grown as items come rather than made at its full length: a sparse
  // array then never holds a slot per hole.
  const array: unknown[] = [];
  remember(d, array);
  for (let i = 0; i < length; i++) {
    if (input.pos < input.end && input.buf[input.pos] === TAG.HOLE) {
      input.pos++;
      d.element(what, length, "items");
      continue;
    }
    array[i] = readValue(d, depth + 1);
  }
  array.length = length;
  return array;
}

function readObject(d: Decoder, depth: number): Record<string, unknown> {
  const count = d.input.varint();
  const what = "an object";
  // A property is at least a key and a value: two bytes.
  d.reserve(count, COST.PROPERTY + COST.STRING, what, "properties");
  d.charge(COST.OBJECT, what, count, "properties");
  const object: Record<string, unknown> = {};
  remember(d, object);
  for (let i = 0; i < count; i++) {
    d.bytesLeft -= COST.PROPERTY;
    if (d.bytesLeft < 0) throw d.overBytes(what, count, "properties");
    const key = d.string("a key");
    const item = readValue(d, depth + 1);
    if (key === "__proto__") {
      Object.defineProperty(object, key, {
        value: item,
        enumerable: true,
        writable: true,
        configurable: true,
      });
    } else {
      object[key] = item;
    }
  }
  return object;
}

function readDate(d: Decoder): Date {
  d.charge(COST.DATE, "a Date");
  const date = new Date(d.input.f64());
  remember(d, date);
  return date;
}

function readRegExp(d: Decoder): RegExp {
  d.charge(COST.REGEXP, "a RegExp");
  const n = d.input.varint();
  // Kept as text and as the parsed pattern.
  d.charge(COST.STRING + 2 * n, "a RegExp", n, "bytes");
  const source = d.input.stringOf(n);
  const flags = d.string("RegExp flags");
  let regexp: RegExp;
  try {
    regexp = new RegExp(source, flags);
  } catch {
    throw invalid("bad regular expression");
  }
  remember(d, regexp);
  return regexp;
}

function readMap(d: Decoder, depth: number): Map<unknown, unknown> {
  const count = d.input.varint();
  const what = "a Map";
  // An entry is a key and a value: two elements.
  d.reserve(2 * count, COST.MAP_ENTRY / 2, what, "entries", count);
  d.charge(COST.MAP, what, count, "entries");
  const map = new Map();
  remember(d, map);
  for (let i = 0; i < count; i++) {
    d.charge(COST.MAP_ENTRY, what, count, "entries");
    const k = readValue(d, depth + 1);
    map.set(k, readValue(d, depth + 1));
  }
  return map;
}

function readSet(d: Decoder, depth: number): Set<unknown> {
  const count = d.input.varint();
  const what = "a Set";
  d.reserve(count, COST.SET_ENTRY, what, "items");
  d.charge(COST.SET, what, count, "items");
  const set = new Set();
  remember(d, set);
  for (let i = 0; i < count; i++) {
    d.charge(COST.SET_ENTRY, what, count, "items");
    set.add(readValue(d, depth + 1));
  }
  return set;
}

function readArrayBuffer(d: Decoder): ArrayBuffer {
  d.charge(COST.ARRAY_BUFFER, "an ArrayBuffer");
  const index = d.input.varint();
  const buffer = d.bufferAt(index);
  if (d.specs[index].start !== 0) {
    throw invalid("an ArrayBuffer blob must start at 0");
  }
  remember(d, buffer);
  return buffer;
}

function readView(d: Decoder): ArrayBufferView {
  d.charge(COST.VIEW, "a typed array");
  const input = d.input;
  const kind = input.u8();
  const Ctor = VIEW_KINDS[kind];
  if (Ctor === undefined) throw invalid(`unknown view kind ${kind}`);
  const index = input.varint();
  const offset = input.varint();
  const length = input.varint();
  const buffer = d.bufferAt(index);
  const spec = d.specs[index];
  const size = kind === 0 ? 1 : Ctor.BYTES_PER_ELEMENT!;
  const relative = offset - spec.start;
  if (
    relative < 0 || relative % size !== 0 ||
    relative + length * size > spec.length
  ) {
    throw invalid("view outside its blob");
  }
  // The blob starts where the first view of it did; alignment within it
  // follows the original buffer's when the start was aligned.
  let view: ArrayBufferView;
  try {
    view = new Ctor(buffer, relative, length);
  } catch {
    throw invalid("misaligned view");
  }
  remember(d, view);
  return view;
}

function readError(d: Decoder, depth: number): Error {
  d.charge(COST.ERROR, "an Error");
  const input = d.input;
  const name = d.string("an error name");
  const domName = name === DOM_EXCEPTION
    ? d.string("a DOMException name")
    : undefined;
  const message = d.string("an error message");
  let error: Error;
  if (domName !== undefined) error = new DOMException(message, domName);
  else {
    const Class = ERROR_CLASSES[name];
    if (Class === undefined) throw invalid(`unknown error type ${name}`);
    error = new Class(message);
  }
  remember(d, error);
  const hasStack = input.u8();
  if (hasStack === 1) {
    Object.defineProperty(error, "stack", {
      value: d.string("an error stack"),
      writable: true,
      configurable: true,
    });
  } else if (hasStack !== 0) {
    throw invalid("bad error flag");
  }
  const hasCause = input.u8();
  if (hasCause === 1) {
    Object.defineProperty(error, "cause", {
      value: readValue(d, depth + 1),
      writable: true,
      configurable: true,
    });
  } else if (hasCause !== 0) {
    throw invalid("bad error flag");
  }
  return error;
}

function readRef(d: Decoder): unknown {
  const index = d.input.varint();
  const objects = d.objects ?? [];
  if (index >= objects.length) {
    throw invalid(`reference to object ${index} not yet seen`);
  }
  return objects[index];
}

function readEndpoint(d: Decoder): unknown {
  d.charge(COST.ENDPOINT, "an endpoint");
  const endpoint = d.hooks.decode(d.input);
  // Numbered as the sender numbered it: a later reference is this one.
  remember(d, endpoint);
  return endpoint;
}

function readBoxed(d: Decoder, depth: number): object {
  d.charge(COST.BOXED, "a boxed primitive");
  const at = remember(d, undefined);
  const inner = readValue(d, depth + 1);
  if (
    typeof inner !== "number" && typeof inner !== "string" &&
    typeof inner !== "boolean" && typeof inner !== "bigint"
  ) {
    throw invalid("boxed value is not a primitive");
  }
  const boxed = Object(inner);
  d.objects![at] = boxed;
  return boxed;
}

/**
 * The value codec of typed channels: a compact binary form of what the
 * structured clone algorithm takes, plus endpoints (written by a hook, as
 * indexes into the fds that travel with the frame).
 *
 * An encoded value is a "head" (the value tree, then a table of byte blobs)
 * and the blobs themselves: the bytes of every `ArrayBuffer` that a typed
 * array, `DataView` or the buffer itself reaches. Blobs are not copied into
 * the head; the sender writes them straight from the caller's memory.
 *
 * Decoding trusts nothing: every tag, length, count, index and offset is
 * checked against what is left of the input, and what the value would
 * build (its estimated memory, its element count, its nesting) against the
 * receiver's {@linkcode DecodeLimits}, each container, string and bigint
 * before it is allocated. Any violation throws `Deno.errors.InvalidData`.
 *
 * Tree grammar (tag byte first; `n` is an unsigned LEB128 varint):
 * ```
 * 0 undefined | 1 null | 2 true | 3 false | 4 int (zigzag n) | 5 float64
 * 6 bigint (sign u8, n bytes, magnitude LE) | 7 string (n bytes UTF-8)
 * 8 array (n length, items; 20 marks a hole) | 9 object (n keys, key value)
 * 10 Date (float64) | 11 RegExp (source, flags) | 12 Map (n, k v)
 * 13 Set (n, items) | 14 ArrayBuffer (n blob) | 15 view (kind u8, n blob,
 * n byteOffset, n length) | 16 Error (name, message, u8 has stack [stack],
 * u8 has cause [value]) | 17 back-reference (n object index)
 * 18 endpoint (hook) | 19 boxed primitive (value) | 20 hole
 * ```
 * Objects (everything but primitives and endpoints) are numbered in the
 * order they are first met; a second meeting writes a back-reference, so
 * shared references and cycles survive.
 *
 * @module
 */

export const TAG = {
  UNDEFINED: 0,
  NULL: 1,
  TRUE: 2,
  FALSE: 3,
  INT: 4,
  FLOAT: 5,
  BIGINT: 6,
  STRING: 7,
  ARRAY: 8,
  OBJECT: 9,
  DATE: 10,
  REGEXP: 11,
  MAP: 12,
  SET: 13,
  ARRAY_BUFFER: 14,
  VIEW: 15,
  ERROR: 16,
  REF: 17,
  ENDPOINT: 18,
  BOXED: 19,
  HOLE: 20,
} as const;

/** The deepest nesting either side accepts. */
export const MAX_DEPTH = 1000;

type ViewConstructor = {
  new (
    buffer: ArrayBuffer,
    byteOffset: number,
    length: number,
  ): ArrayBufferView;
  readonly BYTES_PER_ELEMENT?: number;
};

// Index = the kind byte on the wire.
const VIEW_KINDS: (ViewConstructor | undefined)[] = [
  DataView as unknown as ViewConstructor,
  Int8Array,
  Uint8Array,
  Uint8ClampedArray,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  BigUint64Array,
  (globalThis as { Float16Array?: ViewConstructor }).Float16Array,
];

// No prototype: a name from the wire such as "toString" must not find
// Object.prototype's members.
const ERROR_CLASSES: Record<string, ErrorConstructor> = Object.assign(
  Object.create(null),
  {
    Error,
    EvalError,
    RangeError,
    ReferenceError,
    SyntaxError,
    TypeError,
    URIError,
  },
);

/** V8's largest BigInt, 2^30 bits, in bytes. */
const MAX_BIGINT_BYTES = 1 << 27;
const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** The failure of decoding untrusted bytes. */
export function invalid(detail: string): Deno.errors.InvalidData {
  return new Deno.errors.InvalidData(
    `Cannot receive on channel: malformed frame: ${detail}`,
  );
}

function cloneError(what: string): DOMException {
  return new DOMException(
    `Cannot send on channel: ${what} could not be cloned`,
    "DataCloneError",
  );
}

/**
 * Writes `value` as UTF-8 at `buf[at]`, where there is room for 3 bytes per
 * UTF-16 unit: the ASCII prefix byte by byte, the rest from the first
 * non-ASCII unit on with `encodeInto`. Returns the bytes written.
 */
function writeUtf8(buf: Uint8Array, at: number, value: string): number {
  const length = value.length;
  let i = 0;
  for (; i < length; i++) {
    const c = value.charCodeAt(i);
    if (c >= 0x80) break;
    buf[at + i] = c;
  }
  if (i === length) return i;
  return i +
    textEncoder.encodeInto(value.slice(i), buf.subarray(at + i)).written;
}

/** A growable output buffer. */
export class Writer {
  buf: Uint8Array<ArrayBuffer>;
  view: DataView;
  pos = 0;

  constructor(size = 1024) {
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.byteLength) return;
    let size = this.buf.byteLength * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(value: number): void {
    this.ensure(1);
    this.buf[this.pos++] = value;
  }

  varint(value: number): void {
    this.ensure(8);
    while (value >= 0x80) {
      this.buf[this.pos++] = (value % 0x80) | 0x80;
      value = Math.floor(value / 0x80);
    }
    this.buf[this.pos++] = value;
  }

  f64(value: number): void {
    this.ensure(8);
    this.view.setFloat64(this.pos, value, true);
    this.pos += 8;
  }

  string(value: string): void {
    const length = value.length;
    if (length <= 42) {
      // At most 126 UTF-8 bytes: the length fits in one varint byte.
      this.ensure(1 + length * 3);
      const at = this.pos + 1;
      const n = writeUtf8(this.buf, at, value);
      this.buf[this.pos] = n;
      this.pos = at + n;
      return;
    }
    if (length <= 5461) {
      // At most 16383 UTF-8 bytes: a two-byte varint (not always the
      // shortest form, which the reader accepts) is reserved up front.
      this.ensure(2 + length * 3);
      const at = this.pos + 2;
      const n = writeUtf8(this.buf, at, value);
      this.buf[this.pos] = (n & 0x7f) | 0x80;
      this.buf[this.pos + 1] = n >>> 7;
      this.pos = at + n;
      return;
    }
    const bytes = textEncoder.encode(value);
    this.varint(bytes.byteLength);
    this.ensure(bytes.byteLength);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.byteLength;
  }
}

/** A checked input cursor. */
export class Reader {
  buf: Uint8Array;
  view: DataView;
  pos: number;
  end: number;

  constructor(buf: Uint8Array, start = 0, end = buf.byteLength) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = start;
    this.end = end;
  }

  get left(): number {
    return this.end - this.pos;
  }

  u8(): number {
    if (this.pos >= this.end) throw invalid("value cut short");
    return this.buf[this.pos++];
  }

  varint(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const byte = this.u8();
      result += (byte & 0x7f) * scale;
      if (byte < 0x80) {
        if (result > Number.MAX_SAFE_INTEGER) break;
        return result;
      }
      scale *= 0x80;
    }
    throw invalid("integer out of range");
  }

  /** A count of items that each take at least one byte. */
  count(): number {
    const n = this.varint();
    if (n > this.left) {
      throw invalid(`count ${n} exceeds the ${this.left} bytes left`);
    }
    return n;
  }

  f64(): number {
    if (this.pos + 8 > this.end) throw invalid("value cut short");
    const value = this.view.getFloat64(this.pos, true);
    this.pos += 8;
    return value;
  }

  bytes(n: number): Uint8Array {
    if (n > this.left) throw invalid(`length ${n} exceeds what is left`);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  string(): string {
    return this.stringOf(this.varint());
  }

  /** A string of `n` UTF-8 bytes (its length already read). */
  stringOf(n: number): string {
    if (n > this.left) throw invalid(`string of ${n} bytes cut short`);
    const start = this.pos;
    this.pos += n;
    if (n < 24) {
      const buf = this.buf;
      let ascii = "";
      let i = start;
      for (; i < start + n; i++) {
        const c = buf[i];
        if (c >= 0x80) break;
        ascii += String.fromCharCode(c);
      }
      if (i === start + n) return ascii;
    }
    try {
      return textDecoder.decode(this.buf.subarray(start, start + n));
    } catch {
      throw invalid("string is not valid UTF-8");
    }
  }
}

/** A byte range of one `ArrayBuffer` that travels as a blob. */
export interface Blob {
  buffer: ArrayBuffer;
  start: number;
  end: number;
}

/** How endpoints are written and read: the channel supplies it. */
export interface EndpointHooks {
  /** Writes the endpoint after its tag; `false` when `value` is none. */
  encode(value: object, out: Writer): boolean;
  /** Reads an endpoint after its tag. */
  decode(input: Reader): unknown;
}

/** An encoded value: head bytes (tree and blob table) and blob ranges. */
export interface Encoded {
  head: Uint8Array<ArrayBuffer>;
  treeLength: number;
  blobs: Uint8Array[];
  blobBytes: number;
}

/** The value of a hex digit's char code (`0-9`, `a-f`). */
function hexDigit(code: number): number {
  return code <= 0x39 ? code - 0x30 : code - 0x57;
}

/**
 * Writes a bigint's magnitude as its byte count and its bytes, least
 * significant first. Through hex text, in time linear in its length
 * (taking a byte off at a time is quadratic: 28 s for 256 KiB).
 */
function writeMagnitude(out: Writer, magnitude: bigint): void {
  if (magnitude === 0n) {
    out.varint(0);
    return;
  }
  const hex = magnitude.toString(16);
  const n = (hex.length + 1) >>> 1;
  out.varint(n);
  out.ensure(n);
  const buf = out.buf;
  let at = out.pos;
  // The last two digits are the least significant byte.
  let j = hex.length;
  for (; j >= 2; j -= 2) {
    buf[at++] = (hexDigit(hex.charCodeAt(j - 2)) << 4) |
      hexDigit(hex.charCodeAt(j - 1));
  }
  if (j === 1) buf[at++] = hexDigit(hex.charCodeAt(0));
  out.pos = at;
}

/** The shared writer's size; it returns to it after a larger value. */
const WRITER_SIZE = 64 * 1024;
/** Above this, the writer is let go once its head is copied out. */
const WRITER_KEEP = 1024 * 1024;
let shared = new Writer(WRITER_SIZE);

/** The shared writer's buffer size now (for tests). */
export function writerCapacity(): number {
  return shared.buf.byteLength;
}

/**
 * Encodes `value`. The head is a fresh copy; blobs are views of the
 * caller's buffers.
 */
export function encode(value: unknown, hooks: EndpointHooks): Encoded {
  try {
    shared.pos = 0;
    return encodeInto(shared, value, hooks);
  } finally {
    // A large value grew the writer: let that memory go rather than hold
    // it for the life of the process.
    if (shared.buf.byteLength > WRITER_KEEP) shared = new Writer(WRITER_SIZE);
  }
}

function encodeInto(
  out: Writer,
  value: unknown,
  hooks: EndpointHooks,
): Encoded {
  const seen = new Map<object, number>();
  const blobIndex = new Map<ArrayBuffer, number>();
  const blobs: Blob[] = [];
  const blobOf = (buffer: ArrayBuffer, start: number, end: number): number => {
    if (
      typeof SharedArrayBuffer !== "undefined" &&
      (buffer as unknown) instanceof SharedArrayBuffer
    ) {
      throw cloneError("a SharedArrayBuffer");
    }
    // Blobs start 8-aligned, so every view keeps its element alignment.
    start -= start % 8;
    let index = blobIndex.get(buffer);
    if (index === undefined) {
      index = blobs.length;
      blobIndex.set(buffer, index);
      blobs.push({ buffer, start, end });
    } else {
      const blob = blobs[index];
      if (start < blob.start) blob.start = start;
      if (end > blob.end) blob.end = end;
    }
    return index;
  };

  const write = (v: unknown, depth: number): void => {
    switch (typeof v) {
      case "undefined":
        out.u8(TAG.UNDEFINED);
        return;
      case "boolean":
        out.u8(v ? TAG.TRUE : TAG.FALSE);
        return;
      case "number":
        if ((v | 0) === v && !(v === 0 && 1 / v < 0)) {
          out.u8(TAG.INT);
          out.varint(((v << 1) ^ (v >> 31)) >>> 0);
        } else {
          out.u8(TAG.FLOAT);
          out.f64(v);
        }
        return;
      case "string":
        out.u8(TAG.STRING);
        out.string(v);
        return;
      case "bigint":
        out.u8(TAG.BIGINT);
        out.u8(v < 0n ? 1 : 0);
        writeMagnitude(out, v < 0n ? -v : v);
        return;
      case "symbol":
        throw cloneError("a symbol");
      case "function":
        throw cloneError(`function ${(v as { name?: string }).name || ""}`);
    }
    if (v === null) {
      out.u8(TAG.NULL);
      return;
    }
    const object = v as object;
    const ref = seen.get(object);
    if (ref !== undefined) {
      out.u8(TAG.REF);
      out.varint(ref);
      return;
    }
    if (depth >= MAX_DEPTH) {
      throw new RangeError(
        `Cannot send on channel: the value nests deeper than ${MAX_DEPTH} levels`,
      );
    }
    const at = out.pos;
    out.u8(TAG.ENDPOINT);
    if (hooks.encode(object, out)) return;
    out.pos = at;
    seen.set(object, seen.size);
    if (Array.isArray(object)) {
      const length = object.length;
      out.u8(TAG.ARRAY);
      out.varint(length);
      for (let i = 0; i < length; i++) {
        if (!(i in object)) out.u8(TAG.HOLE);
        else write(object[i], depth + 1);
      }
      return;
    }
    const proto = Object.getPrototypeOf(object);
    if (proto === Object.prototype || proto === null) {
      writeObject(object, depth);
      return;
    }
    if (ArrayBuffer.isView(object)) {
      let kind = VIEW_KINDS.indexOf(
        object.constructor as unknown as ViewConstructor,
      );
      if (kind === -1) {
        // A subclass: find the built-in it derives from.
        kind = VIEW_KINDS.findIndex((c) =>
          c !== undefined && object instanceof (c as unknown as typeof DataView)
        );
      }
      if (kind === -1) throw cloneError("an unknown array buffer view");
      const start = object.byteOffset;
      const index = blobOf(
        object.buffer as ArrayBuffer,
        start,
        start + object.byteLength,
      );
      out.u8(TAG.VIEW);
      out.u8(kind);
      out.varint(index);
      out.varint(start);
      out.varint(
        kind === 0
          ? object.byteLength
          : (object as unknown as { length: number }).length,
      );
      return;
    }
    if (object instanceof ArrayBuffer) {
      out.u8(TAG.ARRAY_BUFFER);
      out.varint(blobOf(object, 0, object.byteLength));
      // The whole buffer travels: a direct reference sees all of it.
      const blob = blobs[blobIndex.get(object)!];
      blob.start = 0;
      blob.end = object.byteLength;
      return;
    }
    if (object instanceof Date) {
      out.u8(TAG.DATE);
      out.f64(object.getTime());
      return;
    }
    if (object instanceof RegExp) {
      out.u8(TAG.REGEXP);
      out.string(object.source);
      out.string(object.flags);
      return;
    }
    if (object instanceof Map) {
      out.u8(TAG.MAP);
      out.varint(object.size);
      for (const [k, item] of object) {
        write(k, depth + 1);
        write(item, depth + 1);
      }
      return;
    }
    if (object instanceof Set) {
      out.u8(TAG.SET);
      out.varint(object.size);
      for (const item of object) write(item, depth + 1);
      return;
    }
    if (object instanceof Error) {
      out.u8(TAG.ERROR);
      const name = ERROR_CLASSES[object.name] ? object.name : "Error";
      out.string(name);
      out.string(String(object.message ?? ""));
      if (typeof object.stack === "string") {
        out.u8(1);
        out.string(object.stack);
      } else {
        out.u8(0);
      }
      if ("cause" in object) {
        out.u8(1);
        write(object.cause, depth + 1);
      } else {
        out.u8(0);
      }
      return;
    }
    if (
      object instanceof Number || object instanceof String ||
      object instanceof Boolean || object instanceof BigInt
    ) {
      out.u8(TAG.BOXED);
      write(object.valueOf(), depth + 1);
      return;
    }
    if (
      object instanceof Promise || object instanceof WeakMap ||
      object instanceof WeakSet || object instanceof WeakRef
    ) {
      throw cloneError(`a ${object.constructor.name}`);
    }
    // Any other object (class instances included) clones as its own
    // enumerable properties, as structured clone does.
    writeObject(object, depth);
  };

  const writeObject = (object: object, depth: number): void => {
    const keys = Object.keys(object);
    out.u8(TAG.OBJECT);
    out.varint(keys.length);
    for (const key of keys) {
      out.string(key);
      write((object as Record<string, unknown>)[key], depth + 1);
    }
  };

  write(value, 0);
  const treeLength = out.pos;
  out.varint(blobs.length);
  let blobBytes = 0;
  const views: Uint8Array[] = [];
  for (const blob of blobs) {
    out.varint(blob.start);
    out.varint(blob.end - blob.start);
    blobBytes += blob.end - blob.start;
    views.push(new Uint8Array(blob.buffer, blob.start, blob.end - blob.start));
  }
  return {
    head: out.buf.slice(0, out.pos),
    treeLength,
    blobs: views,
    blobBytes,
  };
}

/** Where a blob's bytes are, once the table is read. */
export interface BlobSpec {
  start: number;
  length: number;
}

/**
 * Limits on what decoding one received value may build. A few bytes on the
 * wire can ask for much more memory and time (an empty object is 2 bytes,
 * an array slot or a bigint digit 1), so the receiver bounds the result,
 * not only the message.
 */
export interface DecodeLimits {
  /**
   * The most memory the decoded value may take, estimated from V8's object
   * sizes, in bytes; the contents of `ArrayBuffer`s and typed arrays are
   * not counted (they are the message's own bytes, which `maxMessageBytes`
   * bounds). Default 256 MiB.
   */
  maxBytes?: number;
  /**
   * The most elements one value may have: every value in it (nested ones
   * included), every array slot (holes too) and every blob. Default 2^24
   * (16_777_216).
   */
  maxElements?: number;
  /**
   * The deepest nesting, from 1 to 1000 (senders refuse values nested
   * deeper than 1000 levels). Default 1000.
   */
  maxDepth?: number;
}

/** The limits of a receiver that sets none. */
export const DEFAULT_LIMITS: Readonly<Required<DecodeLimits>> = Object.freeze({
  maxBytes: 256 * 1024 * 1024,
  maxElements: 1 << 24,
  maxDepth: MAX_DEPTH,
});

/**
 * Checks `limits` and fills in the defaults: every given field must be a
 * positive integer (`maxDepth` at most {@linkcode MAX_DEPTH}), else a
 * RangeError that says which.
 */
export function resolveLimits(
  limits: DecodeLimits | undefined,
  doing: string,
): Readonly<Required<DecodeLimits>> {
  if (limits === undefined) return DEFAULT_LIMITS;
  if (typeof limits !== "object" || limits === null) {
    throw new TypeError(`Cannot ${doing}: limits must be an object`);
  }
  const resolved = { ...DEFAULT_LIMITS };
  for (const key of ["maxBytes", "maxElements", "maxDepth"] as const) {
    const value = limits[key];
    if (value === undefined) continue;
    const most = key === "maxDepth" ? MAX_DEPTH : Number.MAX_SAFE_INTEGER;
    if (!Number.isInteger(value) || value < 1 || value > most) {
      throw new RangeError(
        `Cannot ${doing}: limits.${key} must be an integer from 1 to ${most}, got ${value}`,
      );
    }
    resolved[key] = value;
  }
  return Object.freeze(resolved);
}

/** The failure of a value that would build more than the limits allow. */
function overLimit(
  key: keyof DecodeLimits,
  limit: number,
  what: string,
): Deno.errors.InvalidData {
  return new Deno.errors.InvalidData(
    `Cannot receive on channel: the message exceeds limits.${key} (${limit}): ${what}; ` +
      "a receiver that expects such values can raise its limits",
  );
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

/**
 * Reads the blob table of a head: each blob's original start offset and
 * length. `available` is the number of blob bytes that came with the head;
 * the lengths must add up to exactly that. The blob count is checked
 * against `limits` before anything is built.
 */
export function readBlobTable(
  head: Uint8Array,
  treeLength: number,
  available: number,
  limits: Readonly<Required<DecodeLimits>> = DEFAULT_LIMITS,
): BlobSpec[] {
  if (treeLength > head.byteLength) throw invalid("tree length out of range");
  const input = new Reader(head, treeLength);
  const count = input.varint();
  if (count > limits.maxElements) {
    throw overLimit("maxElements", limits.maxElements, `${count} blobs`);
  }
  if (count * COST.BLOB > limits.maxBytes) {
    throw overLimit("maxBytes", limits.maxBytes, `${count} blobs`);
  }
  if (count > input.left) {
    throw invalid(`count ${count} exceeds the ${input.left} bytes left`);
  }
  const specs: BlobSpec[] = [];
  let total = 0;
  for (let i = 0; i < count; i++) {
    const start = input.varint();
    const length = input.varint();
    total += length;
    if (total > available) {
      throw invalid(`blobs claim more than the ${available} bytes sent`);
    }
    specs.push({ start, length });
  }
  if (input.left !== 0) throw invalid("bytes after the blob table");
  if (total !== available) {
    throw invalid(`blobs claim ${total} of the ${available} bytes sent`);
  }
  return specs;
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

/**
 * The state of one decode: the input, the objects met so far (for
 * back-references), the blobs, and what is left of the limits. One method
 * per tag.
 */
class Decoder {
  readonly input: Reader;
  readonly objects: unknown[] = [];
  readonly specs: BlobSpec[];
  readonly buffers: (ArrayBuffer | undefined)[];
  readonly blob: (index: number) => ArrayBuffer;
  readonly hooks: EndpointHooks;
  readonly limits: Readonly<Required<DecodeLimits>>;
  elementsLeft: number;
  bytesLeft: number;

  constructor(
    input: Reader,
    specs: BlobSpec[],
    blob: (index: number) => ArrayBuffer,
    hooks: EndpointHooks,
    limits: Readonly<Required<DecodeLimits>>,
  ) {
    this.input = input;
    this.specs = specs;
    this.buffers = new Array(specs.length);
    this.blob = blob;
    this.hooks = hooks;
    this.limits = limits;
    // The blobs were counted as elements when their table was read.
    this.elementsLeft = limits.maxElements - specs.length;
    this.bytesLeft = limits.maxBytes - specs.length * COST.BLOB;
  }

  /** Takes `bytes` from the budget; `what` names them in the error. */
  charge(bytes: number, what: string): void {
    this.bytesLeft -= bytes;
    if (this.bytesLeft < 0) {
      throw overLimit("maxBytes", this.limits.maxBytes, what);
    }
  }

  /**
   * Before a container of `count` items is built: the items must fit the
   * element budget, and `each` bytes apiece the byte budget, then they
   * must fit in the input (each item takes at least one byte).
   */
  reserve(count: number, each: number, what: string): void {
    if (count > this.elementsLeft) {
      throw overLimit("maxElements", this.limits.maxElements, what);
    }
    if (count * each > this.bytesLeft) {
      throw overLimit("maxBytes", this.limits.maxBytes, what);
    }
    if (count > this.input.left) {
      throw invalid(`count ${count} exceeds the ${this.input.left} bytes left`);
    }
  }

  /** A string, its size charged before it is made. */
  string(what: string): string {
    const n = this.input.varint();
    this.charge(COST.STRING + n, `${what} of ${n} bytes`);
    return this.input.stringOf(n);
  }

  value(depth: number): unknown {
    if (depth > this.limits.maxDepth) {
      throw overLimit(
        "maxDepth",
        this.limits.maxDepth,
        "the value nests deeper",
      );
    }
    if (--this.elementsLeft < 0) {
      throw overLimit(
        "maxElements",
        this.limits.maxElements,
        "too many values",
      );
    }
    const tag = this.input.u8();
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
        return this.int();
      case TAG.FLOAT:
        this.charge(COST.NUMBER, "a number");
        return this.input.f64();
      case TAG.BIGINT:
        return this.bigint();
      case TAG.STRING:
        return this.string("a string");
      case TAG.ARRAY:
        return this.array(depth);
      case TAG.OBJECT:
        return this.object(depth);
      case TAG.DATE:
        return this.date();
      case TAG.REGEXP:
        return this.regexp();
      case TAG.MAP:
        return this.map(depth);
      case TAG.SET:
        return this.set(depth);
      case TAG.ARRAY_BUFFER:
        return this.arrayBuffer();
      case TAG.VIEW:
        return this.view();
      case TAG.ERROR:
        return this.error(depth);
      case TAG.REF:
        return this.ref();
      case TAG.ENDPOINT:
        this.charge(COST.ENDPOINT, "an endpoint");
        return this.hooks.decode(this.input);
      case TAG.BOXED:
        return this.boxed(depth);
      default:
        throw invalid(`unknown tag ${tag}`);
    }
  }

  int(): number {
    const z = this.input.varint();
    if (z > 0xffff_ffff) throw invalid("int out of range");
    const value = (z >>> 1) ^ -(z & 1);
    // Beyond 31 bits, V8 keeps the number on the heap.
    if (value !== (value << 1) >> 1) this.charge(COST.NUMBER, "a number");
    return value;
  }

  bigint(): bigint {
    const input = this.input;
    const sign = input.u8();
    if (sign > 1) throw invalid("bad bigint sign");
    const n = input.varint();
    if (n > MAX_BIGINT_BYTES) throw invalid("bigint too large");
    this.charge(
      COST.BIGINT + n * COST.BIGINT_BYTE,
      `a bigint of ${n} bytes`,
    );
    const bytes = input.bytes(n);
    if (n === 0) return 0n;
    const magnitude = bigintOf(bytes);
    return sign ? -magnitude : magnitude;
  }

  array(depth: number): unknown[] {
    const input = this.input;
    const length = input.varint();
    const what = `an array of ${length} items`;
    this.reserve(length, COST.SLOT, what);
    this.charge(COST.ARRAY + length * COST.SLOT, what);
    // Grown as items come rather than made at its full length: a sparse
    // array then never holds a slot per hole.
    const array: unknown[] = [];
    this.objects.push(array);
    for (let i = 0; i < length; i++) {
      if (input.pos < input.end && input.buf[input.pos] === TAG.HOLE) {
        input.pos++;
        if (--this.elementsLeft < 0) {
          throw overLimit("maxElements", this.limits.maxElements, what);
        }
        continue;
      }
      array[i] = this.value(depth + 1);
    }
    array.length = length;
    return array;
  }

  object(depth: number): Record<string, unknown> {
    const count = this.input.varint();
    const what = `an object of ${count} properties`;
    // A property is at least a key and a value: two bytes.
    this.reserve(count, COST.PROPERTY + COST.STRING, what);
    this.charge(COST.OBJECT, what);
    const object: Record<string, unknown> = {};
    this.objects.push(object);
    for (let i = 0; i < count; i++) {
      this.charge(COST.PROPERTY, what);
      const key = this.string("a key");
      const item = this.value(depth + 1);
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

  date(): Date {
    this.charge(COST.DATE, "a Date");
    const date = new Date(this.input.f64());
    this.objects.push(date);
    return date;
  }

  regexp(): RegExp {
    this.charge(COST.REGEXP, "a RegExp");
    const n = this.input.varint();
    // Kept as text and as the parsed pattern.
    this.charge(COST.STRING + 2 * n, `a RegExp of ${n} bytes`);
    const source = this.input.stringOf(n);
    const flags = this.string("RegExp flags");
    let regexp: RegExp;
    try {
      regexp = new RegExp(source, flags);
    } catch {
      throw invalid("bad regular expression");
    }
    this.objects.push(regexp);
    return regexp;
  }

  map(depth: number): Map<unknown, unknown> {
    const count = this.input.varint();
    const what = `a Map of ${count} entries`;
    // An entry is a key and a value: two elements.
    this.reserve(2 * count, COST.MAP_ENTRY / 2, what);
    this.charge(COST.MAP, what);
    const map = new Map();
    this.objects.push(map);
    for (let i = 0; i < count; i++) {
      this.charge(COST.MAP_ENTRY, what);
      const k = this.value(depth + 1);
      map.set(k, this.value(depth + 1));
    }
    return map;
  }

  set(depth: number): Set<unknown> {
    const count = this.input.varint();
    const what = `a Set of ${count} items`;
    this.reserve(count, COST.SET_ENTRY, what);
    this.charge(COST.SET, what);
    const set = new Set();
    this.objects.push(set);
    for (let i = 0; i < count; i++) {
      this.charge(COST.SET_ENTRY, what);
      set.add(this.value(depth + 1));
    }
    return set;
  }

  bufferAt(index: number): ArrayBuffer {
    if (index >= this.specs.length) {
      throw invalid(`blob ${index} does not exist`);
    }
    return this.buffers[index] ??= this.blob(index);
  }

  arrayBuffer(): ArrayBuffer {
    this.charge(COST.ARRAY_BUFFER, "an ArrayBuffer");
    const index = this.input.varint();
    const buffer = this.bufferAt(index);
    if (this.specs[index].start !== 0) {
      throw invalid("an ArrayBuffer blob must start at 0");
    }
    this.objects.push(buffer);
    return buffer;
  }

  view(): ArrayBufferView {
    this.charge(COST.VIEW, "a typed array");
    const input = this.input;
    const kind = input.u8();
    const Ctor = VIEW_KINDS[kind];
    if (Ctor === undefined) throw invalid(`unknown view kind ${kind}`);
    const index = input.varint();
    const offset = input.varint();
    const length = input.varint();
    const buffer = this.bufferAt(index);
    const spec = this.specs[index];
    const size = kind === 0 ? 1 : Ctor.BYTES_PER_ELEMENT!;
    const relative = offset - spec.start;
    if (
      relative < 0 || relative % size !== 0 ||
      relative + length * size > spec.length
    ) {
      throw invalid("view outside its blob");
    }
    // The blob starts where the first view of it did; alignment within
    // it follows the original buffer's when the start was aligned.
    let view: ArrayBufferView;
    try {
      view = new Ctor(buffer, relative, length);
    } catch {
      throw invalid("misaligned view");
    }
    this.objects.push(view);
    return view;
  }

  error(depth: number): Error {
    this.charge(COST.ERROR, "an Error");
    const input = this.input;
    const name = this.string("an error name");
    const message = this.string("an error message");
    const Class = ERROR_CLASSES[name];
    if (Class === undefined) throw invalid(`unknown error type ${name}`);
    const error = new Class(message);
    this.objects.push(error);
    const hasStack = input.u8();
    if (hasStack === 1) {
      Object.defineProperty(error, "stack", {
        value: this.string("an error stack"),
        writable: true,
        configurable: true,
      });
    } else if (hasStack !== 0) {
      throw invalid("bad error flag");
    }
    const hasCause = input.u8();
    if (hasCause === 1) {
      Object.defineProperty(error, "cause", {
        value: this.value(depth + 1),
        writable: true,
        configurable: true,
      });
    } else if (hasCause !== 0) {
      throw invalid("bad error flag");
    }
    return error;
  }

  ref(): unknown {
    const index = this.input.varint();
    if (index >= this.objects.length) {
      throw invalid(`reference to object ${index} not yet seen`);
    }
    return this.objects[index];
  }

  boxed(depth: number): object {
    this.charge(COST.BOXED, "a boxed primitive");
    const at = this.objects.length;
    this.objects.push(undefined);
    const inner = this.value(depth + 1);
    if (
      typeof inner !== "number" && typeof inner !== "string" &&
      typeof inner !== "boolean" && typeof inner !== "bigint"
    ) {
      throw invalid("boxed value is not a primitive");
    }
    const boxed = Object(inner);
    this.objects[at] = boxed;
    return boxed;
  }
}

/**
 * Decodes a value tree. `blob(i)` returns blob `i`'s bytes as a fresh
 * ArrayBuffer (called at most once per blob). What the value would build
 * is checked against `limits` as it goes, each container and string
 * before it is allocated; going over throws `Deno.errors.InvalidData`
 * naming the limit.
 */
export function decode(
  head: Uint8Array,
  treeLength: number,
  specs: BlobSpec[],
  blob: (index: number) => ArrayBuffer,
  hooks: EndpointHooks,
  limits: Readonly<Required<DecodeLimits>> = DEFAULT_LIMITS,
): unknown {
  const input = new Reader(head, 0, treeLength);
  const decoder = new Decoder(input, specs, blob, hooks, limits);
  const value = decoder.value(0);
  if (input.pos !== treeLength) throw invalid("bytes after the value");
  return value;
}

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
 * checked against what is left of the input, nesting is bounded, and any
 * violation throws `Deno.errors.InvalidData`.
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
const HEX = Array.from(
  { length: 256 },
  (_, i) => i.toString(16).padStart(2, "0"),
);

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
    const n = this.varint();
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

const shared = new Writer(64 * 1024);

/**
 * Encodes `value`. The head is a fresh copy; blobs are views of the
 * caller's buffers.
 */
export function encode(value: unknown, hooks: EndpointHooks): Encoded {
  const out = shared;
  out.pos = 0;
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
      case "bigint": {
        out.u8(TAG.BIGINT);
        let magnitude = v < 0n ? -v : v;
        out.u8(v < 0n ? 1 : 0);
        const bytes: number[] = [];
        while (magnitude > 0n) {
          bytes.push(Number(magnitude & 0xffn));
          magnitude >>= 8n;
        }
        out.varint(bytes.length);
        out.ensure(bytes.length);
        for (const b of bytes) out.buf[out.pos++] = b;
        return;
      }
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
 * Reads the blob table of a head: each blob's original start offset and
 * length. `available` is the number of blob bytes that came with the head;
 * the lengths must add up to exactly that.
 */
export function readBlobTable(
  head: Uint8Array,
  treeLength: number,
  available: number,
): BlobSpec[] {
  if (treeLength > head.byteLength) throw invalid("tree length out of range");
  const input = new Reader(head, treeLength);
  const count = input.count();
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

/**
 * Decodes a value tree. `blob(i)` returns blob `i`'s bytes as a fresh
 * ArrayBuffer (called at most once per blob).
 */
export function decode(
  head: Uint8Array,
  treeLength: number,
  specs: BlobSpec[],
  blob: (index: number) => ArrayBuffer,
  hooks: EndpointHooks,
): unknown {
  const input = new Reader(head, 0, treeLength);
  const objects: unknown[] = [];
  const buffers: (ArrayBuffer | undefined)[] = new Array(specs.length);
  const bufferAt = (index: number): ArrayBuffer => {
    if (index >= specs.length) throw invalid(`blob ${index} does not exist`);
    return buffers[index] ??= blob(index);
  };

  const read = (depth: number): unknown => {
    if (depth > MAX_DEPTH) throw invalid(`nesting deeper than ${MAX_DEPTH}`);
    const tag = input.u8();
    switch (tag) {
      case TAG.UNDEFINED:
        return undefined;
      case TAG.NULL:
        return null;
      case TAG.TRUE:
        return true;
      case TAG.FALSE:
        return false;
      case TAG.INT: {
        const z = input.varint();
        if (z > 0xffff_ffff) throw invalid("int out of range");
        return (z >>> 1) ^ -(z & 1);
      }
      case TAG.FLOAT:
        return input.f64();
      case TAG.BIGINT: {
        const sign = input.u8();
        if (sign > 1) throw invalid("bad bigint sign");
        const bytes = input.bytes(input.count());
        if (bytes.length > MAX_BIGINT_BYTES) throw invalid("bigint too large");
        if (bytes.length === 0) return 0n;
        // Through hex, in time linear in the length (shifting in one byte
        // at a time is quadratic: minutes for a few hundred KiB).
        const digits = new Array<string>(bytes.length);
        for (let i = 0; i < bytes.length; i++) {
          digits[bytes.length - 1 - i] = HEX[bytes[i]];
        }
        const magnitude = BigInt("0x" + digits.join(""));
        return sign ? -magnitude : magnitude;
      }
      case TAG.STRING:
        return input.string();
      case TAG.ARRAY: {
        const length = input.count();
        const array: unknown[] = new Array(length);
        objects.push(array);
        for (let i = 0; i < length; i++) {
          if (input.buf[input.pos] === TAG.HOLE && input.pos < input.end) {
            input.pos++;
            continue;
          }
          array[i] = read(depth + 1);
        }
        return array;
      }
      case TAG.OBJECT: {
        const count = input.count();
        const object: Record<string, unknown> = {};
        objects.push(object);
        for (let i = 0; i < count; i++) {
          const key = input.string();
          const item = read(depth + 1);
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
      case TAG.DATE: {
        const date = new Date(input.f64());
        objects.push(date);
        return date;
      }
      case TAG.REGEXP: {
        const source = input.string();
        const flags = input.string();
        let regexp: RegExp;
        try {
          regexp = new RegExp(source, flags);
        } catch {
          throw invalid("bad regular expression");
        }
        objects.push(regexp);
        return regexp;
      }
      case TAG.MAP: {
        const count = input.count();
        const map = new Map();
        objects.push(map);
        for (let i = 0; i < count; i++) {
          const k = read(depth + 1);
          map.set(k, read(depth + 1));
        }
        return map;
      }
      case TAG.SET: {
        const count = input.count();
        const set = new Set();
        objects.push(set);
        for (let i = 0; i < count; i++) set.add(read(depth + 1));
        return set;
      }
      case TAG.ARRAY_BUFFER: {
        const index = input.varint();
        const buffer = bufferAt(index);
        if (specs[index].start !== 0) {
          throw invalid("an ArrayBuffer blob must start at 0");
        }
        objects.push(buffer);
        return buffer;
      }
      case TAG.VIEW: {
        const kind = input.u8();
        const Ctor = VIEW_KINDS[kind];
        if (Ctor === undefined) throw invalid(`unknown view kind ${kind}`);
        const index = input.varint();
        const offset = input.varint();
        const length = input.varint();
        const buffer = bufferAt(index);
        const spec = specs[index];
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
        objects.push(view);
        return view;
      }
      case TAG.ERROR: {
        const name = input.string();
        const message = input.string();
        const Class = ERROR_CLASSES[name];
        if (Class === undefined) throw invalid(`unknown error type ${name}`);
        const error = new Class(message);
        objects.push(error);
        const hasStack = input.u8();
        if (hasStack === 1) {
          Object.defineProperty(error, "stack", {
            value: input.string(),
            writable: true,
            configurable: true,
          });
        } else if (hasStack !== 0) {
          throw invalid("bad error flag");
        }
        const hasCause = input.u8();
        if (hasCause === 1) {
          Object.defineProperty(error, "cause", {
            value: read(depth + 1),
            writable: true,
            configurable: true,
          });
        } else if (hasCause !== 0) {
          throw invalid("bad error flag");
        }
        return error;
      }
      case TAG.REF: {
        const index = input.varint();
        if (index >= objects.length) {
          throw invalid(`reference to object ${index} not yet seen`);
        }
        return objects[index];
      }
      case TAG.ENDPOINT:
        return hooks.decode(input);
      case TAG.BOXED: {
        const at = objects.length;
        objects.push(undefined);
        const inner = read(depth + 1);
        if (
          typeof inner !== "number" && typeof inner !== "string" &&
          typeof inner !== "boolean" && typeof inner !== "bigint"
        ) {
          throw invalid("boxed value is not a primitive");
        }
        const boxed = Object(inner);
        objects[at] = boxed;
        return boxed;
      }
      default:
        throw invalid(`unknown tag ${tag}`);
    }
  };

  const value = read(0);
  if (input.pos !== treeLength) throw invalid("bytes after the value");
  return value;
}

/**
 * The encoding half of the channel value codec (the tag table and grammar
 * are in `_codec_tags.ts`): one writer function per kind of value, over
 * one encoder state, into a writer shared by every encode.
 *
 * @module
 */

import { Writer } from "./_codec_bytes.ts";
import {
  DOM_EXCEPTION,
  type EndpointHooks,
  ERROR_CLASSES,
  MAX_DEPTH,
  TAG,
  VIEW_KINDS,
  type ViewConstructor,
} from "./_codec_tags.ts";

/** A byte range of one `ArrayBuffer` that travels as a blob. */
export interface Blob {
  buffer: ArrayBuffer;
  start: number;
  end: number;
}

/** An encoded value: head bytes (tree and blob table) and blob ranges. */
export interface Encoded {
  head: Uint8Array<ArrayBuffer>;
  treeLength: number;
  blobs: Uint8Array[];
  blobBytes: number;
}

/** The writer's size; it returns to it after a larger value. */
const WRITER_SIZE = 64 * 1024;
/** Above this, the writer is let go after the encode (its head view keeps it while needed). */
const WRITER_KEEP = 1024 * 1024;

/** The hooks between encodes: they hold no endpoint of the last value. */
const noHooks: EndpointHooks = {
  encode: () => false,
  decode: () => undefined,
};

/** What one encode needs as it walks the value. */
class Encoder {
  out = new Writer(WRITER_SIZE);
  hooks: EndpointHooks = noHooks;
  /**
   * The first objects met, by the order they were first met: a value of a
   * few objects is looked up here, without hashing them.
   */
  readonly first: object[] = [];
  /** Each object met past the first FIRST_MAX, by the order it was met. */
  readonly seen = new Map<object, number>();
  /** The blob of each buffer met so far, by its index in `blobs`. */
  readonly blobIndex = new Map<ArrayBuffer, number>();
  readonly blobs: Blob[] = [];
  /** Whether an encode runs on it (a getter in a value may send again). */
  busy = false;

  /** Forgets the last value, so it keeps none of it alive. */
  clear(): void {
    this.hooks = noHooks;
    if (this.first.length > 0) this.first.length = 0;
    if (this.seen.size > 0) this.seen.clear();
    if (this.blobs.length > 0) {
      this.blobIndex.clear();
      this.blobs.length = 0;
    }
    // A large value grew the writer: let that memory go rather than hold
    // it for the life of the process.
    if (this.out.buf.byteLength > WRITER_KEEP) {
      this.out = new Writer(WRITER_SIZE);
    }
  }
}

/** The encoder of every send; one of its own for an encode inside one. */
const shared = new Encoder();

/** The shared writer's buffer size now (for tests). */
export function writerCapacity(): number {
  return shared.out.buf.byteLength;
}

/**
 * Encodes `value`. The head is a view of the shared writer, valid until the
 * next encode: a caller that keeps it past that copies it (a frame does so
 * when it has to wait). Blobs are views of the caller's buffers.
 *
 * @throws {DOMException} `DataCloneError` when the value holds something
 * that cannot travel.
 * @throws {RangeError} When the value nests deeper than
 * {@linkcode MAX_DEPTH} levels.
 */
export function encode(value: unknown, hooks: EndpointHooks): Encoded {
  const e = shared.busy ? new Encoder() : shared;
  e.busy = true;
  e.hooks = hooks;
  e.out.pos = 0;
  try {
    writeValue(e, value, 0);
    return finish(e);
  } finally {
    e.busy = false;
    e.clear();
  }
}

/** Writes the blob table after the tree; the result. */
function finish(e: Encoder): Encoded {
  const out = e.out;
  const treeLength = out.pos;
  out.varint(e.blobs.length);
  let blobBytes = 0;
  const views: Uint8Array[] = [];
  for (const blob of e.blobs) {
    out.varint(blob.start);
    out.varint(blob.end - blob.start);
    blobBytes += blob.end - blob.start;
    views.push(new Uint8Array(blob.buffer, blob.start, blob.end - blob.start));
  }
  return {
    head: out.buf.subarray(0, out.pos),
    treeLength,
    blobs: views,
    blobBytes,
  };
}

function cloneError(what: string): DOMException {
  return new DOMException(
    `Cannot send on channel: ${what} could not be cloned`,
    "DataCloneError",
  );
}

/** Writes any value: primitives here, objects through {@linkcode writeObject}. */
function writeValue(e: Encoder, v: unknown, depth: number): void {
  switch (typeof v) {
    case "undefined":
      e.out.u8(TAG.UNDEFINED);
      return;
    case "boolean":
      e.out.u8(v ? TAG.TRUE : TAG.FALSE);
      return;
    case "number": {
      // An int in 32 bits as a zigzag varint, any other number as a
      // float64.
      const out = e.out;
      if ((v | 0) === v && !(v === 0 && 1 / v < 0)) {
        out.u8(TAG.INT);
        out.varint(((v << 1) ^ (v >> 31)) >>> 0);
      } else {
        out.u8(TAG.FLOAT);
        out.f64(v);
      }
      return;
    }
    case "string":
      e.out.u8(TAG.STRING);
      e.out.string(v);
      return;
    case "bigint":
      writeBigint(e.out, v);
      return;
    case "symbol":
      throw cloneError("a symbol");
    case "function": {
      const name = (v as { name?: string }).name;
      throw cloneError(name ? `function ${name}` : "a function");
    }
  }
  if (v === null) e.out.u8(TAG.NULL);
  else writeObject(e, v as object, depth);
}

function writeBigint(out: Writer, v: bigint): void {
  out.u8(TAG.BIGINT);
  out.u8(v < 0n ? 1 : 0);
  writeMagnitude(out, v < 0n ? -v : v);
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

/** Objects a value's encode looks up by a scan before it hashes them. */
const FIRST_MAX = 8;

/** The index `object` was met at, if it was. */
function seenIndex(e: Encoder, object: object): number | undefined {
  const first = e.first;
  for (let i = 0; i < first.length; i++) if (first[i] === object) return i;
  return first.length < FIRST_MAX ? undefined : e.seen.get(object);
}

/** Records `object` as met, at the next index. */
function remember(e: Encoder, object: object): void {
  const first = e.first;
  if (first.length < FIRST_MAX) first.push(object);
  else e.seen.set(object, FIRST_MAX + e.seen.size);
}

/**
 * Writes an object: a back-reference when it was met before, else an
 * endpoint when the hooks take it, else its own tag.
 */
function writeObject(e: Encoder, object: object, depth: number): void {
  const out = e.out;
  const ref = seenIndex(e, object);
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
  // Arrays and plain objects (most of a value) are never endpoints: they
  // skip the hooks.
  if (Array.isArray(object)) {
    remember(e, object);
    return writeArray(e, object, depth);
  }
  const proto = Object.getPrototypeOf(object);
  if (proto === Object.prototype || proto === null) {
    remember(e, object);
    return writeProperties(e, object, depth);
  }
  const at = out.pos;
  out.u8(TAG.ENDPOINT);
  if (e.hooks.encode(object, out)) {
    // Met again, it is a reference: one endpoint arrives, over one fd.
    remember(e, object);
    return;
  }
  out.pos = at;
  remember(e, object);
  if (ArrayBuffer.isView(object)) return writeView(e, object);
  // Each built-in is told by instanceof, then by its internal slots, which
  // are checked before anything is read (structured clone refuses a Proxy of
  // one; a Proxy of a plain object, an array or a class instance travels as
  // what its traps show).
  if (object instanceof ArrayBuffer) {
    try {
      byteLengthOf.call(object);
    } catch {
      throw imitation("ArrayBuffer");
    }
    return writeArrayBuffer(e, object);
  }
  if (object instanceof Date) {
    try {
      Date.prototype.getTime.call(object);
    } catch {
      throw imitation("Date");
    }
    return writeDate(out, object);
  }
  if (object instanceof RegExp) {
    try {
      sourceOf.call(object);
    } catch {
      throw imitation("RegExp");
    }
    return writeRegExp(out, object);
  }
  if (object instanceof Map) {
    try {
      mapSize.call(object);
    } catch {
      throw imitation("Map");
    }
    return writeMap(e, object, depth);
  }
  if (object instanceof Set) {
    try {
      setSize.call(object);
    } catch {
      throw imitation("Set");
    }
    return writeSet(e, object, depth);
  }
  if (object instanceof Error) {
    try {
      checkError.call(object);
    } catch {
      throw imitation("Error");
    }
    return writeError(e, object, depth);
  }
  if (object instanceof Number) {
    try {
      Number.prototype.valueOf.call(object);
    } catch {
      throw imitation("Number");
    }
    return writeBoxed(e, object, depth);
  }
  if (object instanceof String) {
    try {
      String.prototype.valueOf.call(object);
    } catch {
      throw imitation("String");
    }
    return writeBoxed(e, object, depth);
  }
  if (object instanceof Boolean) {
    try {
      Boolean.prototype.valueOf.call(object);
    } catch {
      throw imitation("Boolean");
    }
    return writeBoxed(e, object, depth);
  }
  if (object instanceof BigInt) {
    try {
      BigInt.prototype.valueOf.call(object);
    } catch {
      throw imitation("BigInt");
    }
    return writeBoxed(e, object, depth);
  }
  // Views were taken by ArrayBuffer.isView() above.
  if (object instanceof TypedArray) throw imitation("typed array");
  if (object instanceof DataView) throw imitation("DataView");
  if (
    object instanceof Promise || object instanceof WeakMap ||
    object instanceof WeakSet || object instanceof WeakRef
  ) {
    throw cloneError(article(object.constructor.name));
  }
  const refused = platformRefusal(object) ?? resourceRefusal(object);
  if (refused !== undefined) throw cloneError(refused);
  // Any other object (class instances included) clones as its own
  // enumerable properties, as structured clone does.
  writeProperties(e, object, depth);
}

const byteLengthOf = Object.getOwnPropertyDescriptor(
  ArrayBuffer.prototype,
  "byteLength",
)!.get!;
const sourceOf = Object.getOwnPropertyDescriptor(RegExp.prototype, "source")!
  .get!;
const mapSize = Object.getOwnPropertyDescriptor(Map.prototype, "size")!.get!;
const setSize = Object.getOwnPropertyDescriptor(Set.prototype, "size")!.get!;
const isError = (Error as { isError?: (value: unknown) => boolean }).isError;
const TypedArray = Object.getPrototypeOf(Uint8Array);

function checkError(this: object): void {
  if (isError !== undefined && !isError(this)) throw new TypeError();
}

/** The refusal of an object that claims a built-in's class without its slots. */
function imitation(name: string): DOMException {
  return cloneError(`a Proxy or imitation of ${article(name)}`);
}

/**
 * What to say instead of a refused object, by its class: how to send what
 * it holds.
 */
const REFUSAL_HINTS: ReadonlyMap<string, string> = new Map([
  ["Blob", " (send await blob.bytes() instead)"],
  ["File", " (send await file.bytes() instead)"],
  [
    "SharedArrayBuffer",
    " (memory shared with another process is a SharedMemory; or send a copy in an ArrayBuffer)",
  ],
  ["WebAssembly.Module", " (send the bytes it was compiled from)"],
]);

/**
 * Why `object` cannot travel, if it is a platform or built-in object whose
 * state is not in its own properties (a `URL`, `Headers`, a stream, a
 * `Blob`, a `SharedArrayBuffer`, a `MessagePort`, a `WebAssembly.Module`, a
 * `Temporal` value, ...): sent as those, it would arrive as `{}`. Such an
 * object carries the name of its global class as its tag; an object of
 * the program's own class with a tag of its own is not an instance of a
 * global class of that name, and travels as its own properties, as
 * structured clone sends it.
 */
function platformRefusal(object: object): string | undefined {
  const tag = Object.prototype.toString.call(object);
  if (tag === "[object Object]") return undefined;
  const name = tag.slice(8, -1);
  // The class by its name, from the global object's own properties down.
  let Class: unknown = globalThis;
  for (const part of name.split(".")) {
    if (
      (typeof Class !== "object" && typeof Class !== "function") ||
      Class === null || !Object.hasOwn(Class, part)
    ) {
      return undefined;
    }
    Class = (Class as Record<string, unknown>)[part];
  }
  if (typeof Class !== "function" || !(object instanceof Class)) {
    return undefined;
  }
  return `${article(name)}${REFUSAL_HINTS.get(name) ?? ""}`;
}

/** What iterators and generators inherit `Symbol.dispose` from, if any. */
const ITERATOR_DISPOSE = (Object.getPrototypeOf(
  Object.getPrototypeOf([][Symbol.iterator]()),
) as Partial<Disposable>)[Symbol.dispose];
const ASYNC_ITERATOR_DISPOSE = (Object.getPrototypeOf(
  Object.getPrototypeOf(Object.getPrototypeOf((async function* () {})())),
) as Partial<AsyncDisposable>)[Symbol.asyncDispose];

/**
 * Why `object` cannot travel, if it holds a resource of this process: it
 * has `Symbol.dispose` or `Symbol.asyncDispose` (a `Deno.FsFile`, a
 * listener, a child process, a server or `Mutex` of this module, ...). Its
 * state is that resource, not its own properties: it would arrive as `{}`.
 * An iterator or generator (which inherit one) is named as what it is.
 * The endpoints that travel were taken by the hooks before this.
 */
function resourceRefusal(object: object): string | undefined {
  const dispose = (object as Partial<Disposable>)[Symbol.dispose];
  const asyncDispose = (object as Partial<AsyncDisposable>)[
    Symbol.asyncDispose
  ];
  if (dispose === undefined && asyncDispose === undefined) return undefined;
  if (
    (dispose !== undefined && dispose === ITERATOR_DISPOSE) ||
    (asyncDispose !== undefined && asyncDispose === ASYNC_ITERATOR_DISPOSE)
  ) {
    return article(Object.prototype.toString.call(object).slice(8, -1));
  }
  const Class = object.constructor;
  const name = typeof Class === "function" && Class.name !== ""
    ? ((Deno as unknown as Record<string, unknown>)[Class.name] === Class
      ? `Deno.${Class.name}`
      : Class.name)
    : "object";
  return `${article(name)} (it holds a resource of this process)`;
}

/**
 * `name` after "a" or "an" ("an Event", "a URL": the class names here that
 * start with a U are said with a "you").
 */
function article(name: string): string {
  return `${/^[aeio]/i.test(name) ? "an" : "a"} ${name}`;
}

function writeArray(e: Encoder, array: unknown[], depth: number): void {
  const length = array.length;
  e.out.u8(TAG.ARRAY);
  e.out.varint(length);
  for (let i = 0; i < length; i++) {
    if (!(i in array)) e.out.u8(TAG.HOLE);
    else writeValue(e, array[i], depth + 1);
  }
}

/** An object as its own enumerable string-keyed properties. */
function writeProperties(e: Encoder, object: object, depth: number): void {
  const keys = Object.keys(object);
  e.out.u8(TAG.OBJECT);
  e.out.varint(keys.length);
  for (const key of keys) {
    e.out.string(key);
    writeValue(e, (object as Record<string, unknown>)[key], depth + 1);
  }
}

/**
 * The blob of `buffer[start, end)`: a new one, or the buffer's blob widened
 * to take the range in.
 */
function blobOf(
  e: Encoder,
  buffer: ArrayBuffer,
  start: number,
  end: number,
): number {
  if (
    typeof SharedArrayBuffer !== "undefined" &&
    (buffer as unknown) instanceof SharedArrayBuffer
  ) {
    throw cloneError("a SharedArrayBuffer");
  }
  if (buffer.detached) {
    throw cloneError("a detached ArrayBuffer (transferred away)");
  }
  // Blobs start 8-aligned, so every view keeps its element alignment.
  start -= start % 8;
  let index = e.blobIndex.get(buffer);
  if (index === undefined) {
    index = e.blobs.length;
    e.blobIndex.set(buffer, index);
    e.blobs.push({ buffer, start, end });
  } else {
    const blob = e.blobs[index];
    if (start < blob.start) blob.start = start;
    if (end > blob.end) blob.end = end;
  }
  return index;
}

function writeView(e: Encoder, view: ArrayBufferView): void {
  let kind = VIEW_KINDS.indexOf(view.constructor as unknown as ViewConstructor);
  if (kind === -1) {
    // A subclass: find the built-in it derives from.
    kind = VIEW_KINDS.findIndex((c) =>
      c !== undefined && view instanceof (c as unknown as typeof DataView)
    );
  }
  if (kind === -1) throw cloneError("an unknown array buffer view");
  const start = view.byteOffset;
  const index = blobOf(
    e,
    view.buffer as ArrayBuffer,
    start,
    start + view.byteLength,
  );
  const out = e.out;
  out.u8(TAG.VIEW);
  out.u8(kind);
  out.varint(index);
  out.varint(start);
  out.varint(
    kind === 0
      ? view.byteLength
      : (view as unknown as { length: number }).length,
  );
}

function writeArrayBuffer(e: Encoder, buffer: ArrayBuffer): void {
  const index = blobOf(e, buffer, 0, buffer.byteLength);
  e.out.u8(TAG.ARRAY_BUFFER);
  e.out.varint(index);
  // The whole buffer travels: a direct reference sees all of it.
  const blob = e.blobs[index];
  blob.start = 0;
  blob.end = buffer.byteLength;
}

function writeDate(out: Writer, date: Date): void {
  out.u8(TAG.DATE);
  out.f64(date.getTime());
}

function writeRegExp(out: Writer, regexp: RegExp): void {
  out.u8(TAG.REGEXP);
  out.string(regexp.source);
  out.string(regexp.flags);
}

function writeMap(
  e: Encoder,
  map: Map<unknown, unknown>,
  depth: number,
): void {
  e.out.u8(TAG.MAP);
  e.out.varint(map.size);
  for (const [k, item] of map) {
    writeValue(e, k, depth + 1);
    writeValue(e, item, depth + 1);
  }
}

function writeSet(e: Encoder, set: Set<unknown>, depth: number): void {
  e.out.u8(TAG.SET);
  e.out.varint(set.size);
  for (const item of set) writeValue(e, item, depth + 1);
}

/** An error of a class that travels by name (else as `Error`). */
function writeError(e: Encoder, error: Error, depth: number): void {
  const out = e.out;
  out.u8(TAG.ERROR);
  if (error instanceof DOMException) {
    // As structured clone keeps it: a DOMException with its name (and so
    // its code), such as the AbortError or TimeoutError of a signal.
    out.string(DOM_EXCEPTION);
    out.string(String(error.name));
  } else {
    const name = error.name;
    out.string(ERROR_CLASSES[name] ? name : "Error");
  }
  out.string(String(error.message ?? ""));
  if (typeof error.stack === "string") {
    out.u8(1);
    out.string(error.stack);
  } else {
    out.u8(0);
  }
  if ("cause" in error) {
    out.u8(1);
    writeValue(e, error.cause, depth + 1);
  } else {
    out.u8(0);
  }
}

/** A `Number`, `String`, `Boolean` or `BigInt` object. */
function writeBoxed(
  e: Encoder,
  boxed: { valueOf(): unknown },
  depth: number,
): void {
  e.out.u8(TAG.BOXED);
  writeValue(e, boxed.valueOf(), depth + 1);
}

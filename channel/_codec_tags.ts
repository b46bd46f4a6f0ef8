/**
 * The tag table of the channel value codec, shared by its two directions
 * (`_codec_encode.ts`, `_codec_decode.ts`): a compact binary form of what
 * the structured clone algorithm takes, plus endpoints (written by
 * {@linkcode EndpointHooks}, as indexes into the fds that travel with the
 * frame).
 *
 * An encoded value is a "head" (the value tree, then a table of byte blobs)
 * and the blobs themselves: the bytes of every `ArrayBuffer` that a typed
 * array, `DataView` or the buffer itself reaches. Blobs are not copied into
 * the head; the sender writes them straight from the caller's memory.
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
 * The blob table, after the tree: `n` blobs, each `n` start (its offset in
 * the original buffer, 8-aligned) and `n` length.
 *
 * @module
 */

import type { Reader, Writer } from "./_codec_bytes.ts";

/** The tag byte of each kind of value. */
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

/** V8's largest BigInt, 2^30 bits, in bytes. */
export const MAX_BIGINT_BYTES = 1 << 27;

/** The constructor of a typed array or `DataView`. */
export type ViewConstructor = {
  new (
    buffer: ArrayBuffer,
    byteOffset: number,
    length: number,
  ): ArrayBufferView;
  readonly BYTES_PER_ELEMENT?: number;
};

/** The view kinds: index = the kind byte on the wire. */
export const VIEW_KINDS: readonly (ViewConstructor | undefined)[] = [
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

/**
 * The error classes that travel by name; any other error travels as
 * `Error`. No prototype: a name from the wire such as "toString" must not
 * find Object.prototype's members.
 */
export const ERROR_CLASSES: Readonly<Record<string, ErrorConstructor>> = Object
  .assign(
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

/**
 * The name an error is written under when it is a `DOMException`: its own
 * name follows (no class of `ERROR_CLASSES` has this name).
 */
export const DOM_EXCEPTION = "DOMException";

/** How endpoints are written and read: the channel supplies it. */
export interface EndpointHooks {
  /** Writes the endpoint after its tag; `false` when `value` is none. */
  encode(value: object, out: Writer): boolean;
  /** Reads an endpoint after its tag. */
  decode(input: Reader): unknown;
}

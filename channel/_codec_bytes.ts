/**
 * The byte cursors of the channel codec: a growable {@linkcode Writer} and a
 * {@linkcode Reader} that checks every read against the end of its input.
 * Both speak LEB128 varints, little-endian float64s and UTF-8 strings with
 * a varint byte length.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { invalid } from "../_channel_error.ts";

const textEncoder = new TextEncoder();
/**
 * Decodes and validates UTF-8. `ignoreBOM` keeps a leading U+FEFF: inside a
 * value it is a character like any other, not a byte order mark.
 */
const textDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

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
    this.grow(n);
  }

  /** Makes room for `n` more bytes (the callers checked there is none). */
  grow(n: number): void {
    let size = this.buf.byteLength * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  // The writes below check for room themselves rather than through
  // ensure(): a value's encode makes a few dozen of them, and until V8
  // optimizes the codec (a process's first few hundred messages) each call
  // costs as much as the write.

  u8(value: number): void {
    if (this.pos >= this.buf.byteLength) this.grow(1);
    this.buf[this.pos++] = value;
  }

  varint(value: number): void {
    if (this.pos + 8 > this.buf.byteLength) this.grow(8);
    if (value < 0x80) {
      this.buf[this.pos++] = value;
      return;
    }
    while (value >= 0x80) {
      this.buf[this.pos++] = (value % 0x80) | 0x80;
      value = Math.floor(value / 0x80);
    }
    this.buf[this.pos++] = value;
  }

  f64(value: number): void {
    if (this.pos + 8 > this.buf.byteLength) this.grow(8);
    this.view.setFloat64(this.pos, value, true);
    this.pos += 8;
  }

  string(value: string): void {
    const length = value.length;
    if (length <= 42) {
      // At most 126 UTF-8 bytes: the length fits in one varint byte.
      if (this.pos + 1 + length * 3 > this.buf.byteLength) {
        this.grow(1 + length * 3);
      }
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

/**
 * Strings shorter than this are made in JavaScript when they are ASCII:
 * for them the copy costs less than any call.
 */
const SHORT_STRING = 8;

/**
 * Node's `Buffer.prototype.utf8Slice`, which Deno provides: decodes
 * `this[start, end)` as UTF-8 in one native call, with no view to make, an
 * invalid sequence becoming U+FFFD. Where it is missing, the replacing
 * decoder below does the same.
 */
const utf8Slice = (Buffer.prototype as {
  utf8Slice?: (this: Uint8Array, start: number, end: number) => string;
}).utf8Slice;
const replacingDecoder = new TextDecoder("utf-8", { ignoreBOM: true });

/**
 * A float64 and its bytes, in this machine's order: little-end first, as
 * the codec's (Deno runs on x86-64 and AArch64, both little-endian).
 */
const F64 = new Float64Array(1);
const F64_BYTES = new Uint8Array(F64.buffer);

/**
 * A checked input cursor over `buf[start, end)`. The bytes must be this
 * process's own, never shared memory: strings are read twice (decoded,
 * then validated where needed), and a peer writing between the two reads
 * could make them disagree.
 */
export class Reader {
  buf: Uint8Array;
  pos: number;
  end: number;
  #view: DataView | undefined;

  constructor(buf: Uint8Array, start = 0, end = buf.byteLength) {
    this.buf = buf;
    this.pos = start;
    this.end = end;
  }

  /** A DataView over `buf`, made on first use (most values read none). */
  get view(): DataView {
    return this.#view ??= new DataView(
      this.buf.buffer,
      this.buf.byteOffset,
      this.buf.byteLength,
    );
  }

  get left(): number {
    return this.end - this.pos;
  }

  u8(): number {
    if (this.pos >= this.end) throw invalid("value cut short");
    return this.buf[this.pos++];
  }

  varint(): number {
    // One byte (counts, lengths and tags of most values) without the loop.
    const pos = this.pos;
    if (pos < this.end) {
      const byte = this.buf[pos];
      if (byte < 0x80) {
        this.pos = pos + 1;
        return byte;
      }
    }
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
    if (n > this.end - this.pos) {
      throw invalid(`count ${n} exceeds the ${this.left} bytes left`);
    }
    return n;
  }

  f64(): number {
    const at = this.pos;
    if (at + 8 > this.end) throw invalid("value cut short");
    // Copied into a float's own bytes (no DataView to make per message):
    // the codec's order is the machine's, little-end first.
    const from = this.buf;
    const bytes = F64_BYTES;
    bytes[0] = from[at];
    bytes[1] = from[at + 1];
    bytes[2] = from[at + 2];
    bytes[3] = from[at + 3];
    bytes[4] = from[at + 4];
    bytes[5] = from[at + 5];
    bytes[6] = from[at + 6];
    bytes[7] = from[at + 7];
    this.pos = at + 8;
    return F64[0];
  }

  bytes(n: number): Uint8Array {
    if (n > this.end - this.pos) {
      throw invalid(`length ${n} exceeds what is left`);
    }
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  string(): string {
    return this.stringOf(this.varint());
  }

  /** A string of `n` UTF-8 bytes (its length already read). */
  stringOf(n: number): string {
    if (n > this.end - this.pos) {
      throw invalid(`string of ${n} bytes cut short`);
    }
    const start = this.pos;
    this.pos += n;
    // Short ASCII strings (most keys) are made here: a call costs more
    // than the copy for them.
    const buf = this.buf;
    const end = start + n;
    if (n < SHORT_STRING) {
      let ascii = "";
      let i = start;
      for (; i < end; i++) {
        const c = buf[i];
        if (c >= 0x80) break;
        ascii += String.fromCharCode(c);
      }
      if (i === end) return ascii;
    }
    // Invalid UTF-8 decodes to U+FFFD, so a string without it came from
    // valid UTF-8 (one search, cheaper than a check here before V8
    // optimizes it). With one, the validating decoder decides: it throws
    // unless the sender sent U+FFFD itself.
    const text = utf8Slice !== undefined
      ? utf8Slice.call(buf, start, end)
      : replacingDecoder.decode(buf.subarray(start, end));
    if (text.indexOf("\uFFFD") === -1) return text;
    try {
      return textDecoder.decode(buf.subarray(start, end));
    } catch {
      throw invalid("string is not valid UTF-8");
    }
  }
}

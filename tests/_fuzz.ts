/**
 * Seeded fuzzing of every decoder of data from a peer: the channel value
 * codec, channel frames from a hostile sender, shm queue rings scribbled on
 * by a hostile peer, control messages, and fds of unexpected kinds and
 * marks. The generators and the checks live here, shared by the test suite
 * (`fuzz_test.ts`, fixed seeds) and `deno task fuzz` (`fuzz.ts`, any seed,
 * any number of cases).
 *
 * Each case gets its own generator, seeded from the run's seed, the target
 * and the case number, so one failing case reproduces on its own.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  fromFd,
  pipe,
  Receiver,
  Sender,
  SharedMemory,
  shmQueue,
  socketpair,
  type UnixSocket,
} from "../mod.ts";
import { invalid } from "../_channel_error.ts";
import type { Reader, Writer } from "../channel/_codec_bytes.ts";
import { decode, readBlobTable } from "../channel/_codec_decode.ts";
import { encode } from "../channel/_codec_encode.ts";
import { type DecodeLimits, resolveLimits } from "../channel/_codec_limits.ts";
import { type EndpointHooks, TAG } from "../channel/_codec_tags.ts";
import {
  FRAME,
  HEADER,
  header,
  INLINE_MAX,
  writeMemfd,
} from "../_channel_wire.ts";
import { MAX_FDS, parseControl } from "../ffi/cmsg.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { libc } from "../ffi/libc.ts";
import { cstr } from "../ffi/mem.ts";
import { CMSGHDR, MMAP, O, SOCK, SOCKADDR_UN } from "../ffi/layout.ts";
import { HELLO_MAGIC, HELLO_VERSION, ROLE } from "../shm/_carrier.ts";
import { everyKind } from "./fixtures/_channel_values.ts";
import { withTimeout } from "./_util.ts";
import { releaseFd } from "../_keys.ts";
import { ringViews } from "../shm/_keys.ts";

// --- Generators -------------------------------------------------------------

/** mulberry32: small, fast, and the same sequence on every run. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}

/** The seed of case `i` of `target` in a run seeded with `seed`. */
export function caseSeed(seed: number, target: string, i: number): number {
  // FNV-1a over the target's name, then mixed with the seed and the case.
  let h = 0x811c9dc5;
  for (let k = 0; k < target.length; k++) {
    h = Math.imul(h ^ target.charCodeAt(k), 0x01000193);
  }
  h = Math.imul(h ^ (seed >>> 0), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13) ^ i, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Random choices of the shapes that break parsers. */
export class Fuzz {
  next: () => number;
  constructor(seed: number) {
    this.next = prng(seed);
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
  bytes(n: number): Uint8Array<ArrayBuffer> {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
  /** A u32 biased towards the edges that break length checks. */
  u32(): number {
    return this.pick([
      0,
      1,
      2,
      7,
      8,
      15,
      16,
      255,
      4096,
      INLINE_MAX,
      INLINE_MAX + 1,
      0x7fff_ffff,
      0x8000_0000,
      0xffff_fff8,
      0xffff_ffff,
      this.int(0x1_0000_0000),
      this.int(64),
    ]);
  }
}

/** LEB128 varints the decoder must refuse or bound: huge, and overlong. */
export const HUGE_VARINTS: readonly number[][] = [
  [0xff, 0xff, 0xff, 0xff, 0x0f], // 2^32 - 1
  [0x80, 0x80, 0x80, 0x80, 0x10], // 2^32
  [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // 2^56 - 1
  [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // too many bytes
  [0x80, 0x80, 0x80, 0x00], // overlong zero
  [0xff, 0xff, 0x03], // 65535
];

// --- The channel value codec ------------------------------------------------

/** An endpoint stand-in: the codec writes it through the hooks. */
export class Placeholder {
  constructor(readonly index: number) {}
}

const PLACEHOLDERS = 4;

/** Endpoint hooks that write and read {@linkcode Placeholder}s. */
export const hooks: EndpointHooks = {
  encode(value: object, out: Writer): boolean {
    if (!(value instanceof Placeholder)) return false;
    out.varint(value.index);
    return true;
  },
  decode(input: Reader): unknown {
    const index = input.varint();
    if (index >= PLACEHOLDERS) throw invalid(`no endpoint ${index}`);
    return new Placeholder(index);
  },
};

/** Values of many shapes, each a starting point for mutation. */
export function seeds(): unknown[] {
  const buffer = new ArrayBuffer(96);
  new Uint8Array(buffer).forEach((_, i, a) => (a[i] = i * 7));
  const cycle: Record<string, unknown> = { name: "cycle" };
  cycle.self = cycle;
  const map = new Map<unknown, unknown>([["k", cycle], [1, [cycle]]]);
  map.set(map, map);
  const set = new Set<unknown>([1, "two", 3n]);
  set.add(set);
  let deep: unknown = "bottom";
  for (let i = 0; i < 300; i++) deep = i % 2 ? [deep] : { d: deep };
  const small = { ...everyKind() };
  // Keep the seeds small, so mutations land in the structure.
  small.longText = "x".repeat(300);
  small.bigBytes = new Uint8Array(300).fill(9);
  return [
    small,
    { nested: { a: [1, { b: [2, { c: new Date(0) }] }] }, sparse: [1, , 3] },
    map,
    set,
    cycle,
    deep,
    [
      new Uint8Array(buffer, 8, 16),
      new Float64Array(buffer, 16, 4),
      new DataView(buffer, 3, 20),
      new BigInt64Array(buffer, 64, 2),
      new Int16Array(buffer, 2, 10),
      buffer,
    ],
    {
      a: new Uint32Array([1, 2, 3]),
      b: new Uint8Array(0),
      c: new ArrayBuffer(0),
    },
    { one: new Placeholder(0), two: [new Placeholder(1), new Placeholder(3)] },
    new Map([[new Placeholder(2), new Set([new Placeholder(0)])]]),
    Object.assign(new RangeError("range", { cause: [1, 2] }), { stack: "s" }),
    [Object(1), Object("s"), Object(true), Object(10n), -0, NaN, 2 ** 53],
    { re: /a(b)+c?/giu, when: new Date(NaN), big: -(2n ** 200n) },
    "plain string with ünïcödé 𝄞",
    12345678,
    [undefined, null, true, false, 0.5, -1],
    [[], {}, [{}, [{}]], new Array(40), [, , {}, , ,]],
  ];
}

/** The bytes that travel: head then blobs, as in one frame. */
export interface Sample {
  head: Uint8Array;
  treeLength: number;
  blobs: Uint8Array;
}

/** Encodes `value` as a sender does. */
export function sampleOf(value: unknown): Sample {
  const encoded = encode(value, hooks);
  const blobs = new Uint8Array(encoded.blobBytes);
  let at = 0;
  for (const blob of encoded.blobs) {
    blobs.set(blob, at);
    at += blob.byteLength;
  }
  // The head is a view of the shared writer: the next encode reuses it.
  return { head: encoded.head.slice(), treeLength: encoded.treeLength, blobs };
}

/** A sample of a bare value tree (no blobs). */
export function treeSample(tree: ArrayLike<number>): Sample {
  const head = new Uint8Array(tree.length + 1);
  head.set(tree);
  return { head, treeLength: tree.length, blobs: new Uint8Array(0) };
}

/** Decodes as the receiver does: blob table, then the tree. */
export function decodeSample(
  { head, treeLength, blobs }: Sample,
  limits?: DecodeLimits,
): unknown {
  const resolved = resolveLimits(limits, "decode");
  const specs = readBlobTable(head, treeLength, blobs.byteLength, resolved);
  const offsets: number[] = [];
  let at = 0;
  for (const spec of specs) {
    offsets.push(at);
    at += spec.length;
  }
  const taken = new Set<number>();
  return decode(
    head,
    treeLength,
    specs,
    (index) => {
      assert.ok(!taken.has(index), `blob ${index} asked for twice`);
      taken.add(index);
      const start = offsets[index];
      return blobs.slice(start, start + specs[index].length).buffer;
    },
    hooks,
    resolved,
  );
}

/** One random change to a sample, of the kinds that break length checks. */
export function mutate(f: Fuzz, sample: Sample): Sample {
  let head = sample.head.slice();
  let { treeLength, blobs } = sample;
  const rounds = 1 + f.int(3);
  for (let r = 0; r < rounds; r++) {
    const at = head.length === 0 ? 0 : f.int(head.length);
    switch (f.int(9)) {
      case 0: // bit flips
        if (head.length > 0) head[at] ^= 1 << f.int(8);
        break;
      case 1: // a byte replaced by an interesting one
        if (head.length > 0) {
          head[at] = f.pick([0, 0x7f, 0x80, 0xff, f.int(21), f.int(256)]);
        }
        break;
      case 2: { // a huge or overlong varint written over the bytes there
        const v = f.pick(HUGE_VARINTS);
        const out = new Uint8Array(Math.max(head.length, at + v.length));
        out.set(head);
        out.set(v, at);
        head = out;
        break;
      }
      case 3: { // a huge varint inserted
        const v = f.pick(HUGE_VARINTS);
        const out = new Uint8Array(head.length + v.length);
        out.set(head.subarray(0, at));
        out.set(v, at);
        out.set(head.subarray(at), at + v.length);
        head = out;
        if (f.int(2) === 0 && at < treeLength) treeLength += v.length;
        break;
      }
      case 4: // truncated
        head = head.slice(0, at);
        break;
      case 5: { // garbage appended
        const out = new Uint8Array(head.length + 1 + f.int(16));
        out.set(head);
        out.set(f.bytes(out.length - head.length), head.length);
        head = out;
        break;
      }
      case 6: // the tree length moved
        treeLength = f.pick([
          0,
          treeLength - 1,
          treeLength + 1,
          head.length,
          head.length + 1,
          f.int(head.length + 2),
          0xffff_ffff,
        ]);
        break;
      case 7: // the blob bytes cut or extended
        blobs = f.int(2) === 0 && blobs.length > 0
          ? blobs.slice(0, f.int(blobs.length))
          : new Uint8Array([...blobs, ...f.bytes(1 + f.int(16))]);
        break;
      case 8: { // a random tag inserted inside the tree
        const out = new Uint8Array(head.length + 1);
        out.set(head.subarray(0, at));
        out[at] = f.int(22);
        out.set(head.subarray(at), at + 1);
        head = out;
        if (at < treeLength) treeLength++;
        break;
      }
    }
  }
  return { head, treeLength: Math.max(0, treeLength), blobs };
}

/** Tight limits, so that the limit checks are fuzzed as well. */
function smallLimits(f: Fuzz): DecodeLimits {
  return {
    maxBytes: f.pick([1, 64, 200, 1000, 4096, 1 << 16]),
    maxElements: f.pick([1, 2, 5, 20, 100, 1000]),
    maxDepth: f.pick([1, 2, 3, 10, 100]),
  };
}

/**
 * Decodes `sample`: a value or `InvalidData`, anything else fails. A value
 * must survive another round trip unchanged (the decoder made nothing the
 * encoder cannot write).
 */
function valueOrInvalid(
  sample: Sample,
  limits: DecodeLimits | undefined,
): "value" | "invalid" {
  let value: unknown;
  try {
    value = decodeSample(sample, limits);
  } catch (error) {
    if (error instanceof Deno.errors.InvalidData) return "invalid";
    assert.fail(
      `${(error as Error)?.constructor?.name}: ${(error as Error)?.message}\n` +
        `head ${Array.from(sample.head).join(",")} tree ${sample.treeLength}` +
        ` blobs ${sample.blobs.length}`,
    );
  }
  let again: unknown;
  try {
    again = decodeSample(sampleOf(value));
  } catch (error) {
    assert.fail(`a decoded value does not round-trip: ${error}`);
  }
  assert.deepStrictEqual(
    again,
    value,
    "a decoded value changes on a round trip",
  );
  return "value";
}

// --- Fds of every kind ------------------------------------------------------

const O_RDONLY = 0;
const O_RDWR = 2;
const O_CLOEXEC = 0o2000000;
const O_PATH = 0o10000000;
const EFD_CLOEXEC = 0o2000000;

/** Opens `path` through libc (FFI only: no read permission needed). */
function openFd(path: string, flags: number): number {
  const fd = libc().open(cstr(path), flags | O_CLOEXEC, 0);
  assert.ok(fd >= 0, `open ${path}`);
  return fd;
}

/** Makes one fd of some kind; the caller closes it. */
export const FD_KINDS: readonly [string, () => number][] = [
  ["pipe reader", () => {
    const { reader, writer } = pipe();
    writer.close();
    return reader[releaseFd]();
  }],
  ["pipe writer", () => {
    const { reader, writer } = pipe();
    reader.close();
    return writer[releaseFd]();
  }],
  ["sealed memfd", () => {
    const memory = SharedMemory.create(64);
    return memory[releaseFd]();
  }],
  ["unsealed memfd", () => {
    const fd = libc().memfd_create(cstr("fuzz"), MMAP.MFD_CLOEXEC);
    assert.ok(fd >= 0);
    assert.equal(libc().ftruncate(fd, 64n), 0);
    return fd;
  }],
  ["empty memfd", () => {
    const fd = libc().memfd_create(cstr("fuzz"), MMAP.MFD_CLOEXEC);
    assert.ok(fd >= 0);
    return fd;
  }],
  ["/dev/null", () => openFd("/dev/null", O_RDWR)],
  [
    "regular file",
    () => openFd(new URL("../deno.json", import.meta.url).pathname, O_RDONLY),
  ],
  ["eventfd", () => {
    const fd = libc().eventfd(0, EFD_CLOEXEC);
    assert.ok(fd >= 0);
    return fd;
  }],
  ["O_PATH directory", () => openFd("/", O_PATH | O.DIRECTORY)],
  ["seqpacket socket", () => {
    const [a, b] = socketpair({ type: "seqpacket" });
    b.close();
    return a[releaseFd]();
  }],
  ["stream socket", () => {
    const [a, b] = socketpair();
    b.close();
    return a[releaseFd]();
  }],
];

/** Closes raw fds. */
export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) libc().close(fd);
}

/** Makes `n` fds of kinds from the table, cycling from `from`. */
export function makeFds(n: number, from: number): number[] {
  const fds: number[] = [];
  for (let i = 0; i < n; i++) {
    fds.push(FD_KINDS[(from + i) % FD_KINDS.length][1]());
  }
  return fds;
}

/** Closes every endpoint inside a value a hostile peer got through. */
export function closeInside(value: unknown, seen = new Set<unknown>()): void {
  if (typeof value !== "object" || value === null || seen.has(value)) return;
  seen.add(value);
  if (typeof (value as { close?: unknown }).close === "function") {
    (value as { close(): void }).close();
    return;
  }
  if (value instanceof Map) {
    for (const [k, v] of value) {
      closeInside(k, seen);
      closeInside(v, seen);
    }
  } else if (value instanceof Set || Array.isArray(value)) {
    for (const v of value) closeInside(v, seen);
  } else if (!ArrayBuffer.isView(value)) {
    for (const v of Object.values(value)) closeInside(v, seen);
  }
}

// --- Channel frames ---------------------------------------------------------

/** Endpoint kinds of the channel codec (see channel.ts). */
export const KIND = { SENDER: 8, RECEIVER: 9 } as const;

/** A frame: header, then `body`. */
export function frameOf(
  type: number,
  a: number,
  b: number,
  c: number,
  body: ArrayLike<number>,
): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(HEADER + body.length);
  out.set(header(type, a, b, c));
  out.set(body, HEADER);
  return out;
}

/** A message frame whose value is `tree` (no blobs). */
export function messageFrame(
  fds: number,
  tree: number[],
): Uint8Array<ArrayBuffer> {
  return frameOf(FRAME.MESSAGE, fds, tree.length + 1, tree.length, [
    ...tree,
    0,
  ]);
}

/** A raw seqpacket peer and the receiver of its connection. */
export function rawPair(capacity = 1_000_000): [UnixSocket, Receiver<unknown>] {
  const [peer, mine] = socketpair({ type: "seqpacket" });
  const owned = new OwnedFd(mine[releaseFd](), "Receiver");
  return [peer, new Receiver([{ fd: owned, capacity, unacked: 0 }])];
}

/** The tree of an array of endpoints naming random fds. */
function endpointTree(f: Fuzz, fdCount: number): number[] {
  const n = 1 + f.int(3);
  const tree: number[] = [TAG.ARRAY, n];
  const index = () => f.int(4) === 0 ? f.int(fdCount + 3) : f.int(fdCount + 1);
  const small = () =>
    f.pick([[0], [1], [4], [0x7f], [0xc0, 0x84, 0x3d], ...HUGE_VARINTS]);
  for (let i = 0; i < n; i++) {
    const kind = f.int(11);
    tree.push(TAG.ENDPOINT, kind);
    if (kind === KIND.RECEIVER) {
      // Its mode (0 unknown, 1 values, 2 bytes; 3 and up are refused).
      tree.push(f.pick([0, 1, 2, 0, 3, 0xff]));
      const conns = f.int(3);
      tree.push(conns);
      for (let j = 0; j < conns; j++) {
        // fd, capacity, unacked, messages carried along (and their bytes).
        tree.push(index(), ...small(), ...small());
        if (f.int(4) === 0) tree.push(1 + f.int(2), ...small(), ...small());
        else tree.push(0);
      }
    } else {
      tree.push(index());
      if (kind === KIND.SENDER) tree.push(...small(), f.int(3));
    }
    // Sometimes cut short right here.
    if (f.int(10) === 0) break;
  }
  return tree;
}

/**
 * A batch of 1 to 4 records: mutated values and bytes frames, with lengths
 * and counts that are sometimes wrong.
 */
function hostileBatch(
  f: Fuzz,
  fdCount: number,
  values: readonly unknown[],
): Uint8Array<ArrayBuffer> {
  const records: number[] = [];
  const n = 1 + f.int(4);
  for (let i = 0; i < n; i++) {
    const sample = mutate(f, sampleOf(f.pick(values)));
    const inner = f.int(3) === 0
      ? frameOf(FRAME.BYTES, 0, 0, 0, sample.blobs)
      : frameOf(
        f.pick([FRAME.MESSAGE, FRAME.MESSAGE, FRAME.ADD_PEER, 42]),
        f.int(6) === 0 ? fdCount : 0,
        sample.head.length,
        sample.treeLength,
        [...sample.head, ...sample.blobs],
      );
    if (f.int(10) === 0) inner[1] = f.int(256);
    const length = f.int(8) === 0 ? f.u32() % (inner.length + 8) : inner.length;
    records.push(
      length & 0xff,
      (length >>> 8) & 0xff,
      (length >>> 16) & 0xff,
      length >>> 24,
      ...inner,
    );
  }
  const count = f.int(6) === 0 ? f.int(8) : n;
  return frameOf(FRAME.BATCH, count, 0, 0, records);
}

/** A frame of random shape, for a sender that attaches `fdCount` fds. */
function hostileFrame(
  f: Fuzz,
  fdCount: number,
  values: readonly unknown[],
): Uint8Array<ArrayBuffer> {
  const type = f.pick([1, 1, 1, 2, 3, 4, 5, 6, 7, 0, 8, 9, 255]);
  const a = f.int(3) === 0 ? f.u32() : fdCount;
  let body: Uint8Array;
  switch (f.int(5)) {
    case 4:
      return hostileBatch(f, fdCount, values);
    case 0:
      body = f.bytes(f.int(64));
      break;
    case 1: {
      const tree = endpointTree(f, fdCount);
      body = new Uint8Array([...tree, 0]);
      const frame = frameOf(type, a, body.length, tree.length, body);
      if (f.int(4) === 0) frame[1] = f.int(256);
      return frame;
    }
    case 2: {
      const sample = mutate(f, sampleOf(f.pick(values)));
      return frameOf(
        type,
        a,
        sample.head.length,
        sample.treeLength,
        [...sample.head, ...sample.blobs],
      );
    }
    default:
      body = new Uint8Array(0);
  }
  const b = f.int(2) === 0 ? f.u32() : body.length;
  const c = f.int(2) === 0 ? f.u32() : Math.max(0, body.length - 1);
  const frame = frameOf(type, a, b, c, body);
  if (f.int(8) === 0) frame[1] = f.int(256);
  if (f.int(8) === 0) frame[2] = f.int(256);
  return frame;
}

// --- shm queue rings --------------------------------------------------------

/** Ring header fields, as Int32Array indexes (see shm/queue.ts). */
export const RING = {
  MAGIC: 0,
  VERSION: 1,
  CAPACITY: 2,
  MAX_MESSAGE: 3,
  TAIL: 16,
  SEND_SEQ: 17,
  RECEIVER_WAITING: 18,
  HEAD: 32,
  RECV_SEQ: 33,
  SENDER_WAITING: 34,
  SENDER_NEEDS: 35,
} as const;

/** One random write into the ring's header, or into a record header. */
function scribble(
  f: Fuzz,
  ring: { header: Int32Array; data: Uint8Array },
): void {
  const { header, data } = ring;
  const capacity = data.byteLength;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const near = () =>
    f.pick([
      0,
      8,
      capacity - 8,
      capacity,
      capacity + 8,
      2 * capacity - 8,
      2 * capacity,
      -8,
      -1,
      4,
      f.int(2 * capacity / 8) * 8,
      f.u32() | 0,
    ]);
  const choice = f.int(10);
  if (choice < 6) {
    const field = f.pick(Object.values(RING));
    const value = field === RING.SEND_SEQ || field === RING.RECV_SEQ
      ? Atomics.load(header, field) + f.pick([-1, 1, 1 << 31, f.u32() | 0])
      : near();
    Atomics.store(header, field, value);
  } else if (choice < 9) {
    // A record header: where head points, or anywhere 8-aligned.
    const head = Atomics.load(header, RING.HEAD);
    const at = f.int(2) === 0 && head >= 0 && head < 2 * capacity
      ? head % capacity - (head % capacity) % 8
      : f.int(capacity / 8) * 8;
    if (f.int(2) === 0) view.setUint32(at, f.u32(), true);
    else view.setInt32(at + 4, f.u32() | 0, true);
  } else {
    // Garbage anywhere in the data area.
    const n = 1 + f.int(Math.min(32, capacity));
    data.set(f.bytes(n), f.int(capacity - n + 1));
  }
}

// --- Control messages -------------------------------------------------------

/**
 * The data-only kinds a unix socket may carry besides a label (receive
 * timestamps, bytes still queued), skipped by the parser.
 */
const TIMESTAMPS: number[] = [
  SOCK.SCM_INQ,
  SOCK.SCM_TIMESTAMP,
  SOCK.SCM_TIMESTAMPNS,
  SOCK.SCM_TIMESTAMPING,
  SOCK.SO_TIMESTAMP_NEW,
  SOCK.SO_TIMESTAMPNS_NEW,
  SOCK.SO_TIMESTAMPING_NEW,
];

/**
 * A control buffer of random messages, the SCM_RIGHTS fds it holds, and
 * whether it holds a kind a unix socket never carries (which the parser
 * must call malformed).
 */
function controlBuffer(
  f: Fuzz,
): { bytes: Uint8Array; fds: number[]; foreign: boolean } {
  const parts: Uint8Array[] = [];
  const fds: number[] = [];
  let foreign = false;
  const messages = f.int(4);
  for (let m = 0; m < messages; m++) {
    const choice = f.int(4);
    let level: number = SOCK.SOL_SOCKET;
    let type: number = SOCK.SCM_RIGHTS;
    let payload: Uint8Array;
    if (choice <= 1) {
      const count = f.pick([0, 1, 2, 3, 7, 64, MAX_FDS, MAX_FDS + 1]);
      payload = new Uint8Array(count * 4);
      const dv = new DataView(payload.buffer);
      for (let i = 0; i < count; i++) {
        const fd = f.int(1 << 20);
        dv.setInt32(i * 4, fd, true);
        fds.push(fd);
      }
    } else if (choice === 2) {
      type = SOCK.SCM_CREDENTIALS;
      payload = f.bytes(12);
    } else if (f.int(2) === 0) {
      // A security label or a receive timestamp (skipped) or a pidfd
      // (closed, never handed out).
      type = f.pick([SOCK.SCM_SECURITY, SOCK.SCM_PIDFD, ...TIMESTAMPS]);
      payload = type === SOCK.SCM_PIDFD
        ? new Uint8Array(new Int32Array([f.int(1 << 20)]).buffer)
        : f.bytes(f.int(40));
    } else {
      level = f.pick([SOCK.SOL_SOCKET, 0, 41, f.int(300)]);
      type = f.pick([5, 6, f.int(1000)]);
      if (
        level === SOCK.SOL_SOCKET &&
        (type <= SOCK.SCM_PIDFD || TIMESTAMPS.includes(type))
      ) {
        type = 5;
      }
      payload = f.bytes(f.int(40));
      foreign = true;
    }
    const len = CMSGHDR.size + payload.length;
    const space = (len + 7) & ~7;
    const part = new Uint8Array(space);
    const dv = new DataView(part.buffer);
    dv.setBigUint64(CMSGHDR.len, BigInt(len), true);
    dv.setInt32(CMSGHDR.level, level, true);
    dv.setInt32(CMSGHDR.type, type, true);
    part.set(payload, CMSGHDR.size);
    parts.push(part);
  }
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return { bytes, fds, foreign };
}

/** Damage to a control buffer: lengths, truncation, garbage. */
function damage(f: Fuzz, bytes: Uint8Array): Uint8Array {
  const out = bytes.slice();
  const dv = new DataView(out.buffer);
  switch (f.int(5)) {
    case 0: // a length field replaced
      if (out.length >= 8) {
        const at = f.int(out.length / 8) * 8;
        dv.setBigUint64(
          at,
          BigInt(f.pick([0, 1, 15, 16, 17, 20, 0xffff_ffff, f.u32()])) |
            (f.int(4) === 0 ? 1n << 63n : 0n),
          true,
        );
      }
      return out;
    case 1: // cut short
      return out.slice(0, f.int(out.length + 1));
    case 2: // a byte flipped
      if (out.length > 0) out[f.int(out.length)] ^= 1 << f.int(8);
      return out;
    case 3: // a negative fd
      if (out.length >= 20) {
        dv.setInt32(16 + f.int((out.length - 16) / 4) * 4, -1, true);
      }
      return out;
    default: // garbage
      return f.bytes(f.int(96));
  }
}

// --- Endpoint adoption ------------------------------------------------------

/** A seqpacket socket whose queue holds a forged shmQueue hello. */
function forgedCarrier(
  f: Fuzz,
): { name: string; make: () => number } {
  const magic = f.int(4) === 0 ? f.u32() : HELLO_MAGIC;
  const version = f.int(4) === 0 ? f.int(4) : HELLO_VERSION;
  const role = f.int(3) === 0 ? f.u32() : f.pick([ROLE.sender, ROLE.receiver]);
  const size = f.int(5) === 0 ? f.pick([0, 8, 15, 17, 64]) : 16;
  const kinds = Array.from(
    { length: f.pick([0, 1, 2, 2, 2, 3]) },
    () => f.int(FD_KINDS.length),
  );
  return {
    name: `forged hello (magic ${magic}, version ${version}, role ${role}, ` +
      `${size} bytes, fds ${kinds.map((k) => FD_KINDS[k][0]).join("+")})`,
    make: () => {
      const [keep, put] = socketpair({ type: "seqpacket" });
      const body = new Uint8Array(size);
      const dv = new DataView(body.buffer);
      if (size >= 16) {
        dv.setUint32(0, magic, true);
        dv.setUint32(4, version, true);
        dv.setUint32(8, role, true);
      }
      const fds = kinds.map((k) => FD_KINDS[k][1]());
      try {
        put.sendSync(body, { fds });
      } finally {
        closeFds(fds);
        put.close();
      }
      return keep[releaseFd]();
    },
  };
}

/** Binds a socket to an abstract name, as a channel end's mark is. */
export function bindAbstract(fd: number, name: string): void {
  const bytes = new TextEncoder().encode(name);
  const addr = new Uint8Array(SOCKADDR_UN.size);
  new DataView(addr.buffer).setUint16(SOCKADDR_UN.family, SOCK.AF_UNIX, true);
  addr.set(bytes, SOCKADDR_UN.path + 1);
  const length = SOCKADDR_UN.path + 1 + bytes.length;
  assert.equal(libc().bind(fd, addr, length), 0, `bind ${name}`);
}

/**
 * A socket bound to an abstract name like a channel end's mark, with
 * fields in and out of range. `expect` is what `fromFd()` must make of it
 * (`null`: refused, a valid mark on a socket that is no seqpacket one).
 */
function markedSocket(f: Fuzz): {
  name: string;
  make: () => number;
  expect: string | null;
} {
  const role = f.pick(["s", "r", "s", "r", "x"]);
  const mode = f.pick([0, 1, 0, 1, 2, 9]);
  const capacity = f.pick([0, 1, 64, 1_000_000, 1_000_001, 999_999_999]);
  const hex = Array.from(f.bytes(12), (b) => b.toString(16).padStart(2, "0"))
    .join("");
  const name = f.int(8) === 0
    ? `conduit-ch/${role}/${mode}/${capacity}/${hex.slice(f.int(24))}`
    : `conduit-ch/${role}/${mode}/${capacity}/${hex}`;
  const valid = role !== "x" && mode <= 1 && capacity >= 1 &&
    capacity <= 1_000_000 && name.endsWith(`/${hex}`);
  const type = f.pick(["seqpacket", "seqpacket", "stream"] as const);
  return {
    name: `${type} socket named ${name}`,
    expect: !valid
      ? "UnixSocket"
      : type !== "seqpacket"
      ? null
      : role === "s"
      ? "Sender"
      : "Receiver",
    make: () => {
      const [a, b] = socketpair({ type });
      b.close();
      const fd = a[releaseFd]();
      bindAbstract(fd, name);
      return fd;
    },
  };
}

/** The endpoint class each plain fd kind must become, or none. */
export const ADOPTED_AS: Record<string, string> = {
  "pipe reader": "PipeReader",
  "pipe writer": "PipeWriter",
  "sealed memfd": "SharedMemory",
  "seqpacket socket": "UnixSocket",
  "stream socket": "UnixSocket",
};

// --- Targets ----------------------------------------------------------------

/** What one target's cases share while they run. */
export interface TargetRun {
  /**
   * Runs one case with its own generator and returns the name of its
   * outcome; throws on a finding.
   */
  run(f: Fuzz, i: number): Promise<string> | string;
  /** Releases what the cases shared. */
  close(): void;
}

/** One decoder of peer data and how to fuzz it. */
export interface FuzzTarget {
  /** Its name in `--target` and in reports. */
  name: string;
  /** What every case checks. */
  checks: string;
  /** Its share of the cases of a run. */
  weight: number;
  /** Makes what the cases share. */
  open(): TargetRun;
  /**
   * Checks that enough cases got past the first checks (a fuzzer stopped
   * at the first length check finds nothing deeper).
   */
  expect(outcomes: Record<string, number>, cases: number): void;
}

/** Every case of a frame, a ring or an fd wait is bounded by this. */
const CASE_MS = 10_000;

function atLeast(
  outcomes: Record<string, number>,
  key: string,
  share: number,
  cases: number,
): void {
  assert.ok(
    (outcomes[key] ?? 0) >= Math.floor(share * cases),
    `only ${outcomes[key] ?? 0} of ${cases} cases were "${key}": ${
      JSON.stringify(outcomes)
    }`,
  );
}

const codecMutate: FuzzTarget = {
  name: "codec-mutate",
  checks:
    "mutated encodings decode to a value (which round-trips) or InvalidData",
  weight: 30,
  open() {
    const samples = seeds().map(sampleOf);
    // Every seed round-trips before it is mutated.
    for (const sample of samples) decodeSample(sample);
    return {
      run(f) {
        const sample = mutate(f, f.pick(samples));
        return valueOrInvalid(
          sample,
          f.int(4) === 0 ? smallLimits(f) : undefined,
        );
      },
      close() {},
    };
  },
  expect(outcomes, cases) {
    atLeast(outcomes, "value", 0.02, cases);
    atLeast(outcomes, "invalid", 0.3, cases);
  },
};

const codecRandom: FuzzTarget = {
  name: "codec-random",
  checks: "random trees decode to a value (which round-trips) or InvalidData",
  weight: 20,
  open() {
    return {
      run(f) {
        // A random tree, mostly of small numbers (tags, short lengths), and
        // mostly behind a valid blob table, so the tree decoder gets them.
        const length = f.int(f.pick([16, 200]));
        const tree = f.int(2) === 0
          ? f.bytes(length)
          : Uint8Array.from({ length }, () => f.int(f.pick([3, 8, 22])));
        let head: Uint8Array;
        let blobs: Uint8Array;
        let treeLength = length;
        if (f.int(4) !== 0) {
          const blobLength = f.pick([0, 8, 16]);
          const table = blobLength === 0 ? [0] : [1, 0, blobLength];
          head = new Uint8Array([...tree, ...table]);
          blobs = f.bytes(blobLength);
        } else {
          head = new Uint8Array([...tree, ...f.bytes(f.int(4))]);
          blobs = f.bytes(f.pick([0, 8, 64]));
          treeLength = f.int(head.length + 1);
        }
        return valueOrInvalid(
          { head, treeLength, blobs },
          f.int(4) === 0 ? smallLimits(f) : undefined,
        );
      },
      close() {},
    };
  },
  expect(outcomes, cases) {
    atLeast(outcomes, "value", 0.005, cases);
  },
};

const control: FuzzTarget = {
  name: "control",
  checks:
    "control buffers parse to their SCM_RIGHTS fds, or malformed, reading nothing outside the buffer",
  weight: 15,
  open() {
    return {
      run(f) {
        const built = controlBuffer(f);
        const damaged = f.int(2) === 0;
        const bytes = damaged ? damage(f, built.bytes) : built.bytes;
        // The view ends where the buffer does: a read past it throws.
        const at = f.pick([0, 8, 192]);
        const memory = new Uint8Array(at + bytes.length);
        memory.fill(0xee, 0, at);
        memory.set(bytes, at);
        const view = new DataView(memory.buffer);
        const { fds, malformed } = parseControl(view, at, bytes.length);
        assert.equal(typeof malformed, "string");
        for (const fd of fds) {
          assert.ok(Number.isInteger(fd) && fd >= 0, `fd ${fd}`);
        }
        if (!damaged) {
          assert.deepEqual(fds, built.fds.slice(0, fds.length));
          if (built.foreign) {
            assert.notEqual(malformed, "");
          } else if (built.fds.length <= MAX_FDS) {
            assert.equal(malformed, "");
            assert.deepEqual(fds, built.fds);
          } else {
            assert.match(malformed, /fds in one message/);
          }
        }
        if (malformed === "") assert.ok(fds.length <= MAX_FDS);
        return malformed === "" ? "clean" : "malformed";
      },
      close() {},
    };
  },
  expect(outcomes, cases) {
    atLeast(outcomes, "clean", 0.2, cases);
    atLeast(outcomes, "malformed", 0.1, cases);
  },
};

const frames: FuzzTarget = {
  name: "frames",
  checks:
    "random frames with random fds from hostile senders fail or drop only that sender, close their fds, and the good sender is still served",
  weight: 10,
  open() {
    const values = seeds();
    const [good, rx] = rawPair();
    // Small enough that some memfd frames are too large.
    rx.maxMessageBytes = 2048;
    return {
      async run(f, i) {
        rx.limits = f.int(4) === 0 ? smallLimits(f) : {};
        // A new hostile sender joins through the good connection.
        const [hostile, theirs] = socketpair({ type: "seqpacket" });
        const fdCount = f.pick([0, 0, 0, 1, 1, 2, 3, 5]);
        const fds = makeFds(fdCount, f.int(FD_KINDS.length));
        try {
          const count = 1 + f.int(2);
          for (let k = 0; k < count; k++) {
            if (f.int(6) === 0) {
              // A large frame: a mutated value in a sealed memfd.
              const sample = mutate(f, sampleOf(f.pick(values)));
              const memfd = writeMemfd([sample.head, sample.blobs]);
              fds.push(memfd);
              const frame = frameOf(
                f.pick([FRAME.MESSAGE_MEMFD, FRAME.BYTES_MEMFD]),
                f.int(4) === 0 ? f.u32() : fdCount,
                f.int(4) === 0 ? f.u32() : sample.head.length,
                sample.treeLength,
                f.int(8) === 0 ? [0] : [],
              );
              await withTimeout(hostile.send(frame, { fds }), CASE_MS, "send");
              fds.pop();
              closeFds([memfd]);
            } else {
              await withTimeout(
                hostile.send(hostileFrame(f, fdCount, values), { fds }),
                CASE_MS,
                "send",
              );
            }
          }
        } finally {
          closeFds(fds);
          hostile.close();
        }
        await withTimeout(
          good.send(frameOf(FRAME.ADD_PEER, 4, 0, 0, []), { fds: [theirs] }),
          CASE_MS,
          "add peer",
        );
        theirs.close();
        await withTimeout(
          good.send(messageFrame(0, [TAG.INT, (i << 1) & 0x7f])),
          CASE_MS,
          "good send",
        );
        // Drain: the good message, and whatever the hostile frames make,
        // until the hostile sender is gone.
        let gotGood = false;
        let outcome = "none";
        for (let tries = 0; !gotGood || rx.senders > 1; tries++) {
          assert.ok(tries < 20, "the receiver does not settle");
          let value: unknown;
          try {
            value = rx.tryRecv();
          } catch (error) {
            if (!(error instanceof Deno.errors.InvalidData)) {
              assert.fail(`${(error as Error)?.stack}`);
            }
            outcome = "invalid";
            continue;
          }
          if (value === (i & 0x3f) && !gotGood) {
            gotGood = true;
          } else if (value !== undefined) {
            if (outcome === "none") outcome = "value";
            closeInside(value);
          }
        }
        assert.equal(rx.senders, 1);
        return outcome;
      },
      close() {
        good.close();
        rx.close();
      },
    };
  },
  expect(outcomes, cases) {
    // Most frames are refused; a few make values.
    atLeast(outcomes, "invalid", 0.5, cases);
  },
};

const ring: FuzzTarget = {
  name: "ring",
  checks:
    "shm queue rings with random header and record fields fail with InvalidData, never read out of bounds, never hang",
  weight: 5,
  open() {
    return {
      async run(f) {
        const bytes = f.pick([16, 64, 256, 1000]);
        const [tx, rx] = shmQueue({ bytes, spin: 0 });
        try {
          // Some traffic first, so head and tail sit anywhere in the ring,
          // and sometimes one message is left in it.
          const before = f.int(4);
          for (let k = 0; k < before; k++) {
            const message = new Uint8Array(f.int(bytes / 2)).fill(k);
            await withTimeout(tx.send(message), CASE_MS, "send");
            if (k < before - 1 || f.int(2) === 0) {
              await withTimeout(rx.recv(), CASE_MS, "recv");
            }
          }
          const shared = rx[ringViews]();
          const writes = 1 + f.int(3);
          for (let k = 0; k < writes; k++) scribble(f, shared);
          if (f.int(2) === 0) {
            // The receiver side: with the sender gone, every receive ends.
            tx.close();
            for (let k = 0; k < 8; k++) {
              let got: Uint8Array | null;
              try {
                got = await withTimeout(rx.recv(), CASE_MS, "recv");
              } catch (error) {
                if (!(error instanceof Deno.errors.InvalidData)) throw error;
                // It stays failed.
                await assert.rejects(rx.recv(), Deno.errors.InvalidData);
                return "invalid";
              }
              if (got === null) return "end";
              assert.ok(got.byteLength <= rx.maxMessageBytes);
            }
            return "message";
          }
          // The sender side: with the receiver gone, every send ends.
          rx.close();
          for (let k = 0; k < 8; k++) {
            try {
              await withTimeout(
                tx.send(new Uint8Array(f.int(bytes + 1))),
                CASE_MS,
                "send",
              );
            } catch (error) {
              if (error instanceof Deno.errors.InvalidData) return "invalid";
              if (error instanceof Deno.errors.BrokenPipe) return "broken";
              throw error;
            }
          }
          return "sent";
        } finally {
          tx.close();
          rx.close();
        }
      },
      close() {},
    };
  },
  expect(outcomes, cases) {
    atLeast(outcomes, "invalid", 0.15, cases);
  },
};

/** A random fd to adopt, with the endpoint class it must become (or none). */
function adoptee(f: Fuzz): {
  name: string;
  make: () => number;
  expect: string | null;
} {
  const choice = f.int(3);
  if (choice === 0) {
    const [name, make] = f.pick(FD_KINDS);
    return { name, make, expect: ADOPTED_AS[name] ?? null };
  }
  if (choice === 1) return markedSocket(f);
  return { ...forgedCarrier(f), expect: null };
}

const fdKinds: FuzzTarget = {
  name: "fd-kinds",
  checks:
    "messages carrying random mixes of fd kinds: recv() returns their endpoints or a TypeError, and closes every fd it got",
  weight: 5,
  open() {
    return {
      async run(f, i) {
        const type = f.pick(["seqpacket", "stream", "dgram"] as const);
        const [a, b] = socketpair({ type });
        try {
          const picks = Array.from({ length: 1 + f.int(4) }, () => {
            const [name, make] = f.pick(FD_KINDS);
            return { name, make, expect: ADOPTED_AS[name] ?? null };
          });
          const fds = picks.map(({ make }) => make());
          try {
            await withTimeout(
              a.send(new Uint8Array([i & 0xff]), { fds }),
              CASE_MS,
              "send",
            );
          } finally {
            closeFds(fds);
          }
          const what = picks.map(({ name }) => name).join(", ");
          let message;
          try {
            message = f.int(2) === 0
              ? b.recvSync()
              : await withTimeout(b.recv(), CASE_MS, what);
          } catch (error) {
            assert.ok(error instanceof TypeError, `${what}: ${error}`);
            assert.ok(
              picks.some(({ expect }) => expect === null),
              `${what}: ${error}`,
            );
            return "refused";
          }
          assert.ok(message !== null, what);
          assert.deepEqual(message.data, new Uint8Array([i & 0xff]), what);
          assert.deepEqual(
            message.fds.map((e) => e.constructor.name),
            picks.map(({ expect }) => expect),
            what,
          );
          for (const endpoint of message.fds) endpoint.close();
          return "adopted";
        } finally {
          a.close();
          b.close();
        }
      },
      close() {},
    };
  },
  expect(outcomes, cases) {
    atLeast(outcomes, "adopted", 0.1, cases);
    atLeast(outcomes, "refused", 0.1, cases);
  },
};

const adopt: FuzzTarget = {
  name: "adopt",
  checks:
    "fromFd() on fds of every kind, forged queue hellos and forged channel marks returns the endpoint it must or throws (TypeError; RangeError for an empty memfd), leaving the fd to the caller",
  weight: 5,
  open() {
    return {
      run(f) {
        const { name, make, expect } = adoptee(f);
        const fd = make();
        let endpoint;
        try {
          endpoint = fromFd(fd, { allowCloexec: true });
        } catch (error) {
          // The fd is still open: closing it succeeds.
          assert.equal(libc().close(fd), 0, name);
          // An empty memfd is SharedMemory that cannot be mapped.
          const Class = name === "empty memfd" ? RangeError : TypeError;
          assert.ok(error instanceof Class, `${name}: ${error}`);
          assert.equal(expect, null, `${name}: ${error}`);
          return "refused";
        }
        try {
          if (expect !== null) {
            assert.equal(endpoint.constructor.name, expect, name);
          } else {
            // A forged hello that fromFd() took: it must at least be a
            // socket, never a queue end made of the wrong fds.
            assert.equal(endpoint.constructor.name, "UnixSocket", name);
          }
          if (endpoint instanceof Sender) {
            assert.ok(endpoint.capacity >= 1 && endpoint.capacity <= 1e6);
          }
        } finally {
          endpoint.close();
        }
        return "adopted";
      },
      close() {},
    };
  },
  expect(outcomes, cases) {
    atLeast(outcomes, "adopted", 0.2, cases);
    atLeast(outcomes, "refused", 0.1, cases);
  },
};

/** Every target, in the order a run takes them. */
export const TARGETS: readonly FuzzTarget[] = [
  codecMutate,
  codecRandom,
  control,
  frames,
  ring,
  fdKinds,
  adopt,
];

/** How a target's cases ended, by outcome. */
export type Outcomes = Record<string, number>;

/** A finding: the case that failed and how to run it again. */
export class FuzzFailure extends Error {
  constructor(
    readonly target: string,
    readonly seed: number,
    readonly index: number,
    cause: unknown,
  ) {
    super(
      `fuzz target ${target}, case ${index} of seed ${seed} failed: ${
        (cause as Error)?.message ?? cause
      }\nrerun it alone: deno task fuzz --seed ${seed} --target ${target} --from ${index} --cases 1`,
      { cause },
    );
    this.name = "FuzzFailure";
  }
}

/**
 * Runs cases `from` to `from + cases - 1` of `target` in a run seeded with
 * `seed`. `progress` is called before each case.
 */
export async function runTarget(
  target: FuzzTarget,
  seed: number,
  cases: number,
  from = 0,
  progress?: (index: number) => void,
): Promise<Outcomes> {
  const outcomes: Outcomes = {};
  const run = target.open();
  try {
    for (let i = from; i < from + cases; i++) {
      progress?.(i);
      let outcome: string;
      try {
        outcome = await run.run(new Fuzz(caseSeed(seed, target.name, i)), i);
      } catch (error) {
        throw new FuzzFailure(target.name, seed, i, error);
      }
      outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
    }
  } finally {
    run.close();
  }
  return outcomes;
}

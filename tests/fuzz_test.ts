// Bounded, deterministic fuzzing of every decoder of untrusted input: the
// channel value codec, channel frames from a hostile sender, a shm queue
// ring scribbled on by a hostile peer, and fds of unexpected kinds. Each
// test uses its own seeded PRNG and a fixed number of cases, so a failure
// names a case that reproduces.

import assert from "node:assert/strict";
import {
  ChannelClosedError,
  fromFd,
  pipe,
  Receiver,
  SharedMemory,
  shmQueue,
  socketpair,
  type UnixSocket,
} from "../mod.ts";
import {
  decode,
  encode,
  type EndpointHooks,
  invalid,
  readBlobTable,
  type Reader,
  TAG,
  type Writer,
} from "../_channel_codec.ts";
import {
  FRAME,
  HEADER,
  header,
  INLINE_MAX,
  writeMemfd,
} from "../_channel_wire.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { libc } from "../ffi/libc.ts";
import { cstr } from "../ffi/mem.ts";
import { MMAP } from "../ffi/layout.ts";
import { ROLE, sendHello } from "../shm/_carrier.ts";
import { everyKind } from "./fixtures/_channel_values.ts";
import { test, withTimeout } from "./_util.ts";

/** mulberry32: small, fast, and the same sequence on every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}

class Fuzz {
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
const HUGE_VARINTS = [
  [0xff, 0xff, 0xff, 0xff, 0x0f], // 2^32 - 1
  [0x80, 0x80, 0x80, 0x80, 0x10], // 2^32
  [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // 2^56 - 1
  [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // too many bytes
  [0x80, 0x80, 0x80, 0x00], // overlong zero
  [0xff, 0xff, 0x03], // 65535
];

// --- 1. The channel value codec ---------------------------------------------

/** An endpoint stand-in: the codec writes it through the hooks. */
class Placeholder {
  constructor(readonly index: number) {}
}

const PLACEHOLDERS = 4;

const hooks: EndpointHooks = {
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
function seeds(): unknown[] {
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
  ];
}

/** The bytes that travel: head then blobs, as in one frame. */
interface Sample {
  head: Uint8Array;
  treeLength: number;
  blobs: Uint8Array;
}

function sampleOf(value: unknown): Sample {
  const encoded = encode(value, hooks);
  const blobs = new Uint8Array(encoded.blobBytes);
  let at = 0;
  for (const blob of encoded.blobs) {
    blobs.set(blob, at);
    at += blob.byteLength;
  }
  return { head: encoded.head, treeLength: encoded.treeLength, blobs };
}

/** Decodes as the receiver does: blob table, then the tree. */
function decodeSample({ head, treeLength, blobs }: Sample): unknown {
  const specs = readBlobTable(head, treeLength, blobs.byteLength);
  const offsets: number[] = [];
  let at = 0;
  for (const spec of specs) {
    offsets.push(at);
    at += spec.length;
  }
  const taken = new Set<number>();
  return decode(head, treeLength, specs, (index) => {
    assert.ok(!taken.has(index), `blob ${index} asked for twice`);
    taken.add(index);
    const start = offsets[index];
    return blobs.slice(start, start + specs[index].length).buffer;
  }, hooks);
}

/** One random change to a sample, of the kinds that break length checks. */
function mutate(f: Fuzz, sample: Sample): Sample {
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
        const varint = f.pick(HUGE_VARINTS);
        const out = new Uint8Array(Math.max(head.length, at + varint.length));
        out.set(head);
        out.set(varint, at);
        head = out;
        break;
      }
      case 3: { // a huge varint inserted
        const varint = f.pick(HUGE_VARINTS);
        const out = new Uint8Array(head.length + varint.length);
        out.set(head.subarray(0, at));
        out.set(varint, at);
        out.set(head.subarray(at), at + varint.length);
        head = out;
        if (f.int(2) === 0 && at < treeLength) treeLength += varint.length;
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

/**
 * Decodes `sample`; anything but a value or `InvalidData` fails, and so does
 * a decode slower than `budget` ms (a decoder that is quadratic in a length
 * a peer chose is a hang waiting for a bigger input).
 */
function expectValueOrInvalid(
  sample: Sample,
  what: string,
  budget = 250,
): "value" | "invalid" {
  const start = performance.now();
  let outcome: "value" | "invalid" = "value";
  try {
    decodeSample(sample);
  } catch (error) {
    outcome = "invalid";
    if (!(error instanceof Deno.errors.InvalidData)) {
      assert.fail(
        `${what}: ${(error as Error)?.constructor?.name}: ${
          (error as Error)?.message
        }\nhead ${Array.from(sample.head).join(",")} tree ${sample.treeLength}`,
      );
    }
  }
  const took = performance.now() - start;
  assert.ok(took < budget, `${what}: took ${took.toFixed(0)} ms`);
  return outcome;
}

test(
  "fuzz: the channel codec decodes mutated encodings (20000 cases) to a value or InvalidData",
  () => {
    const samples = seeds().map(sampleOf);
    // Every seed round-trips before it is mutated.
    for (const sample of samples) decodeSample(sample);
    const f = new Fuzz(0xc0dec);
    const outcomes = { value: 0, invalid: 0 };
    for (let i = 0; i < 20000; i++) {
      const base = samples[i % samples.length];
      outcomes[expectValueOrInvalid(mutate(f, base), `mutation ${i}`)]++;
    }
    // Some mutations still decode: the fuzzer gets past the first checks.
    assert.ok(outcomes.value > 500, JSON.stringify(outcomes));
  },
);

test(
  "fuzz: the channel codec decodes random bytes (20000 cases) to a value or InvalidData",
  () => {
    const f = new Fuzz(0x5eed);
    const outcomes = { value: 0, invalid: 0 };
    for (let i = 0; i < 20000; i++) {
      // A random tree, mostly of small numbers (tags, short lengths), and
      // mostly behind a valid blob table, so the tree decoder gets them.
      const length = f.int(i < 10000 ? 16 : 200);
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
      outcomes[
        expectValueOrInvalid(
          { head, treeLength, blobs },
          `random ${i}`,
        )
      ]++;
    }
    assert.ok(outcomes.value > 100, JSON.stringify(outcomes));
  },
);

test(
  "an Error named after an Object.prototype member (toString, constructor, ...) is InvalidData, not a TypeError",
  () => {
    const utf8 = (s: string) => {
      const b = new TextEncoder().encode(s);
      return [b.length, ...b];
    };
    for (
      const name of [
        "toString",
        "constructor",
        "hasOwnProperty",
        "valueOf",
        "__proto__",
      ]
    ) {
      const tree = [TAG.ERROR, ...utf8(name), ...utf8("m"), 0, 0];
      const head = new Uint8Array([...tree, 0]);
      assert.throws(
        () =>
          decodeSample({
            head,
            treeLength: tree.length,
            blobs: new Uint8Array(0),
          }),
        (e: Error) =>
          e instanceof Deno.errors.InvalidData &&
          e.message.includes(`unknown error type ${name}`),
        name,
      );
      // Such an error is sent as a plain Error.
      const error = new Error("m");
      error.name = name;
      const got = decodeSample(sampleOf(error)) as Error;
      assert.ok(got instanceof Error && got.constructor === Error, name);
      assert.equal(got.message, "m");
    }
  },
);

test(
  "a bigint of 1 MiB decodes in linear time (it took minutes: quadratic)",
  () => {
    const n = 1 << 20;
    const tree = new Uint8Array(2 + 3 + n);
    tree.set([TAG.BIGINT, 1, 0x80, 0x80, 0x40]);
    tree.fill(0xa5, 5);
    const head = new Uint8Array(tree.length + 1);
    head.set(tree);
    const start = performance.now();
    const got = decodeSample({
      head,
      treeLength: tree.length,
      blobs: new Uint8Array(0),
    }) as bigint;
    const took = performance.now() - start;
    assert.equal(typeof got, "bigint");
    assert.ok(got < 0n);
    assert.equal((-got).toString(16), "a5".repeat(n));
    assert.ok(took < 2000, `took ${took.toFixed(0)} ms`);
    // Round trips keep their value.
    for (const v of [0n, 1n, -1n, 255n, 256n, -(2n ** 64n), 2n ** 1000n - 1n]) {
      assert.equal(decodeSample(sampleOf(v)), v);
    }
  },
);

// --- 2. Channel frames from a hostile sender --------------------------------

const KIND = { SENDER: 8, RECEIVER: 9 } as const;
const O_RDONLY = 0;
const O_RDWR = 2;
const O_CLOEXEC = 0o2000000;
const O_PATH = 0o10000000;
const O_DIRECTORY = 0o200000;
const EFD_CLOEXEC = 0o2000000;

/** Opens `path` through libc (FFI only: no read permission needed). */
function openFd(path: string, flags: number): number {
  const fd = libc().open(cstr(path), flags | O_CLOEXEC, 0);
  assert.ok(fd >= 0, `open ${path}`);
  return fd;
}

/** Makes one fd of some kind; the caller closes it. */
const FD_KINDS: [string, () => number][] = [
  ["pipe reader", () => {
    const { reader, writer } = pipe();
    writer.close();
    return reader._release();
  }],
  ["pipe writer", () => {
    const { reader, writer } = pipe();
    reader.close();
    return writer._release();
  }],
  ["sealed memfd", () => {
    const memory = SharedMemory.create(64);
    return memory._release();
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
  ["O_PATH directory", () => openFd("/", O_PATH | O_DIRECTORY)],
  ["seqpacket socket", () => {
    const [a, b] = socketpair({ type: "seqpacket" });
    b.close();
    return a._release();
  }],
  ["stream socket", () => {
    const [a, b] = socketpair();
    b.close();
    return a._release();
  }],
];

function closeFds(fds: number[]): void {
  for (const fd of fds) libc().close(fd);
}

/** Closes every endpoint inside a value a hostile peer got through. */
function closeInside(value: unknown, seen = new Set<unknown>()): void {
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

function frameOf(
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
function messageFrame(fds: number, tree: number[]): Uint8Array<ArrayBuffer> {
  return frameOf(FRAME.MESSAGE, fds, tree.length + 1, tree.length, [
    ...tree,
    0,
  ]);
}

/** A raw seqpacket peer and the receiver of its connection. */
function rawPair(capacity = 1_000_000): [UnixSocket, Receiver<unknown>] {
  const [peer, mine] = socketpair({ type: "seqpacket" });
  const owned = new OwnedFd(mine._release(), "Receiver");
  return [peer, new Receiver([{ fd: owned, capacity, unacked: 0 }])];
}

/** The tree of an array of `n` endpoints naming random fds. */
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
      const conns = f.int(3);
      tree.push(conns);
      for (let j = 0; j < conns; j++) {
        tree.push(index(), ...small(), ...small());
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

/** A frame of random shape, with what the fuzzer means to attach. */
function hostileFrame(f: Fuzz, fdCount: number): Uint8Array<ArrayBuffer> {
  const type = f.pick([1, 1, 1, 2, 3, 4, 5, 6, 7, 0, 8, 255]);
  const a = f.int(3) === 0 ? f.u32() : fdCount;
  let body: Uint8Array;
  switch (f.int(4)) {
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
      const sample = mutate(f, sampleOf(f.pick(frameSeeds)));
      const frame = frameOf(
        type,
        a,
        sample.head.length,
        sample.treeLength,
        [...sample.head, ...sample.blobs],
      );
      return frame;
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

const frameSeeds = seeds();

/** Makes `n` fds of kinds from the table, cycling from `from`. */
function makeFds(n: number, from: number): number[] {
  const fds: number[] = [];
  for (let i = 0; i < n; i++) {
    fds.push(FD_KINDS[(from + i) % FD_KINDS.length][1]());
  }
  return fds;
}

test(
  "a frame refused at its header closes the fds that came with it (bad version, oversize, hello, add-peer)",
  async () => {
    const cases: [string, Uint8Array, number][] = [
      [
        "bad version",
        (() => {
          const f = messageFrame(1, [TAG.NULL]);
          f[1] = 2;
          return f;
        })(),
        1,
      ],
      ["short header", new Uint8Array([FRAME.MESSAGE, 1, 0]), 2],
      ["oversize", new Uint8Array(INLINE_MAX + 4096).fill(1), 2],
      ["hello with an fd", frameOf(FRAME.HELLO, 4, 0, 0, []), 1],
      ["add-peer with two fds", frameOf(FRAME.ADD_PEER, 4, 0, 0, []), 2],
      ["add-peer of capacity 0", frameOf(FRAME.ADD_PEER, 0, 0, 0, []), 1],
      ["add-peer with data", frameOf(FRAME.ADD_PEER, 4, 0, 0, [1]), 1],
    ];
    for (const [what, frame, fdCount] of cases) {
      const [peer, rx] = rawPair();
      try {
        const fds = makeFds(fdCount, 0);
        await peer.send(frame, { fds });
        closeFds(fds);
        assert.throws(() => rx.tryRecv(), Deno.errors.InvalidData, what);
        assert.throws(() => rx.tryRecv(), ChannelClosedError, what);
      } finally {
        peer.close();
        rx.close();
      }
    }
  },
);

test(
  "an endpoint refused after its fd was named closes that fd (bad sender, receiver cut short)",
  async () => {
    const cases: [string, number[], number][] = [
      ["sender of capacity 0", [TAG.ENDPOINT, KIND.SENDER, 0, 0, 0], 1],
      ["sender of a bad mode", [TAG.ENDPOINT, KIND.SENDER, 0, 4, 9], 1],
      ["sender cut short", [TAG.ENDPOINT, KIND.SENDER, 0], 1],
      ["receiver naming a missing fd", [
        TAG.ENDPOINT,
        KIND.RECEIVER,
        2,
        0,
        4,
        0,
        7,
        4,
        0,
      ], 1],
      ["receiver with a bad second connection", [
        TAG.ENDPOINT,
        KIND.RECEIVER,
        2,
        0,
        4,
        0,
        1,
        0,
        0,
      ], 2],
      ["receiver cut short", [TAG.ENDPOINT, KIND.RECEIVER, 2, 0, 4, 0, 1], 2],
      ["second endpoint reuses an fd", [
        TAG.ARRAY,
        2,
        TAG.ENDPOINT,
        KIND.SENDER,
        0,
        4,
        0,
        TAG.ENDPOINT,
        KIND.SENDER,
        0,
        4,
        0,
      ], 1],
    ];
    for (const [what, tree, fdCount] of cases) {
      const [peer, rx] = rawPair();
      try {
        // Seqpacket sockets: they make a Sender or a Receiver connection.
        const fds = makeFds(fdCount, 8);
        await peer.send(messageFrame(fdCount, tree), { fds });
        closeFds(fds);
        assert.throws(() => rx.tryRecv(), Deno.errors.InvalidData, what);
        assert.throws(() => rx.tryRecv(), ChannelClosedError, what);
      } finally {
        peer.close();
        rx.close();
      }
    }
  },
);

test(
  "fuzz: 3000 random frames with random fds from hostile senders fail or drop only that sender, close their fds, and the good sender is still served",
  async () => {
    const f = new Fuzz(0xf4a3e);
    const [good, rx] = rawPair();
    // Small enough that some memfd frames are too large.
    rx.maxMessageBytes = 2048;
    const outcomes = { value: 0, invalid: 0, none: 0 };
    try {
      for (let i = 0; i < 3000; i++) {
        // A new hostile sender joins through the good connection.
        const [hostile, theirs] = socketpair({ type: "seqpacket" });
        const fdCount = f.pick([0, 0, 0, 1, 1, 2, 3, 5]);
        const fds = makeFds(fdCount, f.int(FD_KINDS.length));
        try {
          const frames = 1 + f.int(2);
          for (let k = 0; k < frames; k++) {
            if (f.int(6) === 0) {
              // A large frame: a mutated value in a sealed memfd.
              const sample = mutate(f, sampleOf(f.pick(frameSeeds)));
              const memfd = writeMemfd([sample.head, sample.blobs]);
              fds.push(memfd);
              const frame = frameOf(
                f.pick([FRAME.MESSAGE_MEMFD, FRAME.BYTES_MEMFD]),
                f.int(4) === 0 ? f.u32() : fdCount,
                f.int(4) === 0 ? f.u32() : sample.head.length,
                sample.treeLength,
                f.int(8) === 0 ? [0] : [],
              );
              await hostile.send(frame, { fds });
              fds.pop();
              closeFds([memfd]);
            } else {
              await hostile.send(hostileFrame(f, fdCount), { fds });
            }
          }
        } finally {
          closeFds(fds);
          hostile.close();
        }
        await good.send(frameOf(FRAME.ADD_PEER, 4, 0, 0, []), {
          fds: [theirs],
        });
        theirs.close();
        await good.send(messageFrame(0, [TAG.INT, (i << 1) & 0x7f]));
        // Drain: the good message, and whatever the hostile frames make,
        // until the hostile sender is gone.
        let gotGood = false;
        for (let tries = 0; !gotGood || rx.senders > 1; tries++) {
          assert.ok(tries < 20, `case ${i}: the receiver does not settle`);
          let value: unknown;
          try {
            value = rx.tryRecv();
          } catch (error) {
            if (!(error instanceof Deno.errors.InvalidData)) {
              assert.fail(`case ${i}: ${(error as Error)?.stack}`);
            }
            outcomes.invalid++;
            continue;
          }
          if (value === (i & 0x3f) && !gotGood) {
            gotGood = true;
          } else if (value === undefined) {
            outcomes.none++;
          } else {
            outcomes.value++;
            closeInside(value);
          }
        }
        assert.equal(rx.senders, 1, `case ${i}`);
      }
    } finally {
      good.close();
      rx.close();
    }
    // Most frames are refused; a few make values.
    assert.ok(outcomes.invalid > 1500, JSON.stringify(outcomes));
  },
);

// --- 3. A shm queue ring scribbled on by a hostile peer ---------------------

// Header fields, as Int32Array indexes (see shm/queue.ts).
const RING = {
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

test(
  "fuzz: 2000 shm queue rings with random header and record fields fail with InvalidData, never read out of bounds, never hang",
  async () => {
    const f = new Fuzz(0x5a3e);
    const outcomes = { message: 0, end: 0, invalid: 0, sent: 0, broken: 0 };
    for (let i = 0; i < 2000; i++) {
      const bytes = f.pick([16, 64, 256, 1000]);
      const [tx, rx] = shmQueue({ bytes, spin: 0 });
      try {
        // Some traffic first, so head and tail sit anywhere in the ring,
        // and sometimes one message is left in it.
        const before = f.int(4);
        for (let k = 0; k < before; k++) {
          const message = new Uint8Array(f.int(bytes / 2)).fill(k);
          await withTimeout(tx.send(message), 2000, `send ${i}`);
          if (k < before - 1 || f.int(2) === 0) {
            await withTimeout(rx.recv(), 2000, `recv ${i}`);
          }
        }
        const ring = rx._ring();
        const writes = 1 + f.int(3);
        for (let k = 0; k < writes; k++) scribble(f, ring);
        const what = `ring ${i}`;
        if (f.int(2) === 0) {
          // The receiver side: with the sender gone, every receive ends.
          tx.close();
          for (let k = 0; k < 8; k++) {
            let got: Uint8Array | null;
            try {
              got = await withTimeout(rx.recv(), 2000, what);
            } catch (error) {
              if (!(error instanceof Deno.errors.InvalidData)) throw error;
              outcomes.invalid++;
              // It stays failed.
              await assert.rejects(rx.recv(), Deno.errors.InvalidData, what);
              break;
            }
            if (got === null) {
              outcomes.end++;
              break;
            }
            outcomes.message++;
            assert.ok(got.byteLength <= rx.maxMessage, what);
          }
        } else {
          // The sender side: with the receiver gone, every send ends.
          rx.close();
          for (let k = 0; k < 8; k++) {
            try {
              await withTimeout(
                tx.send(new Uint8Array(f.int(bytes + 1))),
                2000,
                what,
              );
              outcomes.sent++;
            } catch (error) {
              if (error instanceof Deno.errors.InvalidData) {
                outcomes.invalid++;
              } else if (error instanceof Deno.errors.BrokenPipe) {
                outcomes.broken++;
              } else throw error;
              break;
            }
          }
        }
      } finally {
        tx.close();
        rx.close();
      }
    }
    assert.ok(outcomes.invalid > 300, JSON.stringify(outcomes));
  },
);

// --- 4. Fds of unexpected kinds from a peer ---------------------------------

/** A seqpacket socket whose queue holds a forged shmQueue hello. */
function forgedCarrier(role: number, kinds: number[]): () => number {
  return () => {
    const [keep, put] = socketpair({ type: "seqpacket" });
    const fds = kinds.map((k) => FD_KINDS[k][1]());
    sendHello(put.rawFd, role, fds);
    closeFds(fds);
    put.close();
    return keep._release();
  };
}

const EVENTFD = FD_KINDS.findIndex(([name]) => name === "eventfd");
const UNSEALED = FD_KINDS.findIndex(([name]) => name === "unsealed memfd");
const SEQPACKET = FD_KINDS.findIndex(([name]) => name === "seqpacket socket");

/** Every kind, with the endpoint class it must become (or none). */
const ADOPTION: [string, () => number, string | null][] = [
  ...FD_KINDS.map(([name, make]): [string, () => number, string | null] => [
    name,
    make,
    {
      "pipe reader": "PipeReader",
      "pipe writer": "PipeWriter",
      "sealed memfd": "SharedMemory",
      "unsealed memfd": "SharedMemory",
      "seqpacket socket": "UnixSocket",
      "stream socket": "UnixSocket",
    }[name] ?? null,
  ]),
  [
    "forged queue hello, bad role",
    forgedCarrier(99, [EVENTFD, EVENTFD]),
    null,
  ],
  [
    "forged queue hello, eventfd for memory",
    forgedCarrier(ROLE.receiver, [EVENTFD, SEQPACKET]),
    null,
  ],
  [
    "forged queue hello, unsealed memfd",
    forgedCarrier(ROLE.sender, [UNSEALED, SEQPACKET]),
    null,
  ],
  [
    "forged queue hello, three fds",
    forgedCarrier(ROLE.sender, [UNSEALED, SEQPACKET, EVENTFD]),
    null,
  ],
];

test(
  "fromFd() on fds of every kind returns the documented endpoint or throws (TypeError; RangeError for an empty memfd), leaving the fd to the caller",
  () => {
    for (const [name, make, expected] of ADOPTION) {
      const fd = make();
      let endpoint;
      try {
        endpoint = fromFd(fd);
      } catch (error) {
        // The fd is still open: closing it succeeds.
        assert.equal(libc().close(fd), 0, name);
        // An empty memfd is SharedMemory that cannot be mapped.
        const Class = name === "empty memfd" ? RangeError : TypeError;
        assert.ok(error instanceof Class, `${name}: ${error}`);
        assert.equal(expected, null, `${name}: ${error}`);
        continue;
      }
      endpoint.close();
      assert.equal(endpoint.constructor.name, expected, name);
    }
  },
);

test(
  "fuzz: 1000 messages carrying random mixes of fd kinds: recv() returns their endpoints or a TypeError, and closes every fd it got",
  async () => {
    const f = new Fuzz(0xfd5);
    for (let i = 0; i < 1000; i++) {
      const type = f.pick(["seqpacket", "stream", "dgram"] as const);
      const [a, b] = socketpair({ type });
      try {
        const picks = Array.from(
          { length: 1 + f.int(4) },
          () => ADOPTION[f.int(ADOPTION.length)],
        );
        const fds = picks.map(([, make]) => make());
        try {
          await a.send(new Uint8Array([i & 0xff]), { fds });
        } finally {
          closeFds(fds);
        }
        const what = `message ${i}: ${picks.map(([name]) => name).join(", ")}`;
        const sync = f.int(2) === 0;
        let message;
        try {
          message = sync
            ? b.recvSync()
            : await withTimeout(b.recv(), 2000, what);
        } catch (error) {
          assert.ok(error instanceof TypeError, `${what}: ${error}`);
          assert.ok(
            picks.some(([, , expected]) => expected === null),
            `${what}: ${error}`,
          );
          continue;
        }
        assert.ok(message !== null, what);
        assert.deepEqual(message.data, new Uint8Array([i & 0xff]), what);
        assert.deepEqual(
          message.fds.map((e) => e.constructor.name),
          picks.map(([, , expected]) => expected),
          what,
        );
        for (const endpoint of message.fds) endpoint.close();
      } finally {
        a.close();
        b.close();
      }
    }
  },
);

import assert from "node:assert/strict";
import { BLOCK_BYTES, FreshBytes, SMALL_MESSAGE_BYTES } from "../shm/_fresh.ts";
import { shmQueue, socketpair } from "../mod.ts";
import { test } from "./_util.ts";

/** Whether two views share bytes. */
function overlap(a: Uint8Array, b: Uint8Array): boolean {
  return a.buffer === b.buffer &&
    a.byteOffset < b.byteOffset + b.byteLength &&
    b.byteOffset < a.byteOffset + a.byteLength;
}

/** Messages of the sizes given, each filled with its own index + 1. */
function numbered(sizes: number[]): Uint8Array[] {
  return sizes.map((n, i) => new Uint8Array(n).fill(i + 1));
}

/** Checks received copies against what was sent, then that they stay apart. */
function checkApart(got: Uint8Array[], sent: Uint8Array[]): void {
  assert.equal(got.length, sent.length);
  for (let i = 0; i < got.length; i++) {
    assert.deepEqual(got[i], sent[i], `message ${i} arrived whole`);
  }
  // Writing to one received message changes no other.
  for (const message of got) message.fill(0xee);
  for (let i = 0; i < got.length; i++) {
    for (let j = i + 1; j < got.length; j++) {
      assert.ok(!overlap(got[i], got[j]), `messages ${i} and ${j} overlap`);
    }
  }
}

test("FreshBytes take() hands out zeroed, 8-aligned, disjoint views of one block up to 1 KiB", () => {
  const fresh = new FreshBytes(1 << 20);
  const sizes = [0, 1, 7, 64, 100, SMALL_MESSAGE_BYTES, 3];
  const views = sizes.map((n) => fresh.take(n));
  views.forEach((view, i) => {
    assert.equal(view.byteLength, sizes[i]);
    assert.equal(view.byteOffset % 8, 0, `view ${i} starts at a multiple of 8`);
    assert.ok(view.every((b) => b === 0), `view ${i} is zeroed`);
    assert.equal(view.buffer, views[0].buffer, `view ${i} is in the block`);
    assert.equal(view.buffer.byteLength, BLOCK_BYTES);
  });
  for (let i = 0; i < views.length; i++) {
    views[i].fill(i + 1);
    for (let j = 0; j < i; j++) {
      assert.ok(!overlap(views[i], views[j]), `views ${j} and ${i} overlap`);
    }
  }
  views.forEach((view, i) => assert.ok(view.every((b) => b === i + 1)));

  const large = fresh.take(SMALL_MESSAGE_BYTES + 1);
  assert.equal(large.byteOffset, 0);
  assert.equal(large.buffer.byteLength, SMALL_MESSAGE_BYTES + 1);
});

test("FreshBytes take() starts a new block when the current one is full", () => {
  const fresh = new FreshBytes(1 << 20);
  const first = fresh.take(8);
  const seen = new Set([first.buffer]);
  // Two blocks' worth of the largest small size.
  for (let i = 0; i < 40; i++) {
    const view = fresh.take(SMALL_MESSAGE_BYTES).fill(1);
    assert.ok(view.byteOffset + view.byteLength <= view.buffer.byteLength);
    seen.add(view.buffer);
  }
  assert.ok(seen.size >= 3, `${seen.size} blocks for 40 KiB of views`);
  assert.ok(first.every((b) => b === 0), "a full block is never reused");
});

test("FreshBytes take() after a view's buffer was transferred starts a new block", () => {
  const fresh = new FreshBytes(1 << 20);
  const given = fresh.take(16).fill(3);
  const kept = fresh.take(16).fill(4);
  const moved = structuredClone(given, { transfer: [given.buffer] });
  assert.deepEqual(moved.subarray(0, 16), new Uint8Array(16).fill(3));
  assert.equal(kept.byteLength, 0, "the transfer detached the whole block");
  const next = fresh.take(16);
  assert.equal(next.byteLength, 16);
  assert.notEqual(next.buffer, given.buffer);
  next.fill(5);
  assert.ok(next.every((b) => b === 5));
});

test("shmQueue recv() and for await: small messages share blocks without touching each other", async () => {
  using q = shmQueue({ bytes: 1 << 16 });
  const [tx, rx] = q;
  const sizes = [1, 64, 63, 1000, SMALL_MESSAGE_BYTES, 2000, 0, 17, 8];
  const sent = numbered(sizes);
  for (const m of sent) await tx.send(m);
  const got: Uint8Array[] = [];
  for (let i = 0; i < 4; i++) got.push((await rx.recv())!);
  tx.close();
  for await (const m of rx) got.push(m);
  checkApart(got, sent);
  assert.equal(got[1].buffer, got[2].buffer, "two small messages, one block");
  assert.equal(got[5].buffer.byteLength, 2000, "a large message, its own");
});

test("shmQueue recv() after a received message's buffer was transferred", async () => {
  using q = shmQueue({ bytes: 1 << 16 });
  const [tx, rx] = q;
  await tx.send(new Uint8Array(32).fill(1));
  const first = (await rx.recv())!;
  structuredClone(first, { transfer: [first.buffer as ArrayBuffer] });
  await tx.send(new Uint8Array(32).fill(2));
  const second = (await rx.recv())!;
  assert.deepEqual(second, new Uint8Array(32).fill(2));
});

test("FreshBytes: a receiver of small messages gets small blocks; release() lets the block go", () => {
  const tiny = new FreshBytes(1);
  const one = tiny.take(1);
  assert.equal(one.buffer.byteLength, 16 * 8, "16 of the largest, 8-aligned");
  const mid = new FreshBytes(100);
  const view = mid.take(100);
  assert.equal(view.buffer.byteLength, 16 * 104);
  // Larger than a sixteenth of the block: a buffer of its own.
  const alone = tiny.take(9);
  assert.equal(alone.buffer.byteLength, 9);
  assert.equal(alone.byteOffset, 0);
  const before = mid.take(8);
  mid.release();
  const after = mid.take(8);
  assert.notEqual(after.buffer, before.buffer, "a new block after release()");
  assert.equal(before.byteLength, 8, "views handed out stay usable");
});

test("shmQueue: a small ring's receiver takes small blocks, and lowering maxMessageBytes shrinks them", async () => {
  using small = shmQueue({ bytes: 64 });
  await small[0].send(new Uint8Array([1]));
  const got = (await small[1].recv())!;
  assert.deepEqual(got, new Uint8Array([1]));
  assert.ok(got.buffer.byteLength <= 16 * 64, `${got.buffer.byteLength} bytes`);
  using large = shmQueue({ bytes: 1 << 16 });
  await large[0].send(new Uint8Array([2]));
  assert.equal((await large[1].recv())!.buffer.byteLength, BLOCK_BYTES);
  large[1].maxMessageBytes = 16;
  await large[0].send(new Uint8Array([3]));
  const lowered = (await large[1].recv())!;
  assert.deepEqual(lowered, new Uint8Array([3]));
  assert.equal(lowered.buffer.byteLength, 16 * 16);
});

test("FreshBytes: two instances never hand out views of one block", () => {
  const a = new FreshBytes(1 << 20);
  const b = new FreshBytes(1 << 20);
  const fromA = a.take(64).fill(1);
  const fromB = b.take(64).fill(2);
  assert.notEqual(fromA.buffer, fromB.buffer);
  assert.ok(fromA.every((x) => x === 1) && fromB.every((x) => x === 2));
});

test("shmQueue: a cloned small message carries no other queue's bytes; a transfer empties no other queue's messages", async () => {
  using alice = shmQueue({ bytes: 1 << 16 });
  using bob = shmQueue({ bytes: 1 << 16 });
  const secret = new TextEncoder().encode("alice: password=hunter2");
  await alice[0].send(secret);
  await bob[0].send(new TextEncoder().encode("bob: hi"));
  await bob[0].send(new TextEncoder().encode("bob: bye"));
  const fromAlice = (await alice[1].recv())!;
  const first = (await bob[1].recv())!;
  const second = (await bob[1].recv())!;
  assert.notEqual(fromAlice.buffer, first.buffer, "one block per receiver");
  // A clone copies the whole buffer behind the view: Bob's block holds
  // Bob's messages only.
  const cloned = new Uint8Array(structuredClone(first.buffer));
  const text = new TextDecoder().decode(cloned.filter((b) => b !== 0));
  assert.ok(!text.includes("alice"), `the clone holds ${JSON.stringify(text)}`);
  assert.ok(text.includes("bob: hi"));
  // Giving one of Bob's messages away empties Bob's block only.
  structuredClone(second, { transfer: [second.buffer as ArrayBuffer] });
  assert.equal(first.byteLength, 0, "the other message of the same block");
  assert.deepEqual(fromAlice, secret, "Alice's message is untouched");
});

for (const type of ["seqpacket", "dgram", "stream"] as const) {
  test(`UnixSocket recv() on a ${type} pair gives each message a buffer of its own, of its size`, async () => {
    const [a, b] = socketpair({ type });
    using _a = a;
    using _b = b;
    const sent = numbered([1, 64, 1000, 2000]);
    const got: Uint8Array[] = [];
    for (const m of sent) {
      // One at a time, so that a stream socket hands back each whole.
      await a.send(m);
      got.push((await b.recv())!.data);
    }
    checkApart(got, sent);
    for (const m of got) {
      assert.equal(m.byteOffset, 0);
      assert.equal(m.buffer.byteLength, m.byteLength);
    }
  });
}

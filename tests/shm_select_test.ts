import assert from "node:assert/strict";
import { shmQueue, ShmReceiverSet } from "../mod.ts";
import { stillPending, test, withTimeout } from "./_util.ts";
import { ringViews } from "../shm/_keys.ts";

const local = { ffi: true } as const;
const bytes = (...values: number[]) => new Uint8Array(values);

test(
  "ShmReceiverSet.select() returns every queue's messages, each queue's in order, then each queue's end",
  async () => {
    using set = new ShmReceiverSet();
    const [tx1, rx1] = shmQueue({ bytes: 4096 });
    const [tx2, rx2] = shmQueue({ bytes: 4096 });
    const id1 = set.add(rx1);
    const id2 = set.add(rx2);
    assert.equal(set.size, 2);
    assert.equal(set.get(id1), rx1);
    await tx2.send(bytes(2));
    await tx1.send(bytes(1));
    await tx2.send(bytes(3));
    const seen: [number, number][] = [];
    for (let i = 0; i < 3; i++) {
      const event = await withTimeout(set.select(), 5000, "a message");
      assert.equal(event.closed, undefined);
      seen.push([event.id, event.value![0]]);
    }
    // Across queues the set takes them as it learns of them.
    assert.deepEqual(seen.filter(([id]) => id === id1), [[id1, 1]]);
    assert.deepEqual(seen.filter(([id]) => id === id2), [[id2, 2], [id2, 3]]);
    tx1.close();
    assert.deepEqual(await withTimeout(set.select(), 5000, "an end"), {
      id: id1,
      closed: true,
    });
    assert.equal(rx1.closed, true);
    assert.equal(set.size, 1);
    tx2.close();
    assert.deepEqual(await withTimeout(set.select(), 5000, "an end"), {
      id: id2,
      closed: true,
    });
    assert.equal(set.size, 0);
  },
  local,
);

test(
  "select() on an empty set waits for a receiver to be added; drop() closes one; close() ends a pending select",
  async () => {
    const set = new ShmReceiverSet();
    const [tx, rx] = shmQueue({ bytes: 4096 });
    const waiting = set.select();
    assert.ok(await stillPending(waiting, 20));
    const id = set.add(rx);
    await tx.send(bytes(7));
    const event = await withTimeout(waiting, 5000, "the added queue");
    assert.deepEqual([event.id, event.value![0]], [id, 7]);
    assert.equal(set.drop(id), true);
    assert.equal(set.drop(id), false);
    assert.equal(rx.closed, true);
    tx.close();
    const pending = set.select();
    assert.ok(await stillPending(pending, 20));
    set.close();
    await assert.rejects(pending, Deno.errors.BadResource);
    await assert.rejects(set.select(), Deno.errors.BadResource);
    using late = shmQueue({ bytes: 4096 });
    assert.throws(() => set.add(late[1]), Deno.errors.BadResource);
    assert.throws(
      () => new ShmReceiverSet().add({} as never),
      TypeError,
    );
  },
  local,
);

test(
  "a corrupt ring is reported as that queue's end, with the error, and the set goes on",
  async () => {
    using set = new ShmReceiverSet();
    const [badTx, badRx] = shmQueue({ bytes: 4096 });
    const [goodTx, goodRx] = shmQueue({ bytes: 4096 });
    const bad = set.add(badRx);
    const good = set.add(goodRx);
    // A hostile sender publishes a tail beyond the ring.
    Atomics.store(badTx[ringViews]().header, 16, 1 << 30);
    await badTx.send(bytes(1)).catch(() => {});
    const event = await withTimeout(set.select(), 5000, "the corrupt ring");
    assert.equal(event.id, bad);
    assert.equal(event.closed, true);
    assert.ok(event.error instanceof Deno.errors.InvalidData);
    await goodTx.send(bytes(5));
    const next = await withTimeout(set.select(), 5000, "the good queue");
    assert.deepEqual([next.id, next.value![0]], [good, 5]);
    badTx.close();
    goodTx.close();
  },
  local,
);

// ReceiverSet (channel/receiver_set.ts).

import assert from "node:assert/strict";
import {
  channel,
  ChannelClosedError,
  ReceiverSet,
  type Sender,
} from "../mod.ts";
import { stillPending, test, withTimeout } from "./_util.ts";
import { libc } from "../ffi/libc.ts";

test(
  "ReceiverSet.select() returns messages of several receivers and reports each close once",
  async () => {
    using set = new ReceiverSet<string>();
    const senders: Sender<string>[] = [];
    const ids: number[] = [];
    for (let i = 0; i < 3; i++) {
      const [tx, rx] = channel<string>();
      senders.push(tx);
      ids.push(set.add(rx));
    }
    await senders[1].send("one");
    assert.deepEqual(await set.select(), { id: ids[1], value: "one" });
    const waiting = set.select();
    assert.ok(await stillPending(waiting, 30));
    await senders[2].send("two");
    assert.deepEqual(await withTimeout(waiting, 2000, "select"), {
      id: ids[2],
      value: "two",
    });
    senders[0].close();
    assert.deepEqual(await set.select(), { id: ids[0], closed: true });
    await senders[2].send("last");
    senders[2].close();
    senders[1].close();
    const rest = [await set.select(), await set.select(), await set.select()];
    assert.deepEqual(
      rest.map((r) => JSON.stringify(r)).sort(),
      [
        { id: ids[1], closed: true },
        { id: ids[2], closed: true },
        { id: ids[2], value: "last" },
      ].map((r) => JSON.stringify(r)).sort(),
    );
    assert.equal(set.size, 0);
    await assert.rejects(set.select(), ChannelClosedError);
    const aborted = new AbortController();
    const [tx, rx] = channel<string>();
    set.add(rx);
    const pending = set.select({ signal: aborted.signal });
    aborted.abort(new Error("stop"));
    await assert.rejects(pending, /stop/);
    tx.close();
  },
);

test(
  "a malformed frame ends only its own receiver: ReceiverSet.select() reports it closed with the error, and the others are still served",
  async () => {
    using set = new ReceiverSet<string>();
    const [good, goodRx] = channel<string>();
    const [bad, badRx] = channel<string>();
    const goodId = set.add(goodRx);
    const badId = set.add(badRx);
    // 64 bytes that are no frame, written on the bad sender's socket.
    assert.equal(
      libc().write(bad.rawFd, new Uint8Array(64).fill(0xff), 64n),
      64n,
    );
    await good.send("still served");
    const results = [await set.select(), await set.select()];
    const failed = results.find((r) => r.id === badId);
    assert.ok(failed?.closed, JSON.stringify(results));
    assert.ok(failed.error instanceof Deno.errors.InvalidData);
    assert.match(failed.error.message, /malformed frame/);
    assert.equal(badRx.closed, true);
    assert.deepEqual(results.find((r) => r.id === goodId), {
      id: goodId,
      value: "still served",
    });
    assert.equal(set.size, 1);
    await good.send("again");
    assert.deepEqual(await set.select(), { id: goodId, value: "again" });
    good.close();
    bad.close();
  },
  { ffi: true },
);

test(
  "a receiver of a ReceiverSet goes on with its other senders after one is dropped for what it sent, and reports the error with its close",
  async () => {
    using set = new ReceiverSet<unknown>();
    const [tx, rx] = channel<unknown>();
    const healthy = tx.clone();
    rx.limits = { maxDepth: 2 };
    const id = set.add(rx);
    await tx.send({ a: { b: { c: 1 } } }); // deeper than the limit
    await healthy.send("from the other sender");
    assert.deepEqual(await withTimeout(set.select(), 5000, "select"), {
      id,
      value: "from the other sender",
    });
    assert.equal(rx.closed, false);
    // The dropped sender's peer end is gone: its sends now fail.
    await assert.rejects(
      (async () => {
        for (let i = 0; i < 10_000; i++) await tx.send(i);
      })(),
      ChannelClosedError,
    );
    await healthy.send("again");
    assert.deepEqual(await set.select(), { id, value: "again" });
    healthy.close();
    tx.close();
    const last = await withTimeout(set.select(), 5000, "the close");
    assert.equal(last.id, id);
    assert.equal(last.closed, true);
    assert.ok(
      last.error instanceof Deno.errors.InvalidData,
      String(last.error),
    );
    assert.equal(set.size, 0);
  },
);

test(
  "ReceiverSet.select() takes a turn after each dropped sender: a receiver removed then is left alone, and an abort then ends the select",
  async () => {
    using set = new ReceiverSet<unknown>();
    const [tx, rx] = channel<unknown>();
    rx.limits = { maxDepth: 2 };
    const clones = Array.from({ length: 50 }, () => tx.clone());
    for (const clone of clones) await clone.send({ a: { b: { c: 1 } } });
    set.add(rx);
    const [txB, rxB] = channel<string>();
    const idB = set.add(rxB);
    const controller = new AbortController();
    const reason = new Error("done");
    setTimeout(async () => {
      assert.equal(set.remove(idB), rxB);
      await txB.send("for the caller");
      controller.abort(reason);
    }, 0);
    await assert.rejects(
      withTimeout(set.select({ signal: controller.signal }), 10_000, "select"),
      (error: unknown) => error === reason,
    );
    assert.equal(rxB.closed, false);
    assert.equal(rxB.tryRecv(), "for the caller");
    for (const clone of clones) clone.close();
    tx.close();
    txB.close();
    rxB.close();
  },
);

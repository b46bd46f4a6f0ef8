// The shm queue's for-await iterator (async generator rules), and receives
// in call order when a woken receive finds nothing and waits again.
import assert from "node:assert/strict";
import {
  channel,
  type Receiver,
  shmQueue,
  type ShmReceiver,
  socketpair,
  spawn,
} from "../mod.ts";
import {
  DENO,
  fixture,
  stillPending,
  test,
  withTimeout,
  zombieChildren,
} from "./_util.ts";
import { mismatch } from "./fixtures/_shm_messages.ts";
import { ringViews } from "../shm/_keys.ts";

const PEER = fixture("shm_peer.ts");
const perms = { ffi: true, read: true, run: true, env: true } as const;
const b = (n: number) => new Uint8Array([n]);

// --- The shm queue's iterator ---

test("shm iterator: return() during a pending next() settles after it; the message goes to that next()", async () => {
  using q = shmQueue({ bytes: 4096 });
  const [tx, rx] = q;
  const it = rx[Symbol.asyncIterator]();
  assert.equal(it[Symbol.asyncIterator](), it);
  const p1 = it.next();
  const p2 = it.return!(7);
  const p3 = it.next();
  assert.ok(await stillPending(p1, 20));
  await tx.send(b(1));
  await tx.send(b(2));
  assert.deepEqual(await withTimeout(p1, 5000, "p1"), {
    value: b(1),
    done: false,
  });
  assert.deepEqual(await withTimeout(p2, 5000, "p2"), { value: 7, done: true });
  assert.deepEqual(await withTimeout(p3, 5000, "p3"), {
    value: undefined,
    done: true,
  });
  // The iterator ended; the receiver did not: the next message is still there.
  assert.deepEqual(await withTimeout(rx.recv(), 5000, "recv"), b(2));
});

test("shm iterator: throw() during a pending next() rejects after it, and ends the iteration", async () => {
  using q = shmQueue({ bytes: 4096 });
  const [tx, rx] = q;
  const it = rx[Symbol.asyncIterator]();
  const p1 = it.next();
  const boom = new Error("boom");
  const p2 = it.throw!(boom);
  const p3 = it.next();
  await tx.send(b(1));
  assert.deepEqual(await withTimeout(p1, 5000, "p1"), {
    value: b(1),
    done: false,
  });
  await assert.rejects(withTimeout(p2, 5000, "p2"), (e) => e === boom);
  assert.deepEqual(await withTimeout(p3, 5000, "p3"), {
    value: undefined,
    done: true,
  });
});

test("shm iterator: 200 concurrent next() calls settle in call order across turns yielded, then the end", async () => {
  const [tx, rx] = shmQueue({ bytes: 1 << 16 });
  try {
    for (let i = 0; i < 100; i++) await tx.send(new Uint8Array([i]));
    const it = rx[Symbol.asyncIterator]();
    const calls = Array.from({ length: 205 }, () => it.next());
    for (let i = 100; i < 200; i++) await tx.send(new Uint8Array([i & 0xff]));
    tx.close();
    const order: number[] = [];
    calls.forEach((p, i) => p.then(() => order.push(i)));
    const got = await withTimeout(Promise.all(calls), 5000, "calls");
    assert.deepEqual(
      got.slice(0, 200).map((r) => r.value?.[0]),
      Array.from({ length: 200 }, (_, i) => i & 0xff),
    );
    assert.ok(got.slice(200).every((r) => r.done === true));
    assert.deepEqual(order, Array.from({ length: 205 }, (_, i) => i));
  } finally {
    tx.close();
    rx.close();
  }
});

test("shm iterator: a corrupt ring rejects once with InvalidData, then the iteration is over", async () => {
  using q = shmQueue({ bytes: 4096 });
  const [tx, rx] = q;
  await tx.send(b(1));
  const { data } = rx[ringViews]();
  new DataView(data.buffer, data.byteOffset).setUint32(4, 99, true); // wrong seq
  const it = rx[Symbol.asyncIterator]();
  await assert.rejects(it.next(), Deno.errors.InvalidData);
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  await assert.rejects(rx.recv(), Deno.errors.InvalidData);
});

test("shm iterator: break leaves the receiver usable; close() during a pending next() ends the iteration quietly", async () => {
  const [tx, rx] = shmQueue({ bytes: 4096 });
  try {
    for (let i = 0; i < 3; i++) await tx.send(b(i));
    for await (const m of rx) {
      assert.deepEqual(m, b(0));
      break;
    }
    assert.deepEqual(await rx.recv(), b(1));
    const it = rx[Symbol.asyncIterator]();
    assert.deepEqual((await it.next()).value, b(2));
    const pending = it.next();
    assert.ok(await stillPending(pending, 20));
    rx.close();
    assert.deepEqual(await withTimeout(pending, 5000, "pending"), {
      value: undefined,
      done: true,
    });
    assert.deepEqual(await it.next(), { value: undefined, done: true });
    assert.deepEqual(await it.return!(3), { value: 3, done: true });
    // A loop over a receiver closed before it ends at once.
    for await (const _ of rx) assert.fail("a closed receiver yielded");
    // recv() itself still says the receiver is closed.
    await assert.rejects(rx.recv(), Deno.errors.BadResource);
    await assert.rejects(it.throw!(new RangeError("x")), RangeError);
  } finally {
    tx.close();
    rx.close();
  }
});

test(
  "shm iterator: a sender SIGKILLed mid-message ends a for await after its whole messages, nothing leaks",
  async () => {
    const [tx, rx] = shmQueue({ bytes: 1 << 16 });
    const child = spawn(DENO, {
      args: [
        "run",
        "--allow-ffi",
        "--allow-read",
        PEER,
        "die-mid-message",
        "3",
      ],
      fds: [tx],
      stdout: "null",
      stderr: "null",
    });
    tx.close();
    try {
      let i = 0;
      const loop = (async () => {
        for await (const got of rx) assert.equal(mismatch(got, i++, 1000), "");
      })();
      await withTimeout(loop, 15_000, "the loop");
      assert.equal(i, 3);
      const it = rx[Symbol.asyncIterator]();
      assert.deepEqual(await it.next(), { value: undefined, done: true });
      assert.equal(await rx.recv(), null);
    } finally {
      rx.close();
      const status = await withTimeout(child.status, 15_000, "child");
      assert.equal(status.signal, "SIGKILL");
    }
    assert.deepEqual(zombieChildren(), []);
  },
  perms,
);

// --- Receives in call order ---

test("socket: a receive requeued behind one that found nothing, then aborted, loses no message; the third gets the next", async () => {
  const [a, s] = socketpair({ type: "seqpacket" });
  try {
    const c2 = new AbortController();
    const r1 = s.recv({ spin: 0 });
    const r2 = s.recv({ spin: 0, signal: c2.signal });
    const r3 = s.recv({ spin: 0 });
    a.sendSync(b(9));
    // Taken before the wake-up reaches the poller's dispatch: r1 wakes to
    // nothing and parks again, r2 and r3 behind it.
    assert.equal(s.recvSync()!.data[0], 9);
    await new Promise((r) => setTimeout(r, 20));
    c2.abort();
    await assert.rejects(
      withTimeout(r2, 5000, "r2"),
      (e: Error) => e.name === "AbortError",
    );
    a.sendSync(b(1));
    assert.equal((await withTimeout(r1, 5000, "r1"))!.data[0], 1);
    a.sendSync(b(3));
    assert.equal((await withTimeout(r3, 5000, "r3"))!.data[0], 3);
  } finally {
    a.close();
    s.close();
  }
});

test("channel: closing the receiver inside or during a for await ends the loop quietly; a receive after still says it is closed", async () => {
  const [tx, rx] = channel<number>();
  try {
    for (let i = 0; i < 5; i++) await tx.send(i);
    const got: number[] = [];
    for await (const v of rx) {
      got.push(v);
      if (v === 2) rx.close();
    }
    assert.deepEqual(got, [0, 1, 2]);
    await assert.rejects(rx.recv(), Deno.errors.BadResource);
    for await (const _ of rx) assert.fail("a closed receiver yielded");

    // Closed while the loop waits for a message.
    const [tx2, rx2] = channel<number>();
    const seen: number[] = [];
    const loop = (async () => {
      for await (const v of rx2) seen.push(v);
    })();
    await tx2.send(7);
    await new Promise((r) => setTimeout(r, 20));
    rx2.close();
    await withTimeout(loop, 5000, "loop after close");
    assert.deepEqual(seen, [7]);
    tx2.close();
  } finally {
    tx.close();
    rx.close();
  }
});

test("channel: a for await over a receiver that was sent away fails with BadResource: being moved is no close() of this program's", async () => {
  const [htx, hrx] = channel<unknown>();
  const [tx, rx] = channel<number>();
  try {
    await tx.send(1);
    await tx.send(2);
    await assert.rejects(
      withTimeout(
        (async () => {
          for await (const _ of rx) await htx.send({ rx });
        })(),
        5000,
        "loop over a moved receiver",
      ),
      Deno.errors.BadResource,
    );
    // The receiver arrived whole where it was sent.
    const moved = await hrx.recv() as { rx: Receiver<number> };
    assert.equal(await moved.rx.recv(), 2);
    moved.rx.close();

    // A shm receiver transferred in a message is given away the same way;
    // one sent as a copy and then closed ends its loop quietly.
    const [stx, srx] = shmQueue({ bytes: 4096 });
    await stx.send(b(1));
    await stx.send(b(2));
    await assert.rejects(
      withTimeout(
        (async () => {
          for await (const _ of srx) {
            await htx.send({ srx }, { transfer: [srx] });
          }
        })(),
        5000,
        "loop over a transferred shm receiver",
      ),
      Deno.errors.BadResource,
    );
    const sent = await hrx.recv() as { srx: ShmReceiver };
    assert.deepEqual(await sent.srx.recv(), b(2));
    sent.srx.close();
    await stx.send(b(3));
    const [stx2, srx2] = shmQueue({ bytes: 4096 });
    await stx2.send(b(1));
    await stx2.send(b(2));
    const seen: number[] = [];
    for await (const m of srx2) {
      seen.push(m[0]);
      await htx.send({ srx2 });
      srx2.close();
    }
    assert.deepEqual(seen, [1]);
    const copy = await hrx.recv() as { srx2: ShmReceiver };
    assert.deepEqual(await copy.srx2.recv(), b(2));
    for (const e of [copy.srx2, stx, stx2]) e.close();
  } finally {
    for (const e of [htx, hrx, tx, rx]) e.close();
  }
});

test("channel: a receive requeued behind one that found nothing, then aborted, loses no message", async () => {
  const [tx2, rx2] = channel<number>();
  try {
    const c2 = new AbortController();
    const r1 = rx2.recv({ spin: 0 });
    const r2 = rx2.recv({ spin: 0, signal: c2.signal });
    const r3 = rx2.recv({ spin: 0 });
    await tx2.send(9);
    assert.equal(rx2.tryRecv(), 9); // taken before the dispatch
    await new Promise((r) => setTimeout(r, 20));
    c2.abort();
    await assert.rejects(
      withTimeout(r2, 5000, "r2"),
      (e: Error) => e.name === "AbortError",
    );
    await tx2.send(1);
    assert.equal(await withTimeout(r1, 5000, "r1"), 1);
    await tx2.send(3);
    assert.equal(await withTimeout(r3, 5000, "r3"), 3);
  } finally {
    tx2.close();
    rx2.close();
  }
});

for (const senders of [3, 9]) {
  test(`channel with ${senders} senders: receives in call order, one aborted, none lost`, async () => {
    const [tx0, rx] = channel<number>();
    const txs = [
      tx0,
      ...Array.from({ length: senders - 1 }, () => tx0.clone()),
    ];
    try {
      // Make the connections known to the receiver.
      for (const [k, tx] of txs.entries()) await tx.send(k);
      for (let k = 0; k < senders; k++) {
        await withTimeout(rx.recv(), 5000, "warm");
      }
      const c = new AbortController();
      const r1 = rx.recv({ spin: 0, signal: c.signal }).then(
        (v) => v,
        (e) => e,
      );
      const r2 = rx.recv({ spin: 0 });
      const r3 = rx.recv({ spin: 0 });
      c.abort();
      await txs[senders - 1].send(100);
      assert.equal(await withTimeout(r2, 5000, "r2"), 100);
      assert.equal((await r1).name, "AbortError");
      // r4 called as r2's value arrives: it must wait behind r3.
      const r2b = rx.recv({ spin: 0 });
      await txs[1].send(101);
      const first = await withTimeout(
        Promise.race([r3.then((v) => ["r3", v]), r2b.then((v) => ["r2b", v])]),
        5000,
        "r3 or r2b",
      );
      assert.deepEqual(first, ["r3", 101]);
      await txs[0].send(102);
      assert.equal(await withTimeout(r2b, 5000, "r2b"), 102);
    } finally {
      for (const tx of txs) tx.close();
      rx.close();
    }
  });
}

// bench/_baselines.ts: the measurements of the mechanisms compared against
// (fork() IPC, Deno.Command pipes, C programs) and the round-trip timing
// they share.

import assert from "node:assert/strict";
import {
  alternating,
  commandStdout,
  cPingPong,
  cThroughput,
  ddWriter,
  type Echo,
  findCompiler,
  forkCount,
  forkPingPong,
  measureRoundTrips,
  readAllByob,
  timeRoundTrips,
} from "../bench/_baselines.ts";
import { CHILD_WAIT_MS, fakeEcho, QUIET } from "./_bench_util.ts";
import { test, withTimeout } from "./_util.ts";

test("readAllByob() reads a byte stream to its end into one reused buffer", async () => {
  const chunks = [new Uint8Array(700), new Uint8Array(300), new Uint8Array(5)];
  let i = 0;
  const sizes = new Set<number>();
  const buffers = new Set<ArrayBufferLike>();
  const stream = new ReadableStream({
    type: "bytes",
    pull(controller) {
      const request = controller.byobRequest!;
      const view = request.view as Uint8Array;
      sizes.add(view.buffer.byteLength);
      buffers.add(view.buffer);
      if (i === chunks.length) {
        controller.close();
        request.respond(0);
        return;
      }
      const n = Math.min(chunks[i].byteLength, view.byteLength);
      i++;
      request.respond(n);
    },
  });
  assert.equal(await readAllByob(stream, 1024), 1005);
  // Every read offers the whole 1024-byte buffer again (transferred, never
  // reallocated smaller or bigger).
  assert.deepEqual([...sizes], [1024]);
  assert.equal(buffers.size, chunks.length + 1);
});

test(
  "forkPingPong() times every round trip with json and advanced serialization, with both processes' CPU",
  async () => {
    for (const serialization of ["json", "advanced"] as const) {
      const r = await withTimeout(
        forkPingPong({
          serialization,
          count: 40,
          payload: new Uint8Array(64).fill(7),
        }),
        CHILD_WAIT_MS,
        `fork() round trips, ${serialization}`,
      );
      assert.equal(r.rtts.length, 40);
      assert.ok(r.rtts.every((t) => t > 0 && Number.isFinite(t)));
      assert.ok(r.msgPerSec > 0);
      // Both processes handle every message: both use CPU for it.
      assert.ok(r.cpu.parent > 0, `parent ${r.cpu.parent}`);
      assert.ok(r.cpu.child > 0, `child ${r.cpu.child}`);
    }
  },
  { run: true, read: true, env: true, ffi: true },
);

test(
  "forkCount() sends messages one way into a child that counts all of them",
  async () => {
    for (const serialization of ["json", "advanced"] as const) {
      // forkCount() throws unless the child counted exactly 300.
      const r = await withTimeout(
        forkCount(serialization, 300),
        CHILD_WAIT_MS,
        `fork() one way, ${serialization}`,
      );
      assert.ok(r.msgPerSec > 0 && Number.isFinite(r.msgPerSec));
      assert.ok(r.cpu.parent > 0 && r.cpu.child > 0);
    }
  },
  { run: true, read: true, env: true, ffi: true },
);

test(
  "timeRoundTrips() runs every round trip in order, and the child's CPU is the difference of its two answers",
  async () => {
    const fake = fakeEcho([100, 500]);
    const r = await timeRoundTrips(fake.echo, 8);
    assert.deepEqual(fake.seen, [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.equal(r.rtts.length, 8);
    assert.ok(r.rtts.every((t) => t >= 0));
    assert.equal(r.cpu.child, (500 - 100) / 8);
    assert.ok(r.cpu.parent >= 0);
  },
  { ffi: true },
);

test(
  "timeRoundTrips() paced starts round trip i no earlier than i intervals after the first",
  async () => {
    const fake = fakeEcho();
    const interval = 5;
    const r = await timeRoundTrips(fake.echo, 6, interval);
    assert.equal(fake.starts.length, 6);
    for (let i = 1; i < fake.starts.length; i++) {
      const offset = fake.starts[i] - fake.starts[0];
      // Timers may fire late (a loaded machine) but never early; allow the
      // first round trip's own start-up time as slack.
      assert.ok(
        offset >= i * interval - 1,
        `round trip ${i} started ${offset} ms after the first`,
      );
    }
    assert.ok(r.seconds * 1000 >= 5 * interval - 1);
  },
  { ffi: true },
);

test(
  "measureRoundTrips() closes the echo when a round trip fails",
  async () => {
    const fake = fakeEcho();
    const failing: Echo = {
      ...fake.echo,
      roundTrip: (i) =>
        i === 3
          ? Promise.reject(new Error("wrong echo"))
          : fake.echo.roundTrip(i),
    };
    await assert.rejects(
      measureRoundTrips(() => Promise.resolve(failing), 10),
      /wrong echo/,
    );
    assert.equal(fake.closed, 1);
    await measureRoundTrips(() => Promise.resolve(fake.echo), 2);
    assert.equal(fake.closed, 2);
  },
  { ffi: true },
);

test(
  "measureRoundTrips() with a warm-up makes those round trips first on the same child and counts only the rest",
  async () => {
    // Child CPU answers: before and after the warm-up, then before and
    // after the round trips counted.
    const fake = fakeEcho([0, 9_000, 9_000, 9_500]);
    let starts = 0;
    const out = await measureRoundTrips(
      () => {
        starts++;
        return Promise.resolve(fake.echo);
      },
      5,
      0,
      3,
    );
    assert.equal(starts, 1);
    assert.deepEqual(fake.seen, [0, 1, 2, 0, 1, 2, 3, 4]);
    assert.equal(out.rtts.length, 5);
    assert.equal(out.cpu.child, 100);
    assert.equal(fake.closed, 1);
  },
  { ffi: true },
);

test(
  "measureRoundTrips() makes back-to-back round trips, then the warm-up, on the same child, and counts only the rest",
  async () => {
    // Child CPU answers around each of the three series.
    const fake = fakeEcho([0, 1_000, 1_000, 9_000, 9_000, 9_500]);
    const out = await measureRoundTrips(
      () => Promise.resolve(fake.echo),
      5,
      0,
      3,
      2,
    );
    assert.deepEqual(fake.seen, [0, 1, 0, 1, 2, 0, 1, 2, 3, 4]);
    assert.equal(out.rtts.length, 5);
    assert.equal(out.cpu.child, 100);
    assert.equal(fake.closed, 1);
  },
  { ffi: true },
);

test("alternating() reverses the steps on odd runs and wraps each whole run", async () => {
  const order: string[] = [];
  await alternating(
    QUIET,
    "test",
    [
      (measured) => {
        order.push(`a${measured ? "" : "?"}`);
        return Promise.resolve();
      },
      () => {
        order.push("b");
        return Promise.resolve();
      },
    ],
    async (run) => {
      order.push("[");
      await run();
      order.push("]");
    },
  );
  // Warm-up (run 0) in order, run 1 reversed, run 2 in order.
  assert.deepEqual(order, [
    "[",
    "a?",
    "b",
    "]",
    "[",
    "b",
    "a",
    "]",
    "[",
    "a",
    "b",
    "]",
  ]);
});

test(
  "commandStdout() reads all of dd's output through a BYOB reader",
  async () => {
    const dd = ddWriter(8);
    const r = await commandStdout(dd.cmd, dd.args);
    assert.equal(r.bytes, 8 << 20);
    assert.ok(r.mibps > 0 && r.ms > 0);
  },
  { run: true },
);

test(
  "the C baselines build with cc and report throughput and round trips",
  async () => {
    const cc = await findCompiler();
    const through = await cThroughput("pipe", 8 << 20);
    const rtt = await cPingPong("seqpacket", 100);
    if (cc === null) {
      assert.equal(through, null);
      assert.equal(rtt, null);
      return;
    }
    assert.equal(through?.bytes, 8 << 20);
    assert.ok(through!.mibps > 0);
    assert.ok(rtt!.p50 > 0 && rtt!.p99 >= rtt!.p50 && rtt!.msgPerSec > 0);
    const stream = await cThroughput("socketpair", 8 << 20, 65536);
    assert.equal(stream?.bytes, 8 << 20);
  },
  { run: true, read: true, write: true, env: true },
);

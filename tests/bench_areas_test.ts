// The area files' child processes: the echo children of socketpair_bench.ts,
// channel_bench.ts and shm_bench.ts, the channel count child and the shm
// throughput transfers.

import assert from "node:assert/strict";
import { measureRoundTrips } from "../bench/_baselines.ts";
import { seqpacketEcho } from "../bench/socketpair_bench.ts";
import { channelCount, channelEcho } from "../bench/channel_bench.ts";
import { queueEcho, transfer } from "../bench/shm_bench.ts";
import { CHILD_WAIT_MS } from "./_bench_util.ts";
import { test, withTimeout, zombieChildren } from "./_util.ts";

const CHILD_PERMS = { run: true, read: true, env: true };

for (
  const [name, start] of [
    ["seqpacket", () => seqpacketEcho(64)],
    ["channel", channelEcho],
    ["shm queue", queueEcho],
  ] as const
) {
  test(
    `the ${name} echo child answers round trips and reports its CPU time`,
    async () => {
      const r = await withTimeout(
        measureRoundTrips(start, 50),
        CHILD_WAIT_MS,
        `${name} round trips`,
      );
      assert.equal(r.rtts.length, 50);
      assert.ok(r.rtts.every((t) => t > 0 && Number.isFinite(t)));
      // The child's CPU comes from its own getrusage: it handled 50 messages.
      assert.ok(r.cpu.child > 0, `child ${r.cpu.child}`);
      assert.ok(r.cpu.parent > 0, `parent ${r.cpu.parent}`);
      assert.deepEqual(zombieChildren(), []);
    },
    CHILD_PERMS,
  );
}

test(
  "the channel count child counts every one-way message with for await",
  async () => {
    // channelCount() throws unless the child counted exactly 500.
    const r = await withTimeout(
      channelCount(500),
      CHILD_WAIT_MS,
      "channel one way",
    );
    assert.ok(r.msgPerSec > 0 && Number.isFinite(r.msgPerSec));
    assert.ok(r.cpu.parent > 0 && r.cpu.child > 0);
    assert.deepEqual(zombieChildren(), []);
  },
  CHILD_PERMS,
);

test(
  "the shm throughput transfers move every byte both ways through all three mechanisms",
  async () => {
    for (const direction of ["c2p", "p2c"] as const) {
      for (const way of ["shm", "socketpair", "command"] as const) {
        // transfer() throws unless exactly 2 MiB arrived.
        const mibps = await withTimeout(
          transfer(direction, way, 2),
          CHILD_WAIT_MS,
          `${way} ${direction}`,
        );
        assert.ok(mibps > 0 && Number.isFinite(mibps), `${direction} ${way}`);
      }
    }
    assert.deepEqual(zombieChildren(), []);
  },
  CHILD_PERMS,
);

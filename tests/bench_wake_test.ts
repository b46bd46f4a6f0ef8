// bench/_wake.ts: the wake path a benchmark run reports and hands its
// children.

import assert from "node:assert/strict";
import { childRun, currentWakePath, WAKE_ENV } from "../bench/_wake.ts";
import { test } from "./_util.ts";

test(
  "currentWakePath() reports the poller's path, and unknown with the reason when asking fails",
  () => {
    assert.deepEqual(
      currentWakePath(() => ({ path: "ffi", reason: "forced" })),
      { path: "ffi", reason: "forced" },
    );
    assert.deepEqual(
      currentWakePath(() => {
        throw new Error("AIO refused");
      }),
      { path: "unknown", reason: "wakePath() threw: AIO refused" },
    );
    // The real poller: one of its three paths, the forced one when forced.
    const real = currentWakePath();
    assert.ok(["uring", "aio", "ffi"].includes(real.path), real.path);
    assert.notEqual(real.reason, "");
    const forced = Deno.env.get(WAKE_ENV);
    if (forced) assert.equal(real.path, forced);
    // Children are told to take the same path, and may read only that variable.
    const run = childRun();
    assert.deepEqual(run.env, { [WAKE_ENV]: real.path });
    assert.deepEqual(run.flags, ["--allow-ffi", `--allow-env=${WAKE_ENV}`]);
  },
  { ffi: true, env: true },
);

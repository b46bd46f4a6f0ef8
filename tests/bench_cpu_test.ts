// bench/_cpu.ts: CPU time of this process, and its encoding for a parent.

import assert from "node:assert/strict";
import { cpuUs, decodeCpu, encodeCpu } from "../bench/_cpu.ts";
import { test } from "./_util.ts";

// cpuUs() opens libc on its first call: do it here, so that no test is
// charged with loading the dynamic library.
cpuUs();

test(
  "cpuUs() counts this process's CPU time, and encodeCpu() round-trips",
  () => {
    const before = cpuUs();
    let x = 0;
    // Busy for at least a few ms of CPU.
    const until = performance.now() + 20;
    while (performance.now() < until) x += Math.sqrt(x + 1);
    const used = cpuUs() - before;
    assert.ok(x > 0);
    // The loop ran on this thread for 20 ms of wall time: some of it was
    // CPU time.
    assert.ok(used > 0, `used ${used} µs`);
    assert.equal(decodeCpu(encodeCpu(1234.5)), 1234.5);
    assert.throws(() => decodeCpu(new Uint8Array(7)), /8 bytes/);
    assert.throws(() => decodeCpu(encodeCpu(-1)), /bad CPU figure/);
    assert.throws(() => decodeCpu(encodeCpu(Number.NaN)), /bad CPU figure/);
  },
  { ffi: true },
);

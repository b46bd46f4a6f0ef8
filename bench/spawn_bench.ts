/**
 * Spawn-and-wait of `/bin/true`: the module's `spawn()` (posix_spawnp, then
 * a wait on the pidfd) against `new Deno.Command("/bin/true").output()`,
 * alternating one of each so both see the same machine state. Each run's
 * figure is the median spawn-and-wait time of that run (one slow spawn on a
 * busy machine does not move it); p50 and p99 are over every spawn.
 *
 * Goal: no slower than `Deno.Command` (ratio ≥ 1).
 *
 * @module
 */

import { spawn } from "../spawn.ts";
import { runs } from "./_baselines.ts";
import { median, result } from "./_report.ts";
import type { BenchCase } from "./_types.ts";

async function ours(): Promise<number> {
  const start = performance.now();
  const child = spawn("/bin/true");
  const status = await child.status;
  const us = (performance.now() - start) * 1000;
  if (!status.success) throw new Error(`/bin/true failed: ${status.code}`);
  return us;
}

async function baseline(): Promise<number> {
  const start = performance.now();
  const status = await new Deno.Command("/bin/true").output();
  const us = (performance.now() - start) * 1000;
  if (!status.success) throw new Error(`/bin/true failed: ${status.code}`);
  return us;
}

/** The spawn area: one case, spawn-and-wait latency. */
export const cases: BenchCase[] = [{
  id: "spawn.wait",
  area: "spawn",
  async run(options) {
    const count = options.quick ? 20 : 200;
    const samples: number[] = [];
    const baseSamples: number[] = [];
    const ops: number[] = [];
    const baseOps: number[] = [];
    await runs(options, `spawn /bin/true ×${count}`, async (measured) => {
      const mine: number[] = [];
      const theirs: number[] = [];
      for (let i = 0; i < count; i++) {
        if (i % 2 === 0) {
          mine.push(await ours());
          theirs.push(await baseline());
        } else {
          theirs.push(await baseline());
          mine.push(await ours());
        }
      }
      if (!measured) return;
      samples.push(median(mine));
      baseSamples.push(median(theirs));
      ops.push(...mine);
      baseOps.push(...theirs);
    });
    return [result({
      id: "spawn.wait",
      mechanism: "spawn() + status, /bin/true",
      unit: "µs",
      higherIsBetter: false,
      samples,
      operations: ops,
      baseline: {
        mechanism: "Deno.Command().output(), /bin/true",
        samples: baseSamples,
        operations: baseOps,
      },
    })];
  },
}];

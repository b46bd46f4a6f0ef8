// bench/_load.ts: the CPU-bound process a loaded measurement runs beside.

import assert from "node:assert/strict";
import { withLoad } from "../bench/_load.ts";
import { CHILD_WAIT_MS } from "./_bench_util.ts";
import { readProcText, test, withTimeout } from "./_util.ts";

test(
  "withLoad() runs a CPU-bound process during the measurement and kills and reaps it after, also on failure",
  async () => {
    /** Clock ticks of CPU the process has used (utime + stime). */
    const cpuTicks = (pid: number) => {
      const stat = readProcText(`/proc/${pid}/stat`);
      assert.ok(stat !== undefined, "the process runs");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return Number(fields[11]) + Number(fields[12]);
    };
    let pid = 0;
    await withTimeout(
      withLoad(async (load) => {
        pid = load.pid;
        assert.match(load.command, /for\(;;\)\{\}/);
        // It spins while the measurement runs: its CPU time grows (one look
        // at its state could catch even a spinning process in a page
        // fault, "D", on a loaded machine).
        const start = cpuTicks(load.pid);
        for (let looks = 0; cpuTicks(load.pid) - start < 20; looks++) {
          assert.ok(looks < 2000, "the load process used no CPU time");
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
      }),
      CHILD_WAIT_MS,
      "withLoad() with a process that spins",
    );
    // Killed and reaped: no process (not even a zombie) is left.
    assert.equal(readProcText(`/proc/${pid}/stat`), undefined);

    await assert.rejects(
      withTimeout(
        withLoad((load) => {
          pid = load.pid;
          return Promise.reject(new Error("measurement failed"));
        }),
        CHILD_WAIT_MS,
        "withLoad() with a failing measurement",
      ),
      /measurement failed/,
    );
    assert.equal(readProcText(`/proc/${pid}/stat`), undefined);
  },
  { run: true, read: true, env: true, ffi: true },
);

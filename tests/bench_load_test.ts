// bench/_load.ts: the CPU-bound process a loaded measurement runs beside.

import assert from "node:assert/strict";
import { withLoad } from "../bench/_load.ts";
import { CHILD_WAIT_MS } from "./_bench_util.ts";
import { readProcText, test, withTimeout } from "./_util.ts";

test(
  "withLoad() runs a CPU-bound process during the measurement and kills and reaps it after, also on failure",
  async () => {
    const state = (pid: number) => {
      const stat = readProcText(`/proc/${pid}/stat`);
      return stat?.slice(stat.lastIndexOf(")") + 2)[0];
    };
    let pid = 0;
    const seen = await withTimeout(
      withLoad((load) => {
        pid = load.pid;
        assert.match(load.command, /for\(;;\)\{\}/);
        return Promise.resolve(state(load.pid));
      }),
      CHILD_WAIT_MS,
      "withLoad()",
    );
    // Running or runnable while the measurement ran: it spins.
    assert.equal(seen, "R");
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

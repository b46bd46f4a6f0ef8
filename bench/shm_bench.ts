/**
 * Shared-memory queue figures, across two Deno processes:
 *
 * - `shm.stream`: MiB/s of 64 KiB messages through `shmQueue({ bytes: 4 MiB })`
 *   from a child to the parent, against `Deno.Command` stdout of a Deno child
 *   writing 1 MiB per write (same runtime on both sides). Time runs from
 *   spawn to the last byte for both.
 * - `shm.rtt`: round trips of a 64-byte message through two queues to an
 *   echoing child, against `node:child_process` `fork()` IPC (`"json"`).
 *
 * The two sides alternate inside every run.
 *
 * @module
 */

import { shmQueue } from "../shm/mod.ts";
import { spawn } from "../spawn.ts";
import {
  alternating,
  childThroughput,
  commandStdout,
  forkPingPong,
  MIB,
  type Throughput,
} from "./_baselines.ts";
import { result } from "./_report.ts";
import type { BenchCase } from "./_types.ts";

const CHILD = new URL("./_shm_child.ts", import.meta.url).pathname;
const RUN = ["run", "--allow-ffi", CHILD];

async function queueStream(mib: number): Promise<Throughput> {
  const start = performance.now();
  const [tx, rx] = shmQueue({ bytes: 4 * MIB });
  const r = await childThroughput(start, {
    name: "the sender",
    childEnd: tx,
    spawn: () =>
      spawn(Deno.execPath(), {
        args: [...RUN, "send", String(mib)],
        fds: [tx],
      }),
    read: async () => {
      let bytes = 0;
      for (;;) {
        const message = await rx.recv();
        if (message === null) break;
        bytes += message.byteLength;
      }
      return bytes;
    },
    close: () => rx.close(),
  });
  if (r.bytes !== mib * MIB) {
    throw new Error(`shmQueue moved ${r.bytes} bytes, expected ${mib * MIB}`);
  }
  return r;
}

async function queueRoundTrips(count: number): Promise<number[]> {
  const there = shmQueue({ bytes: 64 * 1024 });
  const back = shmQueue({ bytes: 64 * 1024 });
  const child = spawn(Deno.execPath(), {
    args: [...RUN, "echo"],
    fds: [there[1], back[0]],
  });
  there[1].close();
  back[0].close();
  try {
    const payload = new TextEncoder().encode("x".repeat(64));
    const rtts = new Array<number>(count);
    for (let i = 0; i < count; i++) {
      const t0 = performance.now();
      await there[0].send(payload);
      if ((await back[1].recv()) === null) throw new Error("echo child gone");
      rtts[i] = (performance.now() - t0) * 1000;
    }
    return rtts;
  } finally {
    there[0].close();
    await back[1].recv();
    back[1].close();
    await child[Symbol.asyncDispose]();
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

/** The shm area: throughput against Deno.Command, round trips against fork(). */
export const cases: BenchCase[] = [{
  id: "shm.stream",
  area: "shm",
  async run(options) {
    const mib = options.quick ? 64 : 1024;
    const mine: number[] = [];
    const theirs: number[] = [];
    await alternating(options, `shm ${mib} MiB`, [
      async (measured) => {
        const r = await queueStream(mib);
        if (measured) mine.push(r.mibps);
      },
      async (measured) => {
        const r = await commandStdout(Deno.execPath(), [
          ...RUN,
          "stdout",
          String(mib),
        ]);
        if (r.bytes !== mib * MIB) {
          throw new Error(`Deno.Command moved ${r.bytes} bytes`);
        }
        if (measured) theirs.push(r.mibps);
      },
    ]);
    return [result({
      id: "shm.stream",
      mechanism: `shmQueue 64 KiB messages, ${mib} MiB child to parent`,
      unit: "MiB/s",
      higherIsBetter: true,
      samples: mine,
      baseline: {
        mechanism: "Deno.Command stdout BYOB, Deno child writing 1 MiB",
        samples: theirs,
      },
    })];
  },
}, {
  id: "shm.rtt",
  area: "shm",
  async run(options) {
    const count = options.quick ? 500 : 10_000;
    const mine: number[] = [];
    const theirs: number[] = [];
    const mineOps: number[] = [];
    const theirOps: number[] = [];
    await alternating(options, `shm round trips x${count}`, [
      async (measured) => {
        const rtts = await queueRoundTrips(count);
        if (measured) {
          mine.push(median(rtts));
          mineOps.push(...rtts);
        }
      },
      async (measured) => {
        const r = await forkPingPong({ serialization: "json", count });
        if (measured) {
          theirs.push(median(r.rtts));
          theirOps.push(...r.rtts);
        }
      },
    ]);
    return [result({
      id: "shm.rtt",
      mechanism: "shmQueue round trip, 64 B, two queues to an echoing child",
      unit: "µs",
      higherIsBetter: false,
      samples: mine,
      operations: mineOps,
      baseline: {
        mechanism: 'node:child_process fork() IPC, "json"',
        samples: theirs,
        operations: theirOps,
      },
    })];
  },
}];

/**
 * Socket pairs, in one run:
 *
 * - Throughput, child to parent: a `"stream"` socket pair (1 MiB buffers,
 *   like the pipe benchmark's pipe) whose child end is the stdout of
 *   `dd bs=1M` (1 MiB per write), read through
 *   `socket.readable` with a BYOB reader reusing a 1 MiB buffer; against
 *   `Deno.Command` stdout of the same `dd`, read the same way; and, when a C
 *   compiler exists, a C read()/write() loop on a socket pair (the
 *   machine's limit). They alternate inside every run.
 *   Goal: at least 3× the bytes per second of `Deno.Command` stdout.
 * - Round trip: 64 bytes over a `"seqpacket"` pair to a Deno child that
 *   echoes them, default options on both sides, against
 *   `node:child_process` `fork()` IPC (default `"json"` serialization)
 *   echoing a 64-character string, both under Deno; back to back (with the
 *   C limit alongside), paced at one per ms, and with one CPU-bound process
 *   running (bench/_roundtrip.ts). Each row also gives the CPU time per
 *   round trip of both processes. Goal: at most 0.5× the fork() round trip
 *   back to back (ratio ≥ 2), no slower paced or loaded.
 *
 * @module
 */

import { socketpair } from "../socketpair.ts";
import { spawn } from "../spawn.ts";
import {
  childThroughput,
  cPingPong,
  ddStreamCase,
  ddWriter,
  type Echo,
  forkEcho,
  MIB,
  readAllByob,
  type Throughput,
} from "./_baselines.ts";
import { CPU_QUERY, decodeCpu } from "./_cpu.ts";
import { result } from "./_report.ts";
import {
  type BaselineContender,
  type ExtraStep,
  roundTripCase,
  type RoundTripSpec,
} from "./_roundtrip.ts";
import type { BenchCase } from "./_types.ts";
import { childRun } from "./_wake.ts";

const ECHO_CHILD = new URL("./_socket_echo.ts", import.meta.url).pathname;

function streamOnce(mib: number): Promise<Throughput> {
  const start = performance.now();
  // A 1 MiB buffer, as the pipe benchmark gives its pipe: room for a whole
  // write of dd.
  const [mine, theirs] = socketpair({ type: "stream", bufferBytes: MIB });
  const dd = ddWriter(mib);
  return childThroughput(start, {
    name: "dd",
    childEnd: theirs,
    spawn: () =>
      spawn(dd.cmd, { args: dd.args, stdout: theirs, stdin: "null" }),
    read: () => readAllByob(mine.readable, MIB),
    close: () => mine.close(),
  });
}

/**
 * A Deno child echoing `size`-byte messages over a `"seqpacket"` pair, both
 * sides with default options; the start-up round trip is done.
 */
export async function seqpacketEcho(size: number): Promise<Echo> {
  const [mine, theirs] = socketpair({ type: "seqpacket" });
  let child;
  try {
    const run = childRun();
    child = spawn(Deno.execPath(), {
      args: ["run", ...run.flags, ECHO_CHILD],
      fds: [theirs],
      stdin: "null",
      env: run.env,
    });
  } catch (error) {
    mine.close();
    throw error;
  } finally {
    theirs.close();
  }
  const payload = new Uint8Array(size).fill(0x78);
  const echo: Echo = {
    async roundTrip(i) {
      await mine.send(payload);
      const answer = await mine.recv();
      if (answer === null || answer.data.length !== size) {
        throw new Error(`round trip ${i}: the echo child answered wrongly`);
      }
    },
    async childCpuUs() {
      await mine.send(CPU_QUERY);
      const answer = await mine.recv();
      if (answer === null) throw new Error("The echo child is gone");
      return decodeCpu(answer.data);
    },
    async close() {
      try {
        mine.shutdown("write");
        const status = await child.status;
        if (!status.success) {
          throw new Error(`echo child exited with ${status.code}`);
        }
      } finally {
        mine.close();
        await child[Symbol.asyncDispose]();
      }
    },
  };
  try {
    // The first round trip waits for the child to start.
    await echo.roundTrip(-1);
  } catch (error) {
    await echo.close().catch(() => {});
    throw error;
  }
  return echo;
}

const streamCase: BenchCase = ddStreamCase({
  id: "socketpair.stream",
  area: "socketpair",
  name: "socketpair()",
  once: streamOnce,
  mechanism: (size) =>
    `socketpair() stream 1 MiB buffer, readable BYOB, ${size} from dd bs=1M as stdout`,
  c: {
    kind: "socketpair",
    id: "socketpair.stream_c_limit",
    mechanism: (size) => `socketpair() stream, readable BYOB, ${size}`,
    baseline: "C read()/write() 1 MiB, socketpair",
  },
});

const SEQPACKET: Omit<RoundTripSpec, "condition" | "baselines" | "extra"> = {
  id: "socketpair.seqpacket_rtt",
  area: "socketpair",
  label: "seqpacket 64 B",
  count: { full: 20_000, quick: 2_000 },
  mine: {
    mechanism: "socketpair() seqpacket, 64 B round trip to a Deno child",
    start: () => seqpacketEcho(64),
  },
};

const FORK_JSON: BaselineContender = {
  id: "socketpair.seqpacket_rtt",
  mechanism: "node:child_process fork() IPC, 64-char string, under Deno",
  start: () => forkEcho({ serialization: "json" }),
};

/** The C limit, measured in the tight runs alongside. */
function cLimit(): ExtraStep {
  const limit: number[] = [];
  let hasC = true;
  return {
    async step(measured, count) {
      if (!hasC) return;
      const r = await cPingPong("seqpacket", count, 64);
      if (r === null) hasC = false;
      else if (measured) limit.push(r.p50);
    },
    rows(mine) {
      if (!hasC || limit.length === 0) return [];
      return [result({
        id: "socketpair.seqpacket_rtt_c_limit",
        mechanism: "socketpair() seqpacket, 64 B round trip",
        unit: "µs",
        higherIsBetter: false,
        samples: mine.samples,
        baseline: {
          mechanism: "C blocking read()/write(), seqpacket",
          samples: limit,
        },
      })];
    },
  };
}

const pingPongCases: BenchCase[] = (
  ["tight", "paced", "paced_warm", "loaded", "loaded_warm"] as const
)
  .map((condition) =>
    roundTripCase({
      ...SEQPACKET,
      condition,
      baselines: [FORK_JSON],
      extra: cLimit,
    })
  );

/**
 * The socketpair area: stream throughput, and seqpacket round trips back to
 * back, paced and loaded.
 */
export const cases: BenchCase[] = [streamCase, ...pingPongCases];

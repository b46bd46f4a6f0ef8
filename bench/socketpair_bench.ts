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
 *   echoes them (both sides spin briefly before parking), against
 *   `node:child_process` `fork()` IPC echoing a 64-character string, both
 *   under Deno. Goal: at most 0.4× the fork() round trip (ratio ≥ 2.5).
 *
 * @module
 */

import { socketpair } from "../socketpair.ts";
import { spawn } from "../spawn.ts";
import {
  commandStdout,
  cPingPong,
  cThroughput,
  ddWriter,
  forkPingPong,
  MIB,
  mibPerSecond,
  readAllByob,
  runs,
  type Throughput,
} from "./_baselines.ts";
import { percentile, result } from "./_report.ts";
import type { BenchCase, BenchResult } from "./_types.ts";

const ECHO_CHILD = new URL("./_socket_echo.ts", import.meta.url).pathname;
const SPIN_US = 100;

async function streamOnce(mib: number): Promise<Throughput> {
  const start = performance.now();
  // A 1 MiB buffer, as the pipe benchmark gives its pipe: room for a whole
  // write of dd.
  const [mine, theirs] = socketpair({ type: "stream", bufferSize: MIB });
  const dd = ddWriter(mib);
  let child;
  try {
    child = spawn(dd.cmd, { args: dd.args, stdout: theirs, stdin: "null" });
  } finally {
    // The child holds its own copy: EOF comes when it exits.
    theirs.close();
  }
  try {
    const bytes = await readAllByob(mine.readable, MIB);
    const ms = performance.now() - start;
    const status = await child.status;
    if (!status.success) throw new Error(`dd exited with ${status.code}`);
    return { bytes, ms, mibps: mibPerSecond(bytes, ms) };
  } finally {
    mine.close();
    await child[Symbol.asyncDispose]();
  }
}

function expectBytes(what: string, got: number, mib: number): void {
  if (got !== mib * MIB) {
    throw new Error(`${what} moved ${got} bytes, expected ${mib * MIB}`);
  }
}

/** Round trips of `size` bytes to an echoing Deno child, in µs each. */
async function seqpacketPingPong(
  count: number,
  size: number,
): Promise<number[]> {
  const [mine, theirs] = socketpair({ type: "seqpacket" });
  let child;
  try {
    child = spawn(Deno.execPath(), {
      args: ["run", "--allow-ffi", ECHO_CHILD],
      fds: [theirs],
      stdin: "null",
    });
  } finally {
    theirs.close();
  }
  try {
    const payload = new Uint8Array(size).fill(0x78);
    // The first round trip waits for the child to start.
    mine.sendSync(payload);
    await mine.recv();
    const rtts = new Array<number>(count);
    for (let i = 0; i < count; i++) {
      const t0 = performance.now();
      mine.sendSync(payload);
      const echo = await mine.recv({ spin: SPIN_US });
      rtts[i] = (performance.now() - t0) * 1000;
      if (echo === null || echo.data.length !== size) {
        throw new Error(`round trip ${i}: the echo child answered wrongly`);
      }
    }
    mine.shutdown("write");
    const status = await child.status;
    if (!status.success) {
      throw new Error(`echo child exited with ${status.code}`);
    }
    return rtts;
  } finally {
    mine.close();
    await child[Symbol.asyncDispose]();
  }
}

const streamCase: BenchCase = {
  id: "socketpair.stream",
  area: "socketpair",
  async run(options) {
    const mib = options.quick ? 64 : 1024;
    const size = mib >= 1024 ? `${mib / 1024} GiB` : `${mib} MiB`;
    const mine: number[] = [];
    const theirs: number[] = [];
    const limit: number[] = [];
    let hasC = true;
    await runs(options, `socketpair ${size}`, async (measured, run) => {
      const steps = [
        async () => {
          const r = await streamOnce(mib);
          expectBytes("socketpair()", r.bytes, mib);
          if (measured) mine.push(r.mibps);
        },
        async () => {
          const dd = ddWriter(mib);
          const r = await commandStdout(dd.cmd, dd.args, MIB);
          expectBytes("Deno.Command stdout", r.bytes, mib);
          if (measured) theirs.push(r.mibps);
        },
        async () => {
          if (!hasC) return;
          const r = await cThroughput("socketpair", mib * MIB, MIB);
          if (r === null) hasC = false;
          else if (measured) limit.push(r.mibps);
        },
      ];
      if (run % 2 === 1) steps.reverse();
      for (const step of steps) await step();
    });
    const out: BenchResult[] = [result({
      id: "socketpair.stream",
      mechanism:
        `socketpair() stream 1 MiB buffer, readable BYOB, ${size} from dd bs=1M as stdout`,
      unit: "MiB/s",
      higherIsBetter: true,
      samples: mine,
      baseline: {
        mechanism: "Deno.Command stdout BYOB, same dd",
        samples: theirs,
      },
    })];
    if (hasC && limit.length > 0) {
      out.push(result({
        id: "socketpair.stream_c_limit",
        mechanism: `socketpair() stream, readable BYOB, ${size}`,
        unit: "MiB/s",
        higherIsBetter: true,
        samples: mine,
        baseline: {
          mechanism: "C read()/write() 1 MiB, socketpair",
          samples: limit,
        },
      }));
    }
    return out;
  },
};

const pingPongCase: BenchCase = {
  id: "socketpair.seqpacket_rtt",
  area: "socketpair",
  async run(options) {
    const count = options.quick ? 2_000 : 20_000;
    const mine: number[] = [];
    const theirs: number[] = [];
    const limit: number[] = [];
    const mineOps: number[] = [];
    const theirOps: number[] = [];
    let hasC = true;
    await runs(options, `seqpacket 64 B ×${count}`, async (measured, run) => {
      const steps = [
        async () => {
          const rtts = await seqpacketPingPong(count, 64);
          if (!measured) return;
          mine.push(percentile(rtts, 50));
          mineOps.push(...rtts);
        },
        async () => {
          const r = await forkPingPong({ serialization: "json", count });
          if (!measured) return;
          theirs.push(percentile(r.rtts, 50));
          theirOps.push(...r.rtts);
        },
        async () => {
          if (!hasC) return;
          const r = await cPingPong("seqpacket", count, 64);
          if (r === null) hasC = false;
          else if (measured) limit.push(r.p50);
        },
      ];
      if (run % 2 === 1) steps.reverse();
      for (const step of steps) await step();
    });
    const out: BenchResult[] = [result({
      id: "socketpair.seqpacket_rtt",
      mechanism: "socketpair() seqpacket, 64 B round trip to a Deno child",
      unit: "µs",
      higherIsBetter: false,
      samples: mine,
      operations: mineOps,
      baseline: {
        mechanism: "node:child_process fork() IPC, 64-char string, under Deno",
        samples: theirs,
        operations: theirOps,
      },
    })];
    if (hasC && limit.length > 0) {
      out.push(result({
        id: "socketpair.seqpacket_rtt_c_limit",
        mechanism: "socketpair() seqpacket, 64 B round trip",
        unit: "µs",
        higherIsBetter: false,
        samples: mine,
        baseline: {
          mechanism: "C blocking read()/write(), seqpacket",
          samples: limit,
        },
      }));
    }
    return out;
  },
};

/** The socketpair area: stream throughput and seqpacket round trips. */
export const cases: BenchCase[] = [streamCase, pingPongCase];

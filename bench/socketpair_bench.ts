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
  alternating,
  childThroughput,
  cPingPong,
  ddStreamCase,
  ddWriter,
  forkPingPong,
  MIB,
  readAllByob,
  RoundTrips,
  type Throughput,
} from "./_baselines.ts";
import { result } from "./_report.ts";
import type { BenchCase, BenchResult } from "./_types.ts";

const ECHO_CHILD = new URL("./_socket_echo.ts", import.meta.url).pathname;
const SPIN_US = 100;

function streamOnce(mib: number): Promise<Throughput> {
  const start = performance.now();
  // A 1 MiB buffer, as the pipe benchmark gives its pipe: room for a whole
  // write of dd.
  const [mine, theirs] = socketpair({ type: "stream", bufferSize: MIB });
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

const pingPongCase: BenchCase = {
  id: "socketpair.seqpacket_rtt",
  area: "socketpair",
  async run(options) {
    const count = options.quick ? 2_000 : 20_000;
    const mine = new RoundTrips();
    const theirs = new RoundTrips();
    const limit: number[] = [];
    let hasC = true;
    await alternating(options, `seqpacket 64 B ×${count}`, [
      async (measured) => {
        const rtts = await seqpacketPingPong(count, 64);
        if (measured) mine.add(rtts);
      },
      async (measured) => {
        const r = await forkPingPong({ serialization: "json", count });
        if (measured) theirs.add(r.rtts);
      },
      async (measured) => {
        if (!hasC) return;
        const r = await cPingPong("seqpacket", count, 64);
        if (r === null) hasC = false;
        else if (measured) limit.push(r.p50);
      },
    ]);
    const out: BenchResult[] = [result({
      id: "socketpair.seqpacket_rtt",
      mechanism: "socketpair() seqpacket, 64 B round trip to a Deno child",
      unit: "µs",
      higherIsBetter: false,
      samples: mine.samples,
      operations: mine.operations,
      baseline: {
        mechanism: "node:child_process fork() IPC, 64-char string, under Deno",
        samples: theirs.samples,
        operations: theirs.operations,
      },
    })];
    if (hasC && limit.length > 0) {
      out.push(result({
        id: "socketpair.seqpacket_rtt_c_limit",
        mechanism: "socketpair() seqpacket, 64 B round trip",
        unit: "µs",
        higherIsBetter: false,
        samples: mine.samples,
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

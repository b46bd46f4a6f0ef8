/**
 * Shared-memory queue figures across two Deno processes, default options
 * everywhere (`shmQueue()` as it comes):
 *
 * - Throughput of 64 KiB messages, 1 GiB (64 MiB with --quick), in both
 *   directions: `shmQueue()` with the receiver taking each message into one
 *   buffer (`recv({ into })`, as the baselines read into one buffer) and,
 *   as an extra row, with a new buffer per message (`recv()`), against a
 *   `"stream"` `socketpair()` and
 *   against `Deno.Command` stdout (child to parent) or stdin (parent to
 *   child), each moving 64 KiB per write from or to a Deno child (same
 *   runtime on both sides). The clock starts once the child is ready (its
 *   start-up is left out) and stops at the last byte (child to parent) or
 *   at the child's count of bytes received (parent to child). The three
 *   alternate inside every run. Goal: at least 2× the socket pair and 5×
 *   `Deno.Command`, both ways.
 * - Round trips of a 64-byte message through two queues to an echoing
 *   child, against `node:child_process` `fork()` IPC (`"json"`, its
 *   default); back to back, paced at one per ms, and with one CPU-bound
 *   process running (bench/_roundtrip.ts), with the CPU time per round trip
 *   of both processes. Goal: at most 0.1× fork() back to back.
 *
 * @module
 */

import { shmQueue } from "../shm/mod.ts";
import { socketpair } from "../socketpair.ts";
import { spawn } from "../spawn.ts";
import {
  alternating,
  type Echo,
  expectBytes,
  forkEcho,
  mibPerSecond,
  readAllByob,
} from "./_baselines.ts";
import { CPU_QUERY, decodeCpu } from "./_cpu.ts";
import { result } from "./_report.ts";
import { type Condition, roundTripCase } from "./_roundtrip.ts";
import type { BenchCase } from "./_types.ts";
import { childRun } from "./_wake.ts";

const CHILD = new URL("./_shm_child.ts", import.meta.url).pathname;

/** `deno run` of the child in `mode`, with its flags and environment. */
function childArgs(mode: string, ...rest: string[]) {
  const run = childRun();
  return { args: ["run", ...run.flags, CHILD, mode, ...rest], env: run.env };
}
/** The size of every message and write. */
const CHUNK = 64 * 1024;

/** A child's stdio as both spawners give it. */
interface Stdio {
  stdin: WritableStream<Uint8Array>;
  stdout: ReadableStream<Uint8Array>;
}

/** Reads exactly one byte, leaving the stream unlocked. */
async function readByte(stream: ReadableStream<Uint8Array>): Promise<number> {
  const reader = stream.getReader({ mode: "byob" });
  try {
    const { value, done } = await reader.read(new Uint8Array(1));
    if (done || value.byteLength !== 1) {
      throw new Error("The child ended before it was ready");
    }
    return value[0];
  } finally {
    reader.releaseLock();
  }
}

/** Reads up to the first newline; the text before it. */
async function readLine(stream: ReadableStream<Uint8Array>): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  const reader = stream.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`The child ended without a line: ${text}`);
      text += decoder.decode(value, { stream: true });
      const end = text.indexOf("\n");
      if (end !== -1) return text.slice(0, end);
    }
  } finally {
    reader.releaseLock();
  }
}

/** Waits for the child's ready byte `r`. */
async function ready(stdout: ReadableStream<Uint8Array>): Promise<void> {
  const byte = await readByte(stdout);
  if (byte !== 0x72) throw new Error(`The child said ${byte}, not ready`);
}

/** Writes the go byte. */
async function go(stdin: WritableStream<Uint8Array>): Promise<void> {
  const writer = stdin.getWriter();
  try {
    await writer.write(new Uint8Array([0x67]));
  } finally {
    writer.releaseLock();
  }
}

/** Writes `count` chunks and closes the stream. */
async function writeAll(
  stream: WritableStream<Uint8Array>,
  count: number,
): Promise<void> {
  const chunk = new Uint8Array(CHUNK);
  const writer = stream.getWriter();
  for (let i = 0; i < count; i++) await writer.write(chunk);
  await writer.close();
}

/** A running child of one transfer, and how to end it. */
interface Transfer {
  stdio: Stdio;
  /** Sends everything (parent to child) or reads everything (child to parent). */
  move(): Promise<number>;
  /** Closes the parent's end(s), waits for the child, checks it succeeded. */
  end(): Promise<void>;
}

/** Starts a child with our spawn(), the endpoint `theirs` as fd 3. */
function ourChild(mode: string, mib: number | undefined, theirs: {
  rawFd: number;
  close(): void;
}) {
  try {
    return spawn(Deno.execPath(), {
      ...childArgs(mode, ...(mib === undefined ? [] : [String(mib)])),
      fds: [theirs],
      stdin: "piped",
      stdout: "piped",
    });
  } finally {
    theirs.close();
  }
}

async function endOurs(
  child: ReturnType<typeof spawn>,
  close: () => void,
): Promise<void> {
  try {
    close();
    const status = await child.status;
    if (!status.success) throw new Error(`child exited with ${status.code}`);
  } finally {
    await child[Symbol.asyncDispose]();
  }
}

/**
 * The ways of one direction: the queue receiving into one reused buffer
 * (`recv({ into })`, as the stream baselines read with BYOB into one
 * buffer), the queue with a new buffer per message (`recv()`), and the two
 * baselines.
 */
type Way = "shm" | "shm-new" | "socketpair" | "command";

function startTransfer(
  direction: "c2p" | "p2c",
  way: Way,
  mib: number,
): Transfer {
  const count = mib * 16;
  if (way === "shm" || way === "shm-new") {
    const [tx, rx] = shmQueue();
    if (direction === "c2p") {
      const child = ourChild("send", mib, tx);
      const options = way === "shm" ? { into: new Uint8Array(CHUNK) } : {};
      return {
        stdio: child,
        async move() {
          let bytes = 0;
          for (;;) {
            const message = await rx.recv(options);
            if (message === null) return bytes;
            bytes += message.byteLength;
          }
        },
        end: () => endOurs(child, () => rx.close()),
      };
    }
    const child = ourChild(way === "shm" ? "recv-into" : "recv", undefined, rx);
    return {
      stdio: child,
      async move() {
        const chunk = new Uint8Array(CHUNK);
        for (let i = 0; i < count; i++) await tx.send(chunk);
        tx.close();
        return count * CHUNK;
      },
      end: () => endOurs(child, () => tx.close()),
    };
  }
  if (way === "socketpair") {
    const [mine, theirs] = socketpair({ type: "stream" });
    if (direction === "c2p") {
      const child = ourChild("write-socket", mib, theirs);
      return {
        stdio: child,
        move: () => readAllByob(mine.readable),
        end: () => endOurs(child, () => mine.close()),
      };
    }
    const child = ourChild("read-socket", undefined, theirs);
    return {
      stdio: child,
      async move() {
        await writeAll(mine.writable, count);
        return count * CHUNK;
      },
      end: () => endOurs(child, () => mine.close()),
    };
  }
  const child = new Deno.Command(Deno.execPath(), {
    ...childArgs(
      direction === "c2p" ? "write-stdout" : "read-stdin",
      String(mib),
    ),
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const end = async () => {
    await child.stdin.close().catch(() => {});
    await child.stdout.cancel().catch(() => {});
    const status = await child.status;
    if (!status.success) throw new Error(`child exited with ${status.code}`);
  };
  if (direction === "c2p") {
    return {
      stdio: child,
      move: () => readAllByob(child.stdout),
      end,
    };
  }
  return {
    stdio: child,
    async move() {
      await writeAll(child.stdin, count);
      return count * CHUNK;
    },
    end,
  };
}

/**
 * One transfer of `mib` MiB: waits until the child is ready, then times from
 * the go to the last byte (child to parent) or to the child's count (parent
 * to child).
 */
export async function transfer(
  direction: "c2p" | "p2c",
  way: Way,
  mib: number,
): Promise<number> {
  const t = startTransfer(direction, way, mib);
  let mibps: number;
  try {
    await ready(t.stdio.stdout);
    let bytes: number;
    const start = performance.now();
    if (direction === "c2p") {
      await go(t.stdio.stdin);
      bytes = await t.move();
    } else {
      await t.move();
      bytes = Number(await readLine(t.stdio.stdout));
    }
    const ms = performance.now() - start;
    expectBytes(`${way} ${direction}`, bytes, mib);
    mibps = mibPerSecond(bytes, ms);
  } catch (error) {
    await t.end().catch(() => {});
    throw error;
  }
  await t.end();
  return mibps;
}

/** The baselines' names, by direction. */
const BASELINES: Record<
  "socketpair" | "command",
  { c2p: string; p2c: string }
> = {
  socketpair: {
    c2p: "socketpair() stream, Deno child writing 64 KiB",
    p2c: "socketpair() stream, writing 64 KiB to a Deno child",
  },
  command: {
    c2p: "Deno.Command stdout BYOB, Deno child writing 64 KiB",
    p2c: "Deno.Command stdin, writing 64 KiB to a Deno child",
  },
};

function streamCase(direction: "c2p" | "p2c"): BenchCase {
  const label = direction === "c2p" ? "child to parent" : "parent to child";
  return {
    id: `shm.stream_${direction}`,
    area: "shm",
    async run(options) {
      const mib = options.quick ? 64 : 1024;
      const size = mib >= 1024 ? `${mib / 1024} GiB` : `${mib} MiB`;
      const samples: Record<Way, number[]> = {
        shm: [],
        "shm-new": [],
        socketpair: [],
        command: [],
      };
      await alternating(
        options,
        `shm ${size} ${label}`,
        (["shm", "shm-new", "socketpair", "command"] as const).map(
          (way) => async (measured: boolean) => {
            const mibps = await transfer(direction, way, mib);
            if (measured) samples[way].push(mibps);
          },
        ),
      );
      const into = direction === "c2p" ? "parent" : "child";
      return [
        ...(["socketpair", "command"] as const).map((way) =>
          result({
            id: `shm.stream_${direction}_${way}`,
            mechanism:
              `shmQueue 64 KiB messages, ${size} ${label}, the ${into} receiving into one buffer`,
            unit: "MiB/s",
            higherIsBetter: true,
            samples: samples.shm,
            baseline: {
              mechanism: BASELINES[way][direction],
              samples: samples[way],
            },
          })
        ),
        result({
          id: `shm.stream_${direction}_new_buffer`,
          mechanism:
            `shmQueue 64 KiB messages, ${size} ${label}, recv() with a new buffer per message`,
          unit: "MiB/s",
          higherIsBetter: true,
          samples: samples["shm-new"],
          baseline: {
            mechanism: BASELINES.socketpair[direction],
            samples: samples.socketpair,
          },
        }),
      ];
    },
  };
}

/** A Deno child echoing 64-byte messages through two default queues. */
export async function queueEcho(): Promise<Echo> {
  const there = shmQueue();
  const back = shmQueue();
  let child;
  try {
    child = spawn(Deno.execPath(), {
      ...childArgs("echo"),
      fds: [there[1], back[0]],
      stdin: "null",
    });
  } catch (error) {
    there[0].close();
    back[1].close();
    throw error;
  } finally {
    there[1].close();
    back[0].close();
  }
  const payload = new Uint8Array(64).fill(0x78);
  const echo: Echo = {
    async roundTrip(i) {
      await there[0].send(payload);
      const answer = await back[1].recv();
      if (answer === null || answer.byteLength !== 64) {
        throw new Error(`round trip ${i}: the echo child answered wrongly`);
      }
    },
    async childCpuUs() {
      await there[0].send(CPU_QUERY);
      const answer = await back[1].recv();
      if (answer === null) throw new Error("The echo child is gone");
      return decodeCpu(answer);
    },
    async close() {
      try {
        there[0].close();
        // The child closes its sender once it sees the end.
        while ((await back[1].recv()) !== null) {
          // Drain.
        }
        const status = await child.status;
        if (!status.success) {
          throw new Error(`echo child exited with ${status.code}`);
        }
      } finally {
        back[1].close();
        await child[Symbol.asyncDispose]();
      }
    },
  };
  try {
    await echo.roundTrip(-1);
  } catch (error) {
    await echo.close().catch(() => {});
    throw error;
  }
  return echo;
}

const roundTripCases: BenchCase[] = (
  ["tight", "paced", "paced_warm", "loaded", "loaded_warm"] as Condition[]
).map((condition) =>
  roundTripCase({
    id: "shm.rtt",
    area: "shm",
    label: "shm 64 B",
    condition,
    count: { full: 10_000, quick: 1_000 },
    mine: {
      mechanism: "shmQueue round trip, 64 B, two queues to an echoing child",
      start: queueEcho,
    },
    baselines: [{
      id: "shm.rtt",
      mechanism: 'node:child_process fork() IPC, "json"',
      start: () => forkEcho({ serialization: "json" }),
    }],
  })
);

/** The shm area: throughput both ways, and round trips under three conditions. */
export const cases: BenchCase[] = [
  streamCase("c2p"),
  streamCase("p2c"),
  ...roundTripCases,
];

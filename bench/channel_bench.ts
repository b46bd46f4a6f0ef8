/**
 * Typed channels, with default options on both sides, in one run:
 *
 * - Round trip of a small object (a number, a string, a Date, an array):
 *   a `channel()` pair each way to a Deno child that echoes with
 *   `for await` (channel ends handed over by `spawn({ fds })`), against
 *   `node:child_process` `fork()` IPC echoing the same object, with `"json"`
 *   and `"advanced"` serialization; back to back, and against `"advanced"`
 *   paced at one per ms and with one CPU-bound process running
 *   (bench/_roundtrip.ts). Each row also gives the CPU time per round trip
 *   of both processes. Goal: at most 0.5× fork() `"advanced"` back to back.
 * - Messages per second, one way: 50,000 strings of 64 characters (5,000
 *   with --quick) sent with `await send()` into a child that counts them
 *   with `for await` and answers once it has them all, against the same
 *   through `fork()` IPC, `"advanced"` and `"json"`. Goal: at least 3×
 *   fork() `"advanced"`.
 *
 * @module
 */

import { channel, type Receiver, type Sender } from "../channel.ts";
import { spawn } from "../spawn.ts";
import {
  alternating,
  type Echo,
  forkCount,
  forkEcho,
  type OneWay,
  type Serialization,
} from "./_baselines.ts";
import { CPU_QUESTION, cpuUs } from "./_cpu.ts";
import { result } from "./_report.ts";
import { type Condition, roundTripCase } from "./_roundtrip.ts";
import type { BenchCase, CpuPerMessage } from "./_types.ts";
import { childRun } from "./_wake.ts";

const CHILD = new URL("./_channel_echo.ts", import.meta.url).pathname;
/** The one-way case's message: a string of 64 characters. */
const STRING_64 = "x".repeat(64);

function message(i: number) {
  return {
    id: i,
    name: "sensor-7",
    when: new Date(1_700_000_000_000 + i),
    values: [1.5, 2.25, 3],
  };
}

/** A child on two default channels; returns the parent's ends. */
function channelChild(args: string[]) {
  const [toChild, childRx] = channel<unknown>();
  const [childTx, fromChild] = channel<unknown>();
  let child;
  try {
    const run = childRun();
    child = spawn(Deno.execPath(), {
      args: ["run", ...run.flags, CHILD, ...args],
      fds: [childRx, childTx],
      stdin: "null",
      env: run.env,
    });
  } catch (error) {
    toChild.close();
    fromChild.close();
    throw error;
  } finally {
    childRx.close();
    childTx.close();
  }
  return { child, toChild, fromChild };
}

/** Closes the parent's sender, waits for the child and checks it succeeded. */
async function finish(
  child: ReturnType<typeof spawn>,
  toChild: Sender<unknown>,
  fromChild: Receiver<unknown>,
): Promise<void> {
  toChild.close();
  try {
    const status = await child.status;
    if (!status.success) {
      throw new Error(`channel child exited with ${status.code}`);
    }
  } finally {
    fromChild.close();
    await child[Symbol.asyncDispose]();
  }
}

/** Asks a channel child for its CPU time. */
async function childCpu(
  toChild: Sender<unknown>,
  fromChild: Receiver<unknown>,
): Promise<number> {
  await toChild.send(CPU_QUESTION);
  const us = await fromChild.recv();
  if (typeof us !== "number" || !Number.isFinite(us) || us < 0) {
    throw new Error("The channel child answered the CPU query wrongly");
  }
  return us;
}

/** A Deno child echoing small objects; the start-up round trip is done. */
export async function channelEcho(): Promise<Echo> {
  const { child, toChild, fromChild } = channelChild(["echo"]);
  const echo: Echo = {
    async roundTrip(i) {
      await toChild.send(message(i));
      const answer = await fromChild.recv() as { id?: unknown } | null;
      if (answer?.id !== i) throw new Error(`round trip ${i}: wrong echo`);
    },
    childCpuUs: () => childCpu(toChild, fromChild),
    close: () => finish(child, toChild, fromChild),
  };
  try {
    await echo.roundTrip(-1);
  } catch (error) {
    await echo.close().catch(() => {});
    throw error;
  }
  return echo;
}

/** `count` strings one way into a counting child. */
export async function channelCount(count: number): Promise<OneWay> {
  const { child, toChild, fromChild } = channelChild([
    "count",
    String(count),
  ]);
  let cpu: CpuPerMessage;
  let seconds: number;
  try {
    // Also waits for the child to start.
    const child0 = await childCpu(toChild, fromChild);
    const parent0 = cpuUs();
    const start = performance.now();
    for (let i = 0; i < count; i++) await toChild.send(STRING_64);
    const done = await fromChild.recv() as
      | { seen?: unknown; cpuUs?: unknown }
      | null;
    seconds = (performance.now() - start) / 1000;
    const parent1 = cpuUs();
    if (done?.seen !== count || typeof done.cpuUs !== "number") {
      throw new Error(
        `The channel child counted ${done?.seen} messages, expected ${count}`,
      );
    }
    cpu = {
      parent: (parent1 - parent0) / count,
      child: (done.cpuUs - child0) / count,
    };
  } catch (error) {
    await finish(child, toChild, fromChild).catch(() => {});
    throw error;
  }
  await finish(child, toChild, fromChild);
  return { msgPerSec: count / seconds, cpu };
}

const MECHANISM =
  "channel() round trip of a small object with a Date, Deno child echoes";
const forkBaseline = (serialization: Serialization, id: string) => ({
  id,
  mechanism: `node:child_process fork() IPC, serialization "${serialization}"`,
  start: () => forkEcho({ serialization, payload: message(0) }),
});

const roundTripCases: BenchCase[] = (
  ["tight", "paced", "paced_warm", "loaded", "loaded_warm"] as Condition[]
).map((condition) =>
  roundTripCase({
    id: "channel.rtt",
    area: "channel",
    label: "channel small object",
    condition,
    count: { full: 20_000, quick: 2_000 },
    mine: { mechanism: MECHANISM, start: channelEcho },
    // Back to back against both serializations; paced and loaded against
    // "advanced", the faster one.
    baselines: condition === "tight"
      ? [
        forkBaseline("json", "channel.rtt_json"),
        forkBaseline("advanced", "channel.rtt_advanced"),
      ]
      : [forkBaseline("advanced", "channel.rtt_advanced")],
  })
);

const oneWayCase: BenchCase = {
  id: "channel.one_way",
  area: "channel",
  async run(options) {
    const count = options.quick ? 5_000 : 50_000;
    const mine = { rates: [] as number[], cpu: [] as CpuPerMessage[] };
    const forks = new Map<Serialization, typeof mine>([
      ["advanced", { rates: [], cpu: [] }],
      ["json", { rates: [], cpu: [] }],
    ]);
    const record = (into: typeof mine, r: OneWay, measured: boolean) => {
      if (!measured) return;
      into.rates.push(r.msgPerSec);
      into.cpu.push(r.cpu);
    };
    await alternating(options, `channel one way ×${count}`, [
      async (measured) => record(mine, await channelCount(count), measured),
      ...[...forks].map(([serialization, into]) => async (measured: boolean) =>
        record(into, await forkCount(serialization, count), measured)
      ),
    ]);
    return [...forks].map(([serialization, theirs]) =>
      result({
        id: `channel.one_way_${serialization}`,
        mechanism:
          "channel() one way, 64-char strings into a child counting with for await, messages/s",
        unit: "msg/s",
        higherIsBetter: true,
        samples: mine.rates,
        cpu: mine.cpu,
        baseline: {
          mechanism:
            `node:child_process fork() IPC "${serialization}", one way, messages/s`,
          samples: theirs.rates,
          cpu: theirs.cpu,
        },
      })
    );
  },
};

/** The channel benchmarks. */
export const cases: BenchCase[] = [...roundTripCases, oneWayCase];

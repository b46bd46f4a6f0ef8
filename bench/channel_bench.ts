/**
 * Typed channels, in one run, with a small object (a number, a string, a
 * Date, an array) as the message:
 *
 * - Round trip: a `channel()` pair each way to a Deno child that echoes
 *   (channel ends handed over by `spawn({ fds })`, both sides spin briefly
 *   before parking), against `node:child_process` `fork()` IPC echoing the
 *   same object, with `"json"` and with `"advanced"` serialization.
 * - Messages per second: the same echo, pipelined (the parent sends while it
 *   receives; capacity 256), against the same for `fork()` `"advanced"`.
 *
 * @module
 */

import { fork } from "node:child_process";
import { channel, type Receiver, type Sender } from "../channel.ts";
import { spawn } from "../spawn.ts";
import { alternating, forkPingPong, RoundTrips } from "./_baselines.ts";
import { result } from "./_report.ts";
import type { BenchCase, BenchResult } from "./_types.ts";

const ECHO_CHILD = new URL("./_channel_echo.ts", import.meta.url).pathname;
const FORK_CHILD = new URL("./_fork_echo.ts", import.meta.url).pathname;
const SPIN_US = 100;
/** Capacity of the pipelined case's channels. */
const CAPACITY = 256;

function message(i: number) {
  return {
    id: i,
    name: "sensor-7",
    when: new Date(1_700_000_000_000 + i),
    values: [1.5, 2.25, 3],
  };
}

/** A child that echoes over two channels; returns the parent's ends. */
function echoChild(capacity: number) {
  const [toChild, childRx] = channel<unknown>({ capacity });
  const [childTx, fromChild] = channel<unknown>({ capacity });
  const child = spawn(Deno.execPath(), {
    args: ["run", "--allow-ffi", ECHO_CHILD, "echo"],
    fds: [childRx, childTx],
    stdin: "null",
  });
  childRx.close();
  childTx.close();
  return { child, toChild, fromChild };
}

async function finish(
  child: ReturnType<typeof spawn>,
  toChild: Sender<unknown>,
  fromChild: Receiver<unknown>,
): Promise<void> {
  toChild.close();
  try {
    const status = await child.status;
    if (!status.success) {
      throw new Error(`channel echo child exited with ${status.code}`);
    }
  } finally {
    fromChild.close();
    await child[Symbol.asyncDispose]();
  }
}

/** Round trips of a small object, in µs each. */
async function channelPingPong(count: number): Promise<number[]> {
  const { child, toChild, fromChild } = echoChild(64);
  try {
    await toChild.send(message(-1));
    await fromChild.recv();
    const rtts = new Array<number>(count);
    for (let i = 0; i < count; i++) {
      const t0 = performance.now();
      await toChild.send(message(i));
      const echo = await fromChild.recv({ spin: SPIN_US }) as { id: number };
      rtts[i] = (performance.now() - t0) * 1000;
      if (echo.id !== i) throw new Error(`round trip ${i}: wrong echo`);
    }
    return rtts;
  } finally {
    await finish(child, toChild, fromChild);
  }
}

/** Pipelined echo of `count` small objects: messages per second. */
async function channelRate(count: number): Promise<number> {
  const { child, toChild, fromChild } = echoChild(CAPACITY);
  try {
    await toChild.send(message(-1));
    await fromChild.recv();
    const start = performance.now();
    const sending = (async () => {
      for (let i = 0; i < count; i++) await toChild.send(message(i));
    })();
    // No spin here: a sync spin would hold up the sending loop.
    for (let i = 0; i < count; i++) {
      const echo = await fromChild.recv() as { id: number };
      if (echo.id !== i) throw new Error(`message ${i}: wrong echo`);
    }
    await sending;
    return count / ((performance.now() - start) / 1000);
  } finally {
    await finish(child, toChild, fromChild);
  }
}

/** The same pipelined echo through `fork()` IPC. */
async function forkRate(count: number): Promise<number> {
  const child = fork(FORK_CHILD, [], {
    serialization: "advanced",
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", resolve));
  try {
    await new Promise<void>((resolve) =>
      child.once("message", () => resolve())
    );
    const start = performance.now();
    const done = new Promise<void>((resolve) => {
      let seen = 0;
      child.on("message", () => {
        if (++seen === count) resolve();
      });
    });
    for (let i = 0; i < count; i++) child.send(message(i));
    await done;
    return count / ((performance.now() - start) / 1000);
  } finally {
    if (child.connected) child.disconnect();
    await exited;
  }
}

const pingPongCase: BenchCase = {
  id: "channel.rtt",
  area: "channel",
  async run(options) {
    const count = options.quick ? 2_000 : 20_000;
    const mine = new RoundTrips();
    const json = new RoundTrips();
    const advanced = new RoundTrips();
    const payload = message(0);
    const forkStep =
      (serialization: "json" | "advanced", into: RoundTrips) =>
      async (measured: boolean) => {
        const r = await forkPingPong({ serialization, count, payload });
        if (measured) into.add(r.rtts);
      };
    await alternating(options, `channel small object ×${count}`, [
      async (measured) => {
        const rtts = await channelPingPong(count);
        if (measured) mine.add(rtts);
      },
      forkStep("json", json),
      forkStep("advanced", advanced),
    ]);
    const mechanism =
      "channel() round trip of a small object with a Date, Deno child echoes";
    return [
      result({
        id: "channel.rtt_json",
        mechanism,
        unit: "µs",
        higherIsBetter: false,
        samples: mine.samples,
        operations: mine.operations,
        baseline: {
          mechanism: 'node:child_process fork() IPC, serialization "json"',
          samples: json.samples,
          operations: json.operations,
        },
      }),
      result({
        id: "channel.rtt_advanced",
        mechanism,
        unit: "µs",
        higherIsBetter: false,
        samples: mine.samples,
        operations: mine.operations,
        baseline: {
          mechanism: 'node:child_process fork() IPC, serialization "advanced"',
          samples: advanced.samples,
          operations: advanced.operations,
        },
      }),
    ];
  },
};

const rateCase: BenchCase = {
  id: "channel.rate",
  area: "channel",
  async run(options) {
    const count = options.quick ? 5_000 : 100_000;
    const mine: number[] = [];
    const theirs: number[] = [];
    await alternating(options, `channel pipelined ×${count}`, [
      async (measured) => {
        const rate = await channelRate(count);
        if (measured) mine.push(rate);
      },
      async (measured) => {
        const rate = await forkRate(count);
        if (measured) theirs.push(rate);
      },
    ]);
    const out: BenchResult[] = [result({
      id: "channel.rate",
      mechanism:
        "channel() pipelined echo of small objects (capacity 256), messages/s",
      unit: "msg/s",
      higherIsBetter: true,
      samples: mine,
      baseline: {
        mechanism: 'node:child_process fork() IPC "advanced", pipelined echo',
        samples: theirs,
      },
    })];
    return out;
  },
};

/** The channel benchmarks. */
export const cases: BenchCase[] = [pingPongCase, rateCase];

/**
 * Channels through NATS beside a local `channel()`, with the small object
 * of the channel benchmark (a number, a string, a Date, an array) as the
 * message, against a `nats-server` started on 127.0.0.1 for the run:
 *
 * - Round trip: the parent sends on one subject, a Deno child echoes on
 *   another (core NATS); baseline: the same echo over a local `channel()`
 *   pair handed to the child by `spawn({ fds })`.
 * - Messages per second, pipelined echo (the parent sends while it
 *   receives; capacity 256), core NATS against the local channel.
 * - Messages per second into JetStream: the parent sends, a child consumer
 *   (durable, at least once) counts and reports; baseline: the same
 *   one-way stream over a local channel.
 *
 * Each mechanism runs in its own child process per step, in alternating
 * order. Without `nats-server` installed this area does not load (the
 * runner lists it as skipped). Needs `--allow-net=127.0.0.1`.
 *
 * @module
 */

import { channel, type Receiver, type Sender, spawn } from "../mod.ts";
import {
  type NatsReceiver,
  natsReceiver,
  type NatsSender,
  natsSender,
} from "../nats/mod.ts";
import {
  findNatsServer,
  type NatsServer,
  startNatsServer,
} from "../nats/_server.ts";
import { percentile, result } from "./_report.ts";
import type { BenchCase, BenchOptions } from "./_types.ts";

if (await findNatsServer() === null) {
  throw new Error("nats-server is not installed (apt-get install nats-server)");
}

const ECHO = new URL("./_nats_echo.ts", import.meta.url).pathname;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;
const CAPACITY = 256;

function message(i: number) {
  return {
    id: i,
    name: "sensor-7",
    when: new Date(1_700_000_000_000 + i),
    values: [1.5, 2.25, 3],
  };
}

/** Warm-up, then `runs` measured runs, steps in alternating order. */
async function alternating(
  options: BenchOptions,
  label: string,
  steps: ((measured: boolean) => Promise<void>)[],
): Promise<void> {
  for (let run = 0; run <= options.runs; run++) {
    options.progress(
      run === 0 ? `${label}: warm-up` : `${label}: run ${run}/${options.runs}`,
    );
    const order = run % 2 === 1 ? [...steps].reverse() : steps;
    for (const step of order) await step(run > 0);
  }
}

interface Ends {
  tx: { send(value: unknown): Promise<void> };
  rx: { recv(): Promise<unknown> };
  finish(): Promise<void>;
}

/** A NATS echo (or counting) child and the parent's ends. */
async function natsEnds(
  server: NatsServer,
  jetstream: boolean,
  countEvery?: number,
): Promise<Ends> {
  const tag = crypto.randomUUID().slice(0, 8);
  const inSubject = `bench.${tag}.in`;
  const outSubject = `bench.${tag}.out`;
  const rx: NatsReceiver<unknown> = await natsReceiver(outSubject, {
    servers: server.url,
  });
  const args = [
    "run",
    "--config",
    CONFIG,
    "--allow-net=127.0.0.1",
    ECHO,
    "nats",
    server.url,
    inSubject,
    outSubject,
    jetstream ? "1" : "0",
  ];
  if (countEvery !== undefined) args.push("count", String(countEvery));
  const child = spawn(Deno.execPath(), {
    args,
    stdin: "null",
    stdout: "piped",
  });
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("ready\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the NATS echo child did not start: ${text}`);
    text += value;
  }
  const draining = (async () => {
    while (!(await reader.read()).done) { /* discard */ }
  })();
  const tx: NatsSender<unknown> = await natsSender(inSubject, {
    servers: server.url,
    jetstream,
    capacity: CAPACITY,
  });
  return {
    tx,
    rx,
    async finish() {
      await tx.close();
      try {
        const status = await child.status;
        if (!status.success) {
          throw new Error(`NATS echo child exited with ${status.code}`);
        }
      } finally {
        await draining;
        await rx.close();
        await child[Symbol.asyncDispose]();
      }
    },
  };
}

/** A local channel echo (or counting) child and the parent's ends. */
function localEnds(countEvery?: number): Ends {
  const [toChild, childRx] = channel<unknown>({ capacity: CAPACITY });
  const [childTx, fromChild] = channel<unknown>({ capacity: CAPACITY });
  const child = spawn(Deno.execPath(), {
    args: [
      "run",
      "--allow-ffi",
      ECHO,
      "local",
      ...(countEvery === undefined ? [] : ["count", String(countEvery)]),
    ],
    fds: [childRx, childTx],
    stdin: "null",
  });
  childRx.close();
  childTx.close();
  return {
    tx: toChild as Sender<unknown>,
    rx: fromChild as Receiver<unknown>,
    async finish() {
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
    },
  };
}

async function pingPong(ends: Ends, count: number): Promise<number[]> {
  try {
    await ends.tx.send(message(-1));
    await ends.rx.recv();
    const rtts = new Array<number>(count);
    for (let i = 0; i < count; i++) {
      const t0 = performance.now();
      await ends.tx.send(message(i));
      const echo = await ends.rx.recv() as { id: number };
      rtts[i] = (performance.now() - t0) * 1000;
      if (echo.id !== i) throw new Error(`round trip ${i}: wrong echo`);
    }
    return rtts;
  } finally {
    await ends.finish();
  }
}

async function pipelined(ends: Ends, count: number): Promise<number> {
  try {
    await ends.tx.send(message(-1));
    await ends.rx.recv();
    const start = performance.now();
    const sending = (async () => {
      for (let i = 0; i < count; i++) await ends.tx.send(message(i));
    })();
    for (let i = 0; i < count; i++) {
      const echo = await ends.rx.recv() as { id: number };
      if (echo.id !== i) throw new Error(`message ${i}: wrong echo`);
    }
    await sending;
    return count / ((performance.now() - start) / 1000);
  } finally {
    await ends.finish();
  }
}

/** One way: `count` values in, the child reports once it has them all. */
async function oneWay(ends: Ends, count: number): Promise<number> {
  try {
    const start = performance.now();
    for (let i = 0; i < count; i++) await ends.tx.send(message(i));
    const seen = await ends.rx.recv();
    if (seen !== count) throw new Error(`the child counted ${seen}`);
    return count / ((performance.now() - start) / 1000);
  } finally {
    await ends.finish();
  }
}

const rttCase: BenchCase = {
  id: "nats.rtt",
  area: "nats",
  async run(options) {
    const count = options.quick ? 500 : 5_000;
    await using server = await startNatsServer();
    const mine: number[][] = [];
    const local: number[][] = [];
    await alternating(options, `NATS round trip ×${count}`, [
      async (measured) => {
        const rtts = await pingPong(await natsEnds(server, false), count);
        if (measured) mine.push(rtts);
      },
      async (measured) => {
        const rtts = await pingPong(localEnds(), count);
        if (measured) local.push(rtts);
      },
    ]);
    return [result({
      id: "nats.rtt",
      mechanism:
        "natsSender()/natsReceiver() round trip of a small object through a local nats-server (core), Deno child echoes",
      unit: "µs",
      higherIsBetter: false,
      samples: mine.map((r) => percentile(r, 50)),
      operations: mine.flat(),
      baseline: {
        mechanism: "channel() round trip of the same object, Deno child echoes",
        samples: local.map((r) => percentile(r, 50)),
        operations: local.flat(),
      },
    })];
  },
};

const rateCase: BenchCase = {
  id: "nats.rate",
  area: "nats",
  async run(options) {
    const count = options.quick ? 5_000 : 50_000;
    await using server = await startNatsServer();
    const mine: number[] = [];
    const local: number[] = [];
    await alternating(options, `NATS pipelined ×${count}`, [
      async (measured) => {
        const rate = await pipelined(await natsEnds(server, false), count);
        if (measured) mine.push(rate);
      },
      async (measured) => {
        const rate = await pipelined(localEnds(), count);
        if (measured) local.push(rate);
      },
    ]);
    return [result({
      id: "nats.rate",
      mechanism:
        "core NATS pipelined echo of small objects (capacity 256), messages/s",
      unit: "msg/s",
      higherIsBetter: true,
      samples: mine,
      baseline: {
        mechanism: "channel() pipelined echo (capacity 256), messages/s",
        samples: local,
      },
    })];
  },
};

const jetstreamCase: BenchCase = {
  id: "nats.jetstream_rate",
  area: "nats",
  async run(options) {
    const count = options.quick ? 5_000 : 50_000;
    await using server = await startNatsServer({ jetstream: true });
    const mine: number[] = [];
    const local: number[] = [];
    await alternating(options, `JetStream one way ×${count}`, [
      async (measured) => {
        const rate = await oneWay(await natsEnds(server, true, count), count);
        if (measured) mine.push(rate);
      },
      async (measured) => {
        const rate = await oneWay(localEnds(count), count);
        if (measured) local.push(rate);
      },
    ]);
    return [result({
      id: "nats.jetstream_rate",
      mechanism:
        "JetStream (file store, acknowledged) small objects to a durable consumer child, messages/s",
      unit: "msg/s",
      higherIsBetter: true,
      samples: mine,
      baseline: {
        mechanism: "channel() one way to a child that counts, messages/s",
        samples: local,
      },
    })];
  },
};

/** The NATS benchmarks. */
export const cases: BenchCase[] = [rttCase, rateCase, jetstreamCase];

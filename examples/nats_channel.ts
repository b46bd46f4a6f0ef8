/**
 * Outgrowing one machine: a producer and a consumer process exchange typed
 * values (a Map, a Date, a bigint, a Uint8Array, nested objects) through a
 * NATS server instead of a local channel. Each could run on another host:
 * only the server's address ties them together.
 *
 * 1. Core NATS (at most once): the consumer subscribes first, the producer
 *    sends five orders and closes; the consumer's loop ends once the
 *    producer's end-of-stream marker arrives.
 * 2. JetStream (at least once, durable): the producer sends while no
 *    consumer runs at all; the values wait in a stream on the server's disk,
 *    and a consumer started afterwards gets every one of them.
 *
 * With no arguments it starts a local `nats-server` on 127.0.0.1 (a free
 * port) and runs both roles as child processes; without `nats-server`
 * installed it says so and exits. The JetStream part needs a store
 * directory, so it runs only with `--allow-write`.
 *
 * Run: `deno run --allow-run --allow-net=127.0.0.1 --allow-write examples/nats_channel.ts`
 *
 * One role on each machine: `deno run --allow-net examples/nats_channel.ts
 * consumer nats://server:4222` and `... producer nats://server:4222` (add
 * `--jetstream` to both for the durable variant).
 *
 * @module
 */

import { natsReceiver, natsSender } from "../nats/mod.ts";
import { findNatsServer, startNatsServer } from "../nats/_server.ts";

/** One order, as it crosses the network. */
interface Order {
  id: number;
  placed: Date;
  lines: Map<string, number>;
  total: bigint;
  signature: Uint8Array;
  customer: { name: string; tags: string[] };
}

const SUBJECT = "examples.orders";

function order(id: number): Order {
  return {
    id,
    placed: new Date(Date.UTC(2026, 0, id)),
    lines: new Map([["widget", id], ["gadget", 2 * id]]),
    total: 10n ** 20n + BigInt(id),
    signature: new Uint8Array([id, id ^ 0xff, 0x42]),
    customer: {
      name: `customer ${id}`,
      tags: ["eu", id % 2 ? "new" : "known"],
    },
  };
}

async function producer(url: string, jetstream: boolean): Promise<void> {
  await using tx = await natsSender<Order>(SUBJECT, {
    servers: url,
    jetstream,
  });
  for (let id = 1; id <= 5; id++) await tx.send(order(id));
  console.log(`producer: sent 5 orders on ${SUBJECT}, closing`);
}

async function consumer(url: string, jetstream: boolean): Promise<void> {
  await using rx = await natsReceiver<Order>(SUBJECT, {
    servers: url,
    jetstream,
  });
  console.log("ready");
  for await (const o of rx) {
    const lines = [...o.lines].map(([k, v]) => `${k}×${v}`).join(", ");
    console.log(
      `consumer: order ${o.id} placed ${o.placed.toISOString().slice(0, 10)}` +
        ` (${lines}), total ${o.total}n, signature [${o.signature}],` +
        ` ${o.customer.name} ${JSON.stringify(o.customer.tags)}`,
    );
  }
  console.log("consumer: the producer closed: end of stream");
}

/** Runs one role in a child process; resolves with its exit once done. */
function role(name: string, url: string, jetstream: boolean) {
  const config = new URL("../deno.json", import.meta.url).pathname;
  const args = ["run", "--config", config, "--allow-net=127.0.0.1"];
  args.push(import.meta.filename!, name, url);
  if (jetstream) args.push("--jetstream");
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const ready = Promise.withResolvers<void>();
  const done = (async () => {
    let pending = "";
    for await (
      const text of child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      pending += text;
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) {
        if (line === "ready") ready.resolve();
        else console.log(`  ${line}`);
      }
    }
    const status = await child.status;
    ready.resolve();
    if (!status.success) throw new Error(`${name} exited with ${status.code}`);
  })();
  return { ready: ready.promise, done };
}

const [mode, url] = Deno.args;
const jetstream = Deno.args.includes("--jetstream");
if (mode === "producer") {
  await producer(url, jetstream);
} else if (mode === "consumer") {
  await consumer(url, jetstream);
} else if (await findNatsServer() === null) {
  console.log(
    "nats-server is not installed (apt-get install nats-server): nothing to show",
  );
} else {
  const canStore =
    (await Deno.permissions.query({ name: "write" })).state === "granted";
  await using server = await startNatsServer({ jetstream: canStore });
  console.log(`nats-server on ${server.url}`);

  console.log(
    "\n1. Core NATS: the consumer subscribes, then the producer sends",
  );
  const live = role("consumer", server.url, false);
  await live.ready;
  await role("producer", server.url, false).done;
  await live.done;

  if (!canStore) {
    console.log(
      "\n2. JetStream needs a store directory: run with --allow-write to see it",
    );
  } else {
    console.log(
      "\n2. JetStream: the producer sends while no consumer runs; one that starts later gets everything",
    );
    await role("producer", server.url, true).done;
    const late = role("consumer", server.url, true);
    await late.done;
  }
}

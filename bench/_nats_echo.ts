/**
 * The child of the NATS benchmark. Modes:
 *
 * - `nats <url> <in> <out> <jetstream 0|1>`: receives on subject `in` and
 *   sends every value back on `out` (or, with `count <n>` after it, sends
 *   only the number of values once `n` arrived). Prints `ready` once
 *   subscribed. Needs `--allow-net`.
 * - `local [count <n>]`: the same over a local `channel()`, whose Receiver
 *   and Sender it gets as fd 3 and 4. Needs `--allow-ffi`.
 *
 * @module
 */

const [mode, ...rest] = Deno.args;

/** Sends every value back, or with `every`, the count after each `every`. */
async function serve(
  rx: AsyncIterable<unknown>,
  tx: { send(value: unknown): Promise<void> },
  every: number | undefined,
): Promise<void> {
  if (every === undefined) {
    for await (const value of rx) await tx.send(value);
    return;
  }
  let seen = 0;
  for await (const _ of rx) {
    if (++seen === every) {
      await tx.send(seen);
      seen = 0;
    }
  }
}

if (mode === "nats") {
  const [url, inSubject, outSubject, js, count, n] = rest;
  const { natsReceiver, natsSender } = await import("../nats/mod.ts");
  const jetstream = js === "1";
  const rx = await natsReceiver<unknown>(inSubject, {
    servers: url,
    jetstream,
  });
  const tx = await natsSender<unknown>(outSubject, { servers: url });
  console.log("ready");
  await serve(rx, tx, count === "count" ? Number(n) : undefined);
  await tx.close();
  await rx.close();
} else if (mode === "local") {
  const { fromFd, Receiver, Sender } = await import("../mod.ts");
  const rx = fromFd(3);
  const tx = fromFd(4);
  if (!(rx instanceof Receiver) || !(tx instanceof Sender)) {
    throw new TypeError("fd 3 and 4 must be a channel's Receiver and Sender");
  }
  const [count, n] = rest;
  await serve(rx, tx, count === "count" ? Number(n) : undefined);
  tx.close();
  rx.close();
} else {
  throw new TypeError(`unknown mode ${mode}`);
}

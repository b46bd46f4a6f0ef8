/**
 * The child of the channel benchmarks (bench/channel_bench.ts): gets a
 * Receiver as fd 3 and a Sender as fd 4 (rebuilt by `fromFd()`), both with
 * default options, and reads with `for await` until the parent closes its
 * sender.
 *
 * - `echo`: sends every message back.
 * - `count <n>`: counts the messages and, at every `n`th, answers
 *   `{ seen, cpuUs }`.
 *
 * In both modes the message `"cpu?"` is answered with this process's CPU
 * time in µs (bench/_cpu.ts) and is not echoed or counted.
 *
 * @module
 */

import { fromFd, Receiver, Sender } from "../mod.ts";
import { CPU_QUESTION, cpuUs } from "./_cpu.ts";

const rx = fromFd(3);
const tx = fromFd(4);
if (!(rx instanceof Receiver) || !(tx instanceof Sender)) {
  throw new TypeError("fd 3 and 4 must be a channel's Receiver and Sender");
}
const [mode, n] = Deno.args;
if (mode === "echo") {
  for await (const message of rx) {
    await tx.send(message === CPU_QUESTION ? cpuUs() : message);
  }
} else if (mode === "count") {
  const count = Number(n);
  if (!Number.isInteger(count) || count < 1) {
    throw new RangeError(`count: expected a positive integer, got ${n}`);
  }
  let seen = 0;
  for await (const message of rx) {
    if (message === CPU_QUESTION) {
      await tx.send(cpuUs());
    } else if (++seen === count) {
      await tx.send({ seen, cpuUs: cpuUs() });
      seen = 0;
    }
  }
} else {
  throw new Error(`Unknown mode ${mode}`);
}
tx.close();
rx.close();

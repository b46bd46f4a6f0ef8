/**
 * The child of the `fork()` IPC baselines (bench/_baselines.ts): says it is
 * ready, then, until the parent disconnects:
 *
 * - `echo`: sends every message back;
 * - `count <n>`: counts the messages and, at every `n`th, answers
 *   `{ seen, cpuUs }`.
 *
 * In both modes a `{ cpu: CPU_QUESTION }` message is answered with `{ cpuUs }`,
 * this process's CPU time from `process.cpuUsage()` (user plus system, which
 * Deno takes from `getrusage(RUSAGE_SELF)`), and is not echoed or counted.
 *
 * @module
 */

import process from "node:process";
import { CPU_QUESTION } from "./_cpu.ts";

const [mode, n] = process.argv.slice(2);

function cpuUs(): number {
  const { user, system } = process.cpuUsage();
  return user + system;
}

function isCpuQuery(message: unknown): boolean {
  return typeof message === "object" && message !== null &&
    (message as { cpu?: unknown }).cpu === CPU_QUESTION;
}

if (mode === "echo") {
  process.on("message", (message: unknown) => {
    if (isCpuQuery(message)) process.send!({ cpuUs: cpuUs() });
    else process.send!(message);
  });
} else if (mode === "count") {
  const count = Number(n);
  if (!Number.isInteger(count) || count < 1) {
    throw new RangeError(`count: expected a positive integer, got ${n}`);
  }
  let seen = 0;
  process.on("message", (message: unknown) => {
    if (isCpuQuery(message)) {
      process.send!({ cpuUs: cpuUs() });
    } else if (++seen === count) {
      process.send!({ seen, cpuUs: cpuUs() });
      seen = 0;
    }
  });
} else {
  throw new Error(`Unknown mode ${mode}`);
}
process.send!("ready");

/**
 * A child of the `fork()` IPC counting baseline (bench/sync_bench.ts): on
 * `{ go: n }` it asks its parent `n` times, one request at a time, to add
 * one to the counter the parent keeps, then sends `{ start, end }` (ms since
 * the epoch) and exits when the parent disconnects.
 *
 * @module
 */

import process from "node:process";

const now = () => performance.timeOrigin + performance.now();
let pending: (() => void) | undefined;

process.on("message", async (message: unknown) => {
  const go = (message as { go?: number }).go;
  if (go === undefined) {
    const resolve = pending;
    pending = undefined;
    resolve?.();
    return;
  }
  const start = now();
  for (let i = 0; i < go; i++) {
    await new Promise<void>((resolve) => {
      pending = resolve;
      process.send!("inc");
    });
  }
  process.send!({ start, end: now() });
});
process.send!("ready");

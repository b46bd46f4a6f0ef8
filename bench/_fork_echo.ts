/**
 * The child of the `fork()` IPC baseline (bench/_baselines.ts
 * `forkPingPong`): says it is ready, then echoes every message back until
 * the parent disconnects.
 *
 * @module
 */

import process from "node:process";

process.on("message", (message: unknown) => {
  process.send!(message);
});
process.send!("ready");

/**
 * The child of the shared-memory benchmarks (bench/shm_bench.ts). Its first
 * argument says what to do:
 *
 * - `send <mib>`: sends `mib` MiB as 64 KiB messages on the queue sender it
 *   inherited as fd 3, then closes it.
 * - `stdout <mib>`: writes `mib` MiB to stdout, 1 MiB per write (the
 *   `Deno.Command` baseline, from the same runtime).
 * - `echo`: sends back every message from the receiver on fd 3 through the
 *   sender on fd 4, until the receiver sees the end.
 *
 * @module
 */

import { shmQueueFromFd, ShmReceiver, ShmSender } from "../shm/mod.ts";

const [mode, arg] = Deno.args;

if (mode === "send") {
  const tx = shmQueueFromFd(3);
  if (!(tx instanceof ShmSender)) throw new TypeError("fd 3: not a sender");
  const chunk = new Uint8Array(64 * 1024);
  const count = Number(arg) * 16;
  for (let i = 0; i < count; i++) await tx.send(chunk);
  tx.close();
} else if (mode === "stdout") {
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < Number(arg); i++) {
    let done = 0;
    while (done < chunk.length) {
      done += await Deno.stdout.write(chunk.subarray(done));
    }
  }
} else if (mode === "echo") {
  const rx = shmQueueFromFd(3);
  const tx = shmQueueFromFd(4);
  if (!(rx instanceof ShmReceiver) || !(tx instanceof ShmSender)) {
    throw new TypeError("expected a receiver on fd 3 and a sender on fd 4");
  }
  for await (const message of rx) await tx.send(message);
  tx.close();
  rx.close();
} else {
  throw new Error(`Unknown mode ${mode}`);
}

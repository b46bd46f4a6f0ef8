/**
 * The child of the mutex benchmark (bench/sync_bench.ts): `mutex <n>`, with
 * the SharedMemory inherited as fd 3 (a `Mutex` at 0, a `Barrier` at 16, a
 * counter at 64), passes the barrier, then takes the mutex `n` times, adding
 * one to the counter each time, and prints `{ start, end }` (ms since the
 * epoch) as JSON.
 *
 * @module
 */

import { Barrier, Mutex, SharedMemory } from "../mod.ts";
import { fromFd } from "../from_fd.ts";

const now = () => performance.timeOrigin + performance.now();
const [mode, ...args] = Deno.args;

if (mode === "mutex") {
  const mem = fromFd(3);
  if (!(mem instanceof SharedMemory)) throw new TypeError("fd 3: no memory");
  const mutex = Mutex.from(mem, 0);
  const counter = new Int32Array(mem.buffer, 64, 1);
  const n = Number(args[0]);
  await Barrier.from(mem, 16).wait({ signal: AbortSignal.timeout(60_000) });
  const start = now();
  for (let i = 0; i < n; i++) {
    const guard = await mutex.lock();
    counter[0] = counter[0] + 1;
    guard.unlock();
  }
  console.log(JSON.stringify({ start, end: now() }));
  mem.close();
} else {
  throw new Error(`Unknown mode ${mode}`);
}

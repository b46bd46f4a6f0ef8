/**
 * Helpers of the tests of bench/: a bound on waits for child processes, an
 * in-process echo and quiet run options. Importing it loads the library
 * that CPU times are read through.
 *
 * @module
 */

import type { Echo } from "../bench/_baselines.ts";
import type { BenchOptions } from "../bench/_types.ts";
import { cpuUs } from "../bench/_cpu.ts";

// cpuUs() opens its library on its first call: do it here, so that no test
// is charged with loading a dynamic library.
cpuUs();

/** The bound of every wait on a child process in these tests, ms. */
export const CHILD_WAIT_MS = 30_000;

/** Two runs of small payloads, with no progress line. */
export const QUIET: BenchOptions = {
  runs: 2,
  quick: true,
  progress: () => {},
};

/** An in-process echo that records when each round trip started. */
export function fakeEcho(childCpu: number[] = [100, 500]) {
  const starts: number[] = [];
  const seen: number[] = [];
  let queries = 0;
  let closed = 0;
  const echo: Echo = {
    roundTrip(i) {
      starts.push(performance.now());
      seen.push(i);
      return Promise.resolve();
    },
    childCpuUs() {
      return Promise.resolve(
        childCpu[Math.min(queries++, childCpu.length - 1)],
      );
    },
    close() {
      closed++;
      return Promise.resolve();
    },
  };
  return {
    echo,
    starts,
    seen,
    get closed() {
      return closed;
    },
  };
}

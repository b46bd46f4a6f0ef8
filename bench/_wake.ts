/**
 * The poller's wake path in the benchmarks: `"uring"` or `"aio"` (readiness
 * forwarded into Deno's event loop) or `"ffi"` (the nonblocking
 * `epoll_wait` fallback), and why (ffi/poller.ts `wakePath()`).
 *
 * - {@linkcode currentWakePath}: this process's path, for the report.
 * - {@linkcode childRun}: the `deno run` flags and environment of every Deno
 *   child of the benchmarks. The child is told to take this process's path
 *   (`CONDUIT_IPC_WAKE`), so both ends of a measurement use the same one
 *   and the report's wake path holds for the whole row; a child that cannot
 *   take it fails, and so does the case, instead of measuring a mix. With
 *   nothing set, this is the path each side would pick on its own.
 *
 * @example Print the path
 * ```ts
 * import { currentWakePath } from "./_wake.ts";
 *
 * const wake = currentWakePath();
 * console.log(`${wake.path}: ${wake.reason}`);
 * ```
 *
 * @module
 */

import { wakePath } from "../ffi/poller.ts";
import type { WakePath } from "./_report.ts";

/** The environment variable that forces the poller's wake path. */
export const WAKE_ENV = "CONDUIT_IPC_WAKE";

/**
 * This process's wake path. The poller picks it on first use and keeps it;
 * this picks it if nothing has yet.
 *
 * @param ask Where to ask. Default ffi/poller.ts `wakePath()`.
 * @returns The path and the reason, or `"unknown"` and why when asking
 *   fails (such as a forced path this machine refuses).
 */
export function currentWakePath(
  ask: () => WakePath = wakePath,
): WakePath {
  try {
    const { path, reason } = ask();
    return { path, reason };
  } catch (error) {
    return {
      path: "unknown",
      reason: `wakePath() threw: ${
        error instanceof Error ? error.message : String(error)
      }`,
    };
  }
}

/** How a benchmark starts a Deno child: flags after `run`, and environment. */
export interface ChildRun {
  /** `--allow-ffi`, and `--allow-env` for the wake path variable only. */
  flags: string[];
  /** `CONDUIT_IPC_WAKE` set to this process's path, when it is known. */
  env: Record<string, string>;
}

/**
 * The flags and environment of a Deno child of the benchmarks, so that it
 * takes this process's wake path.
 *
 * @returns Flags to put after `deno run`, and variables to add.
 */
export function childRun(): ChildRun {
  const { path } = currentWakePath();
  return {
    flags: ["--allow-ffi", `--allow-env=${WAKE_ENV}`],
    env: path === "uring" || path === "aio" || path === "ffi"
      ? { [WAKE_ENV]: path }
      : {},
  };
}

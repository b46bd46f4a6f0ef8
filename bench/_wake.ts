/**
 * Which wake path the poller uses (ffi/poller.ts `wakePath()`), for the
 * report: `"aio"` (readiness forwarded into Deno's event loop) or `"ffi"`
 * (the nonblocking `epoll_wait` fallback), and why. The child processes of
 * the benchmarks inherit the environment that chooses it, so they take the
 * same path unless their own detection fails.
 *
 * The poller's export is looked up at run time, so a poller that does not
 * report its path yet still runs the benchmarks: the report then says
 * `"unknown"`.
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

import * as pollerModule from "../ffi/poller.ts";
import type { WakePath } from "./_report.ts";

/**
 * Asks the poller for its wake path. Call it after the poller has been used
 * (it detects the path on first use).
 *
 * @param source The module to ask. Default ffi/poller.ts.
 * @returns The path and the reason, or `"unknown"` and why not.
 */
export function currentWakePath(
  source: Record<string, unknown> = pollerModule as Record<string, unknown>,
): WakePath {
  const wakePath = source.wakePath;
  if (typeof wakePath !== "function") {
    return {
      path: "unknown",
      reason: "ffi/poller.ts does not report its wake path",
    };
  }
  let answer: unknown;
  try {
    answer = wakePath();
  } catch (error) {
    return {
      path: "unknown",
      reason: `wakePath() threw: ${
        error instanceof Error ? error.message : String(error)
      }`,
    };
  }
  const { path, reason } = (answer ?? {}) as {
    path?: unknown;
    reason?: unknown;
  };
  if (typeof path !== "string" || path === "") {
    return {
      path: "unknown",
      reason: "wakePath() returned no path",
    };
  }
  return { path, reason: typeof reason === "string" ? reason : "" };
}

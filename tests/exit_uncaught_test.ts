// A process that ends by an uncaught error while the ffi wake path has a
// nonblocking epoll_wait in flight: that call must not write into memory
// the runtime freed on the way out (heap corruption, SIGSEGV or SIGABRT).
import assert from "node:assert/strict";
import { DENO, fixture, test, withTimeout } from "./_util.ts";

const FIXTURE = fixture("exit_uncaught.ts");

test(
  "an uncaught error with a receive parked on the ffi wake path exits with code 1, never by a signal (24 runs)",
  async () => {
    const outcomes: string[] = [];
    for (let run = 0; run < 24; run++) {
      const command = new Deno.Command(DENO, {
        args: [
          "run",
          "--allow-ffi",
          "--allow-read",
          "--allow-run",
          "--allow-env",
          FIXTURE,
        ],
        env: { CONDUIT_IPC_WAKE: "ffi" },
        stdout: "null",
        stderr: "piped",
      });
      const out = await withTimeout(command.output(), 20_000, `run ${run}`);
      const err = new TextDecoder().decode(out.stderr);
      if (
        out.code !== 1 || out.signal !== null ||
        !err.includes("uncaught on purpose")
      ) {
        outcomes.push(
          `run ${run}: code ${out.code} signal ${out.signal}: ${
            err.split("\n").filter((l) =>
              /corrupt|malloc|free|Segment/i.test(l)
            ).join(" | ")
          }`,
        );
      }
    }
    assert.deepEqual(outcomes, []);
  },
  { run: true, read: true, env: true },
);

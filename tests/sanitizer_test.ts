import assert from "node:assert/strict";
import { fixture, runDeno, test } from "./_util.ts";

// A user's tests that import only the public API pass under Deno's op and
// resource sanitizers: libc is opened while the module is evaluated when FFI
// is granted, and the poller holds nothing once its waits are served. The
// fixture fails ("a dynamic library was loaded during the test") without the
// first, and with a leaked op or resource without the second.
for (const wake of ["uring", "aio", "ffi"]) {
  test(
    `a user's test file passes under --sanitize-ops --sanitize-resources (${wake} wake path)`,
    async () => {
      const run = await runDeno(
        [
          "test",
          "--sanitize-ops",
          "--sanitize-resources",
          "--allow-ffi",
          "--allow-env=CONDUIT_IPC_WAKE",
          "--no-check",
          fixture("user_sanitized.ts"),
        ],
        60_000,
        "user_sanitized.ts",
        { CONDUIT_IPC_WAKE: wake },
      );
      assert.equal(run.code, 0, run.stdout + run.stderr);
      assert.match(run.stdout, /5 passed/);
    },
    { read: true, run: true, env: true },
  );
}

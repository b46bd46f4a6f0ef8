/**
 * The wake path's fallbacks where a sandbox forbids io_uring or Linux AIO: a
 * child runs under a seccomp filter (tests/fixtures/deny_syscall.c, built
 * here with the machine's C compiler) that fails some calls with EPERM. Its
 * first wait chooses the path. With `io_uring_setup`, `io_uring_enter` or
 * `io_uring_register` refused it must fall back to the `aio` path; with
 * io_uring and `io_setup`, `io_submit`, `io_cancel` or `io_getevents`
 * refused, to the `ffi` path. Either way it must say why, deliver every
 * message, keep doing so after its poller went idle, and leave no fd open;
 * with `CONDUIT_IPC_WAKE` forcing the refused path it must fail and say why
 * instead. (Where `io_cancel` or `io_getevents` is refused, the `aio` path
 * would leave each closed wake's poll outstanding, after waiting for its
 * completion in vain, until the AIO context is full.)
 *
 * Without a C compiler (CI installs one: `apt-get install gcc`) these tests
 * are skipped with a message.
 *
 * @module
 */

import assert from "node:assert/strict";
import { fixture, runDeno, test, withTimeout } from "./_util.ts";

/** Bound on the compile and on each child. */
const STEP_MS = 60_000;

/** The launcher built from deny_syscall.c, or why there is none. */
async function buildLauncher(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "conduit-deny-" });
  const binary = `${dir}/deny_syscall`;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("cc", {
      args: ["-Wall", "-Werror", "-o", binary, fixture("deny_syscall.c")],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (error) {
    await Deno.remove(dir, { recursive: true });
    if (error instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound("no C compiler (apt-get install gcc)");
    }
    throw error;
  }
  const output = child.output();
  let result: Deno.CommandOutput;
  try {
    result = await withTimeout(output, STEP_MS, "cc deny_syscall.c");
  } catch (error) {
    child.kill("SIGKILL");
    await output;
    throw error;
  }
  assert.ok(
    result.success,
    `cc deny_syscall.c: ${new TextDecoder().decode(result.stderr)}`,
  );
  return binary;
}

let launcher: string | Error;
try {
  launcher = await buildLauncher();
} catch (error) {
  if (!(error instanceof Deno.errors.NotFound)) throw error;
  launcher = error;
  console.warn(`${error.message}: the wake path fallback tests are skipped`);
}
const NO_LAUNCHER = launcher instanceof Error;

globalThis.addEventListener("unload", () => {
  if (typeof launcher === "string") {
    Deno.removeSync(launcher.slice(0, launcher.lastIndexOf("/")), {
      recursive: true,
    });
  }
});

/** Runs the fallback fixture with `call` denied; its exit and output. */
function runDenied(call: string, env: Record<string, string> = {}) {
  return runDeno(
    [
      "run",
      "--allow-ffi",
      "--allow-env",
      fixture("wake_fallback.ts"),
    ],
    STEP_MS,
    `the child without ${call}`,
    // The parent's choice must not reach the child.
    { CONDUIT_IPC_WAKE: "", ...env },
    [launcher as string, call],
  );
}

/** Runs the fixture with `calls` refused; checks what it reports. */
async function fallsBack(calls: string, path: string, reasons: RegExp[]) {
  const run = await runDenied(calls);
  assert.equal(run.code, 0, run.stderr);
  const report = JSON.parse(run.stdout);
  assert.equal(report.path, path, run.stdout);
  for (const reason of reasons) assert.match(report.reason, reason);
  assert.equal(report.got, 101);
  assert.equal(report.last, 101);
  assert.equal(report.rounds, 20, run.stdout);
  assert.deepEqual(report.leaked, []);
}

/** Runs the fixture with `calls` refused and `path` forced: it must fail. */
async function forcedFails(calls: string, path: string, call: string) {
  const run = await runDenied(calls, { CONDUIT_IPC_WAKE: path });
  assert.notEqual(run.code, 0, run.stdout);
  assert.match(run.stderr, /NotSupported/);
  assert.match(
    run.stderr,
    new RegExp(
      `Cannot use the wake path forced by CONDUIT_IPC_WAKE=${path}: .*${call}`,
    ),
  );
}

for (const call of ["io_uring_setup", "io_uring_enter", "io_uring_register"]) {
  test(
    `where ${call} is refused, the first wait falls back to the aio wake path, says why, and delivers every message, also after its poller went idle`,
    () =>
      fallsBack(call, "aio", [
        new RegExp(`^io_uring poll unavailable: ${call}`),
        /; AIO poll is available; /,
      ]),
    { run: true, read: true },
    { ignore: NO_LAUNCHER },
  );

  test(
    `where ${call} is refused, CONDUIT_IPC_WAKE=uring fails the first wait and says why`,
    () => forcedFails(call, "uring", call),
    { run: true, read: true },
    { ignore: NO_LAUNCHER },
  );
}

for (const call of ["io_setup", "io_submit", "io_cancel", "io_getevents"]) {
  test(
    `where io_uring and ${call} are refused, the first wait falls back to the ffi wake path, says why, and delivers every message, also after its poller went idle`,
    () =>
      fallsBack(`io_uring_setup,${call}`, "ffi", [
        /^io_uring poll unavailable: io_uring_setup/,
        new RegExp(`; AIO poll unavailable: ${call}`),
      ]),
    { run: true, read: true },
    { ignore: NO_LAUNCHER },
  );

  test(
    `where ${call} is refused, CONDUIT_IPC_WAKE=aio fails the first wait and says why`,
    () => forcedFails(call, "aio", call),
    { run: true, read: true },
    { ignore: NO_LAUNCHER },
  );
}

/**
 * Runs a fixture that refuses a call itself, mid-run, on its JS thread (it
 * needs no launcher), on the path it would choose; checks that it ended
 * well and returns its JSON report.
 */
async function runRefusing(name: string, what: string) {
  const run = await runDeno(
    ["run", "--allow-ffi", "--allow-env", fixture(name)],
    STEP_MS,
    what,
    { CONDUIT_IPC_WAKE: "" },
  );
  assert.equal(run.code, 0, run.stderr);
  return { report: JSON.parse(run.stdout), stdout: run.stdout };
}

test(
  "where io_uring is refused only after the first wait chose it (kernel.io_uring_disabled set later), a wait after the poller went idle falls back to aio instead of failing",
  async () => {
    const { report, stdout } = await runRefusing(
      "wake_refused_later.ts",
      "the child that refuses io_uring_setup after its first wait",
    );
    assert.equal(report.first, 1, stdout);
    assert.equal(report.firstPath, "uring", stdout);
    assert.equal(report.error, undefined, stdout);
    assert.equal(report.second, 2, stdout);
    assert.equal(report.path, "aio", stdout);
    assert.match(report.reason, /^io_uring poll unavailable: io_uring_setup/);
  },
  { run: true, read: true },
);

test(
  "on the uring path, a poll of the epoll set that the kernel refuses to arm again fails the waits through the set, and the rest goes on",
  async () => {
    const { report, stdout } = await runRefusing(
      "wake_rearm_refused.ts",
      "the child that refuses io_uring_enter while fds wait through the set",
    );
    assert.equal(report.path, "uring", stdout);
    assert.equal(report.direct, 48, stdout);
    assert.equal(report.got, 1, stdout);
    assert.deepEqual(report.failed, [
      "PermissionDenied",
      "PermissionDenied",
      "PermissionDenied",
    ]);
  },
  { run: true, read: true },
);

/**
 * The `@conduit/ipc` command line.
 *
 * - `demo [name...]` runs the seed scenarios in examples/ end to end, each as
 *   its own Deno process, and shows what crossed between the processes.
 * - `bench` measures every cross-process mechanism against the baseline a
 *   user would otherwise reach for, in the same run (from a checkout of the
 *   repository: the benchmarks are not published).
 * - `doctor` checks what the module needs on this machine and says what to
 *   do about anything missing.
 *
 * Every command takes `--help`.
 *
 * Exit codes, the same for every command:
 * - `0`: everything ran and passed.
 * - `1`: something failed: a required check, an example, a benchmark case.
 * - `2`: usage error: an unknown command, option, example or area, or a bad
 *   option value.
 *
 * @example Check this machine
 * ```sh
 * deno run --allow-ffi jsr:@conduit/ipc/cli doctor
 * ```
 *
 * @example From a checkout
 * ```sh
 * deno task demo                 # every example
 * deno task demo random_byte     # one example
 * deno task bench --quick        # a smoke run of the benchmarks
 * deno task bench --json bench.json --svg bench.svg --markdown bench.md
 * ```
 *
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";
import { libc } from "./ffi/libc.ts";
import { errno, errnoName } from "./ffi/errors.ts";
import { F, MMAP, O, RLIMIT, SIZEOF, SOCK, SOCKADDR_UN } from "./ffi/layout.ts";
import { cstr } from "./ffi/mem.ts";
import { wakePath } from "./ffi/poller.ts";

/**
 * The exit codes of every command.
 *
 * @example Act on the result of a command
 * ```ts
 * import { ExitCode, main } from "@conduit/ipc/cli";
 *
 * const code = await main(["doctor"]);
 * if (code !== ExitCode.Ok) console.error("this machine lacks something");
 * ```
 */
export const ExitCode = {
  /** Everything ran and passed. */
  Ok: 0,
  /** A required check, an example or a benchmark case failed. */
  Failure: 1,
  /** Unknown command, option, example or area, or a bad option value. */
  Usage: 2,
} as const;

const HELP = {
  main: `Usage: cli.ts <command> [options]

Inter-process communication for Deno on Linux: the command line.

Commands:
  demo [name...]   Run the examples in examples/ and show what crossed between processes
  bench            Benchmark every cross-process mechanism against its baseline
  doctor           Check what @conduit/ipc needs on this machine
  help [command]   Show help for a command

Options:
  -h, --help       Show this help

Run "cli.ts <command> --help" for a command's options.

Exit codes:
  0  everything ran and passed
  1  something failed (a required check, an example, a benchmark case)
  2  usage error (unknown command, option, example or area; bad value)
`,
  demo: `Usage: cli.ts demo [name...] [options]

Runs the examples in examples/ (every *.ts file not starting with "_"), each
as "deno run --allow-ffi --allow-run <file>" in its own process, under a
heading, and shows what crossed between the processes. Without a name, runs
them all.

Options:
  --list           List the examples and exit
  --dir DIR        Run the examples in DIR instead of examples/
  --timeout MS     Stop an example that runs longer (default 60000)
  -h, --help       Show this help

Permissions: --allow-read (to list the examples) and --allow-run.

Exit codes:
  0  every example exited with code 0
  1  an example failed or timed out, or there are none
  2  unknown example name or option
`,
  bench: `Usage: cli.ts bench [options]

Measures every cross-process mechanism of the module, with default options,
against the baseline a user would otherwise reach for (Deno.Command stdio,
node:child_process fork() IPC), measured in the same run, and against plain
C read()/write() loops built at bench time (when a C compiler exists) as a
reference point. Round trips run back to back, paced at one per ms, and
while one CPU-bound process runs (started and killed by the benchmark), and
report the CPU time per message of both processes. Each figure is the median
of the measured runs, after one warm-up run. The report gives the date, the
machine and the poller's wake path. Areas whose benchmark is not built yet
are skipped. Needs a checkout of the repository (bench/ is not published).
Run it on a quiet machine: anything else running skews the figures.

Options:
  --runs N         Measured runs per case (default 5; at least 5 unless --quick)
  --quick          Small payloads and 3 runs: a smoke run of about half a
                   minute, not for publishing
  --only AREA      Run only this area (repeatable or comma-separated:
                   pipe, spawn, socketpair, channel, shm, nats)
  --json FILE      Write the results as JSON
  --svg FILE       Draw the results as an SVG bar chart
  --markdown FILE  Write the table as Markdown (for the README)
  --dir DIR        Run the area files (<area>_bench.ts) in DIR instead of bench/
  -h, --help       Show this help

Permissions: --allow-ffi --allow-run --allow-read --allow-write --allow-env
--allow-sys, and --allow-net=127.0.0.1 for the nats area, which starts a
local nats-server (deno task bench grants them).

Exit codes:
  0  every case ran
  1  a case failed, or no benchmark produced a result
  2  unknown area or option, or a bad --runs
`,
  doctor: `Usage: cli.ts doctor [options]

Checks what @conduit/ipc needs on this machine: the Deno version, the
platform, --allow-ffi, libc, memfd_create, pidfd_open, SOCK_SEQPACKET, the
abstract socket namespace, /dev/shm, pipe capacity and the fd limit. Prints
"ok", "warn" or "FAIL" for each, and what to do when it is not ok.

Options:
  --json           Print the checks as JSON
  -h, --help       Show this help

Permissions: --allow-ffi (without it, only the first checks can run).

Exit codes:
  0  every required check passed (warnings allowed)
  1  a required check failed
  2  unknown option
`,
} as const;

type Command = keyof typeof HELP;

class UsageError extends Error {
  constructor(message: string, readonly command: Command) {
    super(message);
  }
}

function parse<const T extends ParseArgsConfig>(
  command: Command,
  config: T,
): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (error) {
    throw new UsageError(
      error instanceof Error ? error.message : String(error),
      command,
    );
  }
}

/**
 * Runs the command line: `demo`, `bench`, `doctor` or `help`.
 *
 * @param args The arguments after the script, such as `["demo", "random_byte"]`.
 * @returns The exit code: 0 ok, 1 failure, 2 usage error ({@linkcode ExitCode}).
 *
 * @example Run the command line from a script
 * ```ts
 * import { main } from "@conduit/ipc/cli";
 *
 * Deno.exit(await main(Deno.args));
 * ```
 */
export async function main(args: string[]): Promise<number> {
  const [first, ...rest] = args;
  try {
    switch (first) {
      case undefined:
        console.error(HELP.main);
        return ExitCode.Usage;
      case "-h":
      case "--help":
        console.log(HELP.main);
        return ExitCode.Ok;
      case "help":
        return help(rest);
      case "demo":
        return await demo(rest);
      case "bench":
        return await bench(rest);
      case "doctor":
        return await doctorCommand(rest);
      default:
        console.error(
          first.startsWith("-")
            ? `Unknown option: ${first}`
            : `Unknown command: ${first}`,
        );
        console.error(HELP.main);
        return ExitCode.Usage;
    }
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`${error.message}`);
      console.error(`Run "cli.ts ${error.command} --help" for usage.`);
      return ExitCode.Usage;
    }
    throw error;
  }
}

function help(args: string[]): number {
  const [name] = args;
  if (name === undefined) {
    console.log(HELP.main);
    return ExitCode.Ok;
  }
  if (name in HELP && name !== "main") {
    console.log(HELP[name as Command]);
    return ExitCode.Ok;
  }
  console.error(`Unknown command: ${name}`);
  console.error(HELP.main);
  return ExitCode.Usage;
}

// ---------------------------------------------------------------- demo

async function listExamples(dir: URL): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (
      entry.isFile && entry.name.endsWith(".ts") && !entry.name.startsWith("_")
    ) {
      names.push(entry.name.slice(0, -3));
    }
  }
  return names.sort();
}

function dirUrl(dir: string): URL {
  const absolute = dir.startsWith("/") ? dir : `${Deno.cwd()}/${dir}`;
  return new URL(
    `file://${absolute.endsWith("/") ? absolute : absolute + "/"}`,
  );
}

async function demo(args: string[]): Promise<number> {
  const { values, positionals } = parse("demo", {
    args,
    allowPositionals: true,
    strict: true,
    options: {
      help: { type: "boolean", short: "h" },
      list: { type: "boolean" },
      dir: { type: "string" },
      timeout: { type: "string" },
    },
  });
  if (values.help) {
    console.log(HELP.demo);
    return ExitCode.Ok;
  }
  const timeout = values.timeout === undefined
    ? 60_000
    : Number(values.timeout);
  if (!Number.isInteger(timeout) || timeout <= 0) {
    throw new UsageError(
      `Invalid --timeout: expected a positive number of milliseconds, got ${values.timeout}`,
      "demo",
    );
  }
  const dir = values.dir === undefined
    ? new URL("./examples/", import.meta.url)
    : dirUrl(values.dir);
  if (dir.protocol !== "file:") {
    console.error(
      `Cannot run the demo from ${dir.href}: it runs the examples of a local checkout`,
    );
    return ExitCode.Failure;
  }
  let names: string[];
  try {
    names = await listExamples(dir);
  } catch (error) {
    console.error(
      `Cannot list the examples in ${dir.pathname}: ${
        error instanceof Error ? error.message : error
      }`,
    );
    return ExitCode.Failure;
  }
  if (values.list) {
    for (const name of names) console.log(name);
    return ExitCode.Ok;
  }
  const selected = positionals.length === 0 ? names : positionals;
  const unknown = selected.filter((n) => !names.includes(n));
  if (unknown.length > 0) {
    console.error(
      `Unknown example: ${unknown.join(", ")}. Examples: ${
        names.join(", ") || "(none)"
      }`,
    );
    return ExitCode.Usage;
  }
  if (selected.length === 0) {
    console.error(`No examples in ${dir.pathname}`);
    return ExitCode.Failure;
  }

  const failed: string[] = [];
  for (const name of selected) {
    const file = new URL(`${name}.ts`, dir).pathname;
    console.log(`\n=== ${name} ===`);
    console.log(`$ deno run --allow-ffi --allow-run ${file}`);
    const start = performance.now();
    const outcome = await runExample(file, timeout);
    const took = `${Math.round(performance.now() - start)} ms`;
    if (outcome === null) {
      console.log(`--- ${name}: ok (${took})`);
    } else {
      console.log(`--- ${name}: FAILED, ${outcome} (${took})`);
      failed.push(name);
    }
  }
  const passed = selected.length - failed.length;
  console.log(
    `\n${passed} of ${selected.length} examples passed${
      failed.length > 0 ? `; failed: ${failed.join(", ")}` : ""
    }`,
  );
  return failed.length === 0 ? ExitCode.Ok : ExitCode.Failure;
}

/** Runs one example; `null` when it passed, otherwise why it failed. */
async function runExample(
  file: string,
  timeout: number,
): Promise<string | null> {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeout);
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-ffi", "--allow-run", file],
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
      signal: controller.signal,
    }).spawn();
    const status = await child.status;
    if (timedOut) return `timed out after ${timeout} ms`;
    if (status.success) return null;
    return status.signal !== null
      ? `killed by ${status.signal}`
      : `exit code ${status.code}`;
  } catch (error) {
    return `could not start: ${error instanceof Error ? error.message : error}`;
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- bench

interface Runner {
  runBench(options: {
    runs: number;
    quick: boolean;
    only: string[];
    json?: string;
    svg?: string;
    markdown?: string;
    dir?: URL;
  }): Promise<number>;
}

async function bench(args: string[]): Promise<number> {
  const { values } = parse("bench", {
    args,
    allowPositionals: false,
    strict: true,
    options: {
      help: { type: "boolean", short: "h" },
      quick: { type: "boolean" },
      runs: { type: "string" },
      only: { type: "string", multiple: true },
      json: { type: "string" },
      svg: { type: "string" },
      markdown: { type: "string" },
      dir: { type: "string" },
    },
  });
  if (values.help) {
    console.log(HELP.bench);
    return ExitCode.Ok;
  }
  const quick = values.quick ?? false;
  const runs = values.runs === undefined
    ? (quick ? 3 : 5)
    : Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) {
    throw new UsageError(
      `Invalid --runs: expected a positive integer, got ${values.runs}`,
      "bench",
    );
  }
  if (!quick && runs < 5) {
    throw new UsageError(
      `Invalid --runs: a report needs at least 5 runs, got ${runs} (use --quick for a smoke run)`,
      "bench",
    );
  }
  const only = (values.only ?? []).flatMap((v) => v.split(","))
    .map((v) => v.trim()).filter((v) => v !== "");

  // The runner is not published with the package: load it only here, by a
  // URL the publish step leaves alone.
  const url = new URL("./bench/_runner.ts", import.meta.url);
  let runner: Runner;
  try {
    runner = await import(url.href);
  } catch (error) {
    console.error(
      `Cannot load the benchmarks from ${url.href}: ${
        error instanceof Error ? error.message : error
      }\nRun the benchmarks from a checkout of the repository: deno task bench`,
    );
    return ExitCode.Failure;
  }
  return await runner.runBench({
    runs,
    quick,
    only,
    json: values.json,
    svg: values.svg,
    markdown: values.markdown,
    dir: values.dir === undefined ? undefined : dirUrl(values.dir),
  });
}

// ---------------------------------------------------------------- doctor

/**
 * One check of {@linkcode doctor}.
 *
 * @example Print failed checks
 * ```ts
 * import { doctor, type DoctorCheck } from "@conduit/ipc/cli";
 *
 * const failed: DoctorCheck[] = (await doctor()).filter((c) => !c.ok);
 * for (const c of failed) console.log(c.name, c.fix);
 * ```
 */
export interface DoctorCheck {
  /** What was checked, such as `"memfd_create"`. */
  name: string;
  /** Whether the module cannot work without it (a failure is then fatal). */
  required: boolean;
  /** Whether it works. */
  ok: boolean;
  /** What was found, such as the version or the errno. */
  detail: string;
  /** What to do when it does not work. */
  fix?: string;
  /** Set when the check could not run (no `--allow-ffi`); `ok` is then false. */
  skipped?: boolean;
}

function check(
  name: string,
  required: boolean,
  fix: string,
  probe: () => string,
): DoctorCheck {
  try {
    return { name, required, ok: true, detail: probe() };
  } catch (error) {
    return {
      name,
      required,
      ok: false,
      detail: error instanceof Error ? error.message : String(error),
      fix,
    };
  }
}

/** Throws with the errno name when a libc call returned -1. */
function ok(what: string, result: number): number {
  if (result === -1) {
    const code = errno();
    throw new Error(`${what} failed: ${errnoName(code)}`);
  }
  return result;
}

function versionAtLeast(version: string, major: number): boolean {
  return Number(version.split(".")[0]) >= major;
}

/**
 * Checks what the module needs on this machine: Deno 2 or later, Linux on
 * x86_64, `--allow-ffi`, glibc's libc, `memfd_create`, `pidfd_open`,
 * `SOCK_SEQPACKET`, the abstract socket namespace, `/dev/shm`, a 1 MiB pipe
 * capacity and the fd limit. Never throws: each problem becomes a failed
 * check with what to do about it.
 *
 * @returns One entry per check, in order.
 *
 * @example Is this machine ready?
 * ```ts
 * import { doctor } from "@conduit/ipc/cli";
 *
 * const checks = await doctor();
 * const ready = checks.every((c) => c.ok || !c.required);
 * console.log(ready ? "ready" : "missing something");
 * ```
 */
export async function doctor(): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  checks.push(
    check(
      "Deno version",
      true,
      "upgrade Deno to 2.0 or later (deno upgrade): FFI is stable from Deno 2",
      () => {
        if (!versionAtLeast(Deno.version.deno, 2)) {
          throw new Error(`Deno ${Deno.version.deno} is older than 2.0`);
        }
        return Deno.version.deno;
      },
    ),
    check(
      "platform",
      true,
      "use Linux on x86_64: the module's struct layouts and syscall numbers are for that platform",
      () => {
        const { os, arch } = Deno.build;
        if (os !== "linux" || arch !== "x86_64") {
          throw new Error(`${os} ${arch} is not supported`);
        }
        return `${os} ${arch}`;
      },
    ),
  );
  const ffi = await Deno.permissions.query({ name: "ffi" });
  const ffiCheck: DoctorCheck = ffi.state === "granted"
    ? { name: "--allow-ffi", required: true, ok: true, detail: "granted" }
    : {
      name: "--allow-ffi",
      required: true,
      ok: false,
      detail: `not granted (${ffi.state})`,
      fix:
        "run with --allow-ffi (granting it at a prompt is not enough: libc may then fail to load)",
    };
  checks.push(ffiCheck);
  const probes: [string, boolean, string, () => string][] = [
    [
      "libc",
      true,
      "use a glibc-based Linux (Debian, Ubuntu, Fedora, ...): the module loads libc.so.6, which musl systems such as Alpine lack",
      () => {
        libc();
        return "libc.so.6 loaded";
      },
    ],
    [
      "memfd_create",
      true,
      "needs Linux 3.17 or later; in a container, allow memfd_create in the seccomp profile",
      () => {
        const fd = ok(
          "memfd_create",
          libc().memfd_create(cstr("conduit-doctor"), MMAP.MFD_CLOEXEC),
        );
        libc().close(fd);
        return "anonymous shared memory works";
      },
    ],
    [
      "pidfd_open",
      true,
      "needs Linux 5.4 or later (pidfd_open and waitid(P_PIDFD)); in a container, allow pidfd_open in the seccomp profile",
      () => {
        const lib = libc();
        const fd = ok(
          "pidfd_open",
          lib.pidfd_open(434n, BigInt(lib.getpid()), 0n),
        );
        lib.close(fd);
        return "children are waited for and signalled by pidfd";
      },
    ],
    [
      "SOCK_SEQPACKET",
      true,
      "needs AF_UNIX SOCK_SEQPACKET sockets; in a sandbox, allow socket(AF_UNIX, SOCK_SEQPACKET)",
      () => {
        const fd = ok(
          "socket(AF_UNIX, SOCK_SEQPACKET)",
          libc().socket(SOCK.AF_UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC, 0),
        );
        libc().close(fd);
        return "message sockets available";
      },
    ],
    [
      "wake path",
      false,
      "the aio path needs Linux 4.18 or later with io_submit allowed (seccomp), room in fs.aio-max-nr, and Deno's pipe_wrap binding; without it the ffi fallback works, with two thread hand-offs per wake",
      () => {
        const { path, reason } = wakePath();
        if (path !== "aio") throw new Error(`ffi fallback in use: ${reason}`);
        return `aio: ${reason}`;
      },
    ],
    [
      "abstract sockets",
      true,
      "abstract Unix socket names need a Linux network namespace that allows them (some sandboxes block them); listen({ path }) still works",
      probeAbstract,
    ],
    [
      "/dev/shm",
      false,
      "mount a tmpfs on /dev/shm (Docker: --shm-size); only named shared memory (SharedMemory.create with a name) needs it",
      () => {
        const lib = libc();
        const name = cstr(`/conduit-doctor-${lib.getpid()}`);
        const fd = ok(
          "shm_open",
          lib.shm_open(name, O.CREAT | O.EXCL | O.RDWR | O.CLOEXEC, 0o600),
        );
        lib.close(fd);
        lib.shm_unlink(name);
        return "named shared memory works";
      },
    ],
    [
      "pipe capacity",
      false,
      "pipe({ capacity: 1 << 20 }) needs /proc/sys/fs/pipe-max-size of 1048576 or more (as root: sysctl fs.pipe-max-size=1048576)",
      () => {
        const lib = libc();
        const fds = new Int32Array(2);
        ok("pipe2", lib.pipe2(fds, O.CLOEXEC));
        try {
          const size = ok(
            "fcntl(F_SETPIPE_SZ, 1 MiB)",
            lib.fcntl(fds[1], F.SETPIPE_SZ, 1 << 20),
          );
          return `${size >> 10} KiB pipes available`;
        } finally {
          lib.close(fds[0]);
          lib.close(fds[1]);
        }
      },
    ],
    [
      "fd limit",
      false,
      `raise the soft limit to ${MIN_FDS} or more before starting Deno: ulimit -n 4096`,
      probeFdLimit,
    ],
  ];
  for (const [name, required, fix, probe] of probes) {
    if (!ffiCheck.ok) {
      checks.push({
        name,
        required,
        ok: false,
        detail: "not checked: needs --allow-ffi",
        skipped: true,
      });
      continue;
    }
    checks.push(check(name, required, fix, probe));
  }
  return checks;
}

function probeAbstract(): string {
  const lib = libc();
  const fd = ok(
    "socket(AF_UNIX, SOCK_STREAM)",
    lib.socket(SOCK.AF_UNIX, SOCK.STREAM | SOCK.CLOEXEC, 0),
  );
  try {
    const name = new TextEncoder().encode(
      `conduit-doctor-${lib.getpid()}-${crypto.randomUUID()}`,
    );
    const addr = new Uint8Array(SOCKADDR_UN.size);
    new DataView(addr.buffer).setUint16(SOCKADDR_UN.family, SOCK.AF_UNIX, true);
    // A leading NUL byte puts the name in the abstract namespace.
    addr.set(name, SOCKADDR_UN.path + 1);
    ok("bind", lib.bind(fd, addr, SOCKADDR_UN.path + 1 + name.length));
    return "abstract names bind";
  } finally {
    lib.close(fd);
  }
}

const MIN_FDS = 1024;

function probeFdLimit(): string {
  const buf = new BigUint64Array(SIZEOF.rlimit / 8);
  ok("getrlimit", libc().getrlimit(RLIMIT.NOFILE, buf));
  const show = (v: bigint) =>
    v === 0xffffffffffffffffn ? "unlimited" : String(v);
  const [soft, hard] = buf;
  const text = `soft ${show(soft)}, hard ${show(hard)}`;
  if (soft < BigInt(MIN_FDS)) {
    throw new Error(
      `${text}: below ${MIN_FDS}, programs with many endpoints may hit EMFILE`,
    );
  }
  return text;
}

async function doctorCommand(args: string[]): Promise<number> {
  const { values } = parse("doctor", {
    args,
    allowPositionals: false,
    strict: true,
    options: {
      help: { type: "boolean", short: "h" },
      json: { type: "boolean" },
    },
  });
  if (values.help) {
    console.log(HELP.doctor);
    return ExitCode.Ok;
  }
  const checks = await doctor();
  const fatal = checks.filter((c) => c.required && !c.ok && !c.skipped);
  const ready = checks.every((c) => c.ok || !c.required);
  if (values.json) {
    console.log(JSON.stringify({ ok: ready, checks }, null, 2));
    return ready ? ExitCode.Ok : ExitCode.Failure;
  }
  console.log("@conduit/ipc doctor: what this machine gives the module\n");
  const width = Math.max(...checks.map((c) => c.name.length));
  for (const c of checks) {
    const mark = c.ok
      ? "ok  "
      : c.skipped
      ? "skip"
      : c.required
      ? "FAIL"
      : "warn";
    console.log(`  ${mark}  ${c.name.padEnd(width)}  ${c.detail}`);
    if (!c.ok && c.fix) {
      console.log(`        ${" ".repeat(width)}  -> ${c.fix}`);
    }
  }
  const warnings = checks.filter((c) => !c.required && !c.ok).length;
  console.log(
    fatal.length === 0
      ? `\nEvery required check passed${
        warnings > 0 ? ` (${warnings} warning${warnings > 1 ? "s" : ""})` : ""
      }.`
      : `\n${fatal.length} required check${
        fatal.length > 1 ? "s" : ""
      } failed: ${fatal.map((c) => c.name).join(", ")}.`,
  );
  return ready ? ExitCode.Ok : ExitCode.Failure;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}

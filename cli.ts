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
import { doctor } from "./_cli_doctor.ts";

export { doctor, type DoctorCheck } from "./_cli_doctor.ts";

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
                   pipe, spawn, socketpair, channel, shm, sync, nats)
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

Permissions: --allow-ffi (without it, only the first checks can run);
--allow-write=/dev/shm to check /dev/shm (it creates and removes a file there).

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
 * @example Run the command line from a script (it exits the process)
 * ```ts ignore
 * import { main } from "@conduit/ipc/cli";
 *
 * if (import.meta.main) Deno.exit(await main(Deno.args));
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

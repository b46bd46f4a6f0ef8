import assert from "node:assert/strict";
import { spawn } from "../mod.ts";
import { DENO, pollerIdle, test, withTimeout } from "./_util.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;
const decoder = new TextDecoder();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `cli.ts` in its own Deno process with the given Deno flags and
 * arguments; kills it if it takes longer than `ms`.
 */
async function cli(
  flags: string[],
  args: string[],
  ms = 20_000,
  env?: Record<string, string>,
): Promise<Run> {
  const child = spawn(DENO, {
    args: ["run", ...flags, CLI, ...args],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
  try {
    const out = await withTimeout(
      child.output(),
      ms,
      `cli.ts ${args.join(" ")}`,
    );
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } finally {
    await child[Symbol.asyncDispose]();
    // The poller's last wait returns after the child's pipes close: let it
    // finish inside the test, for the op sanitizer.
    await pollerIdle();
  }
}

const ALL = [
  "--allow-ffi",
  "--allow-run",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-sys",
];
const perms = { ffi: true, run: true, read: true, env: true } as const;

test(
  "cli.ts --help and every command's --help print usage with the exit codes and exit 0",
  async () => {
    const cases: [string[], RegExp][] = [
      [
        ["--help"],
        /Usage: cli\.ts <command>[\s\S]*demo[\s\S]*bench[\s\S]*doctor/,
      ],
      [["help"], /Usage: cli\.ts <command>/],
      [["help", "bench"], /Usage: cli\.ts bench/],
      [["demo", "--help"], /Usage: cli\.ts demo[\s\S]*--timeout/],
      [
        ["bench", "-h"],
        /Usage: cli\.ts bench[\s\S]*--runs N[\s\S]*--only AREA[\s\S]*--json FILE[\s\S]*--svg FILE/,
      ],
      [["doctor", "--help"], /Usage: cli\.ts doctor[\s\S]*--json/],
    ];
    for (const [args, pattern] of cases) {
      const r = await cli([], args);
      assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stdout, pattern);
      assert.match(r.stdout, /Exit codes:[\s\S]*0 [\s\S]*1 [\s\S]*2 /);
    }
    // bench's help names every area there is a benchmark for.
    const help = (await cli([], ["bench", "--help"])).stdout;
    const listed = help.match(/comma-separated:\s+([a-z, ]+)\)/)?.[1]
      .split(",").map((area) => area.trim()).sort();
    const areas = [...Deno.readDirSync(new URL("../bench/", import.meta.url))]
      .map((entry) => entry.name.match(/^([a-z]+)_bench\.ts$/)?.[1])
      .filter((area) => area !== undefined).sort();
    assert.deepEqual(listed, areas);
  },
  perms,
);

test(
  "cli.ts exits 2 on no command, an unknown command, an unknown option or a stray argument",
  async () => {
    const cases: [string[], RegExp][] = [
      [[], /Usage: cli\.ts/],
      [["frobnicate"], /Unknown command: frobnicate/],
      [["--frobnicate"], /Unknown option: --frobnicate/],
      [["help", "frobnicate"], /Unknown command: frobnicate/],
      [
        ["doctor", "--frobnicate"],
        /Unknown option '--frobnicate'[\s\S]*cli\.ts doctor --help/,
      ],
      [["doctor", "extra"], /positional argument/],
      [["demo", "--timeout", "soon"], /Invalid --timeout/],
    ];
    for (const [args, pattern] of cases) {
      const r = await cli([], args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stdout} ${r.stderr}`);
      assert.match(r.stderr, pattern);
    }
  },
  perms,
);

/**
 * Names in /dev/shm that the doctor's probe makes (listed by `ls`: Deno asks
 * for every permission to read a directory of /dev).
 */
function doctorShmNames(): string[] {
  const { stdout } = new Deno.Command("ls", { args: ["/dev/shm"] })
    .outputSync();
  return new TextDecoder().decode(stdout).split("\n").filter((n) =>
    n.startsWith("conduit-doctor-")
  );
}

test(
  "doctor passes every required check with --allow-ffi and exits 0; /dev/shm is checked only with --allow-write for it",
  async () => {
    const before = doctorShmNames();
    const r = await cli(["--allow-ffi"], ["doctor"]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    for (
      const name of [
        "Deno version",
        "--allow-ffi",
        "libc",
        "memfd_create",
        "pidfd_open",
        "SOCK_SEQPACKET",
        "abstract sockets",
        "fd limit",
      ]
    ) {
      assert.match(
        r.stdout,
        new RegExp(`ok\\s+${name.replace("/", "\\/")}\\s`),
      );
    }
    // Without --allow-write the probe creates nothing there, and says why.
    assert.match(
      r.stdout,
      /skip\s+\/dev\/shm\s+Cannot check \/dev\/shm: requires write access to "\/dev\/shm", run again with the --allow-write flag/,
    );
    assert.match(r.stdout, /Every required check passed/);
    const write = await cli(["--allow-ffi", "--allow-write=/dev/shm"], [
      "doctor",
    ]);
    assert.equal(write.code, 0, write.stdout + write.stderr);
    assert.match(write.stdout, /ok\s+\/dev\/shm\s+named shared memory works/);
    assert.deepEqual(doctorShmNames(), before);

    const json = await cli(["--allow-ffi"], ["doctor", "--json"]);
    assert.equal(json.code, 0);
    const report = JSON.parse(json.stdout);
    assert.equal(report.ok, true);
    assert.ok(report.checks.length >= 10);
    for (const c of report.checks) {
      assert.equal(typeof c.name, "string");
      assert.equal(typeof c.required, "boolean");
      if (c.required) assert.equal(c.ok, true, `${c.name}: ${c.detail}`);
    }
  },
  perms,
);

test(
  "doctor reports the wake path: uring by default here, aio or ffi when CONDUIT_IPC_WAKE forces it, and a bad value names the variable",
  async () => {
    const flags = ["--allow-ffi", "--allow-env"];
    const wakeLine = (run: Run) =>
      JSON.parse(run.stdout).checks.find((c: { name: string }) =>
        c.name === "wake path"
      );
    const standard = wakeLine(
      await cli(flags, ["doctor", "--json"], 20_000, { CONDUIT_IPC_WAKE: "" }),
    );
    assert.equal(standard.ok, true, standard.detail);
    assert.match(
      standard.detail,
      /^uring: io_uring poll is available; each waited-on fd is polled directly; shm queue doorbells are read by Deno's event loop$/,
    );

    const forcedAio = await cli(flags, ["doctor", "--json"], 20_000, {
      CONDUIT_IPC_WAKE: "aio",
    });
    const aio = wakeLine(forcedAio);
    assert.equal(aio.ok, true, aio.detail);
    assert.match(aio.detail, /^aio: forced by CONDUIT_IPC_WAKE=aio/);
    assert.match(
      aio.detail,
      /shm queue doorbells are read by Deno's event loop$/,
    );

    const forcedFfi = await cli(flags, ["doctor", "--json"], 20_000, {
      CONDUIT_IPC_WAKE: "ffi",
    });
    const ffi = wakeLine(forcedFfi);
    assert.equal(ffi.ok, false);
    assert.match(
      ffi.detail,
      /ffi fallback in use: forced by CONDUIT_IPC_WAKE=ffi/,
    );

    const bad = await cli(flags, ["doctor", "--json"], 20_000, {
      CONDUIT_IPC_WAKE: "fast",
    });
    assert.match(
      wakeLine(bad).detail,
      /CONDUIT_IPC_WAKE must be "uring", "aio" or "ffi", got "fast"/,
    );
  },
  perms,
);

test(
  "doctor without --allow-env says that CONDUIT_IPC_WAKE was not read",
  async () => {
    const run = await cli(["--allow-ffi"], ["doctor", "--json"], 20_000, {
      CONDUIT_IPC_WAKE: "ffi",
    });
    const wake = JSON.parse(run.stdout).checks.find((
      c: { name: string },
    ) => c.name === "wake path");
    assert.match(
      wake.detail,
      /CONDUIT_IPC_WAKE is read only with --allow-env/,
    );
    const granted = await cli(["--allow-ffi", "--allow-env"], [
      "doctor",
      "--json",
    ]);
    const plain = JSON.parse(granted.stdout).checks.find((
      c: { name: string },
    ) => c.name === "wake path");
    assert.doesNotMatch(plain.detail, /--allow-env/);
  },
  perms,
);

test(
  "doctor without --allow-ffi fails that check, says what to do and exits 1",
  async () => {
    const r = await cli([], ["doctor"]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /FAIL\s+--allow-ffi\s+not granted/);
    assert.match(r.stdout, /-> run with --allow-ffi/);
    assert.match(r.stdout, /skip\s+memfd_create\s+not checked/);
    assert.match(r.stdout, /1 required check failed: --allow-ffi/);
  },
  perms,
);

test(
  "demo runs every example but _-prefixed ones under a heading and exits 1 when one fails",
  async () => {
    const dir = `${FIXTURES}demo`;
    const r = await cli(["--allow-read", "--allow-run"], [
      "demo",
      "--dir",
      dir,
    ]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(
      r.stdout,
      /=== fails ===[\s\S]*fails: about to fail[\s\S]*--- fails: FAILED, exit code 3/,
    );
    assert.match(
      r.stdout,
      /=== passes ===[\s\S]*passes: parent -> child: hello[\s\S]*--- passes: ok/,
    );
    assert.doesNotMatch(r.stdout, /HELPER|_helper/);
    assert.match(r.stdout, /1 of 2 examples passed; failed: fails/);

    const list = await cli(["--allow-read"], ["demo", "--list", "--dir", dir]);
    assert.equal(list.code, 0);
    assert.deepEqual(list.stdout.trim().split("\n"), ["fails", "passes"]);
  },
  perms,
);

test(
  "demo <name> runs only that example; an unknown name exits 2 with the list",
  async () => {
    const dir = `${FIXTURES}demo`;
    const one = await cli(["--allow-read", "--allow-run"], [
      "demo",
      "passes",
      "--dir",
      dir,
    ]);
    assert.equal(one.code, 0, one.stdout + one.stderr);
    assert.match(one.stdout, /=== passes ===/);
    assert.doesNotMatch(one.stdout, /=== fails ===/);
    assert.match(one.stdout, /1 of 1 examples passed/);

    const unknown = await cli(["--allow-read", "--allow-run"], [
      "demo",
      "nope",
      "--dir",
      dir,
    ]);
    assert.equal(unknown.code, 2);
    assert.match(
      unknown.stderr,
      /Unknown example: nope\. Examples: fails, passes/,
    );
  },
  perms,
);

test(
  "demo stops an example that outlives --timeout and exits 1",
  async () => {
    const r = await cli(["--allow-read", "--allow-run"], [
      "demo",
      "--dir",
      `${FIXTURES}demo_hang`,
      "--timeout",
      "1500",
    ]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(
      r.stdout,
      /hangs: started[\s\S]*--- hangs: FAILED, timed out after 1500 ms/,
    );
  },
  perms,
);

test(
  "demo random_byte runs the repository's example: a byte crosses from child to parent",
  async () => {
    const r = await cli(["--allow-read", "--allow-run"], [
      "demo",
      "random_byte",
    ]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /=== random_byte ===/);
    assert.match(
      r.stdout,
      /child -> parent through the pipe: 1 byte, value \d+/,
    );
  },
  perms,
);

test(
  "bench --quick --only spawn prints the machine and the table and writes valid JSON and SVG",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "conduit-bench-test-" });
    try {
      const json = `${dir}/bench.json`;
      const svg = `${dir}/bench.svg`;
      const md = `${dir}/bench.md`;
      const r = await cli(ALL, [
        "bench",
        "--quick",
        "--runs",
        "1",
        "--only",
        "spawn",
        "--json",
        json,
        "--svg",
        svg,
        "--markdown",
        md,
      ], 45_000);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(
        r.stdout,
        /^Machine: \d+ cores.*linux .* (x86_64|aarch64), Deno \d+\.\d+\.\d+/m,
      );
      assert.match(
        r.stdout,
        /^mechanism\s+figure\s+p50 µs\s+p99 µs\s+CPU µs\/msg\s+baseline/m,
      );
      // The date, the wake path and the machine under the table.
      assert.match(
        r.stdout,
        /^Measured \d{4}-\d\d-\d\d \d\d:\d\d UTC, wake path \S+.*\. Machine: \d+ cores/m,
      );
      assert.match(
        r.stdout,
        /spawn\(\) \+ status, \/bin\/true\s+[\d,.]+ µs.*Deno\.Command\(\)\.output\(\).*\d\.\d\d×/,
      );
      assert.doesNotMatch(r.stdout, /pipe\(\) reader/);
      // Progress goes to stderr, one line per step when it is not a terminal.
      assert.match(r.stderr, /\[spawn\.wait\] .*warm-up\n[\s\S]*run 1\/1/);

      const report = JSON.parse(await Deno.readTextFile(json));
      assert.equal(report.version, 1);
      assert.equal(report.machine.deno, Deno.version.deno);
      assert.equal(typeof report.wakePath.path, "string");
      assert.equal(typeof report.wakePath.reason, "string");
      assert.equal(typeof report.machine.kernel, "string");
      assert.ok(report.machine.cores >= 1);
      assert.deepEqual(report.options, {
        runs: 1,
        quick: true,
        areas: ["spawn"],
      });
      assert.deepEqual(report.failed, []);
      assert.equal(report.results.length, 1);
      const [spawnResult] = report.results;
      assert.equal(spawnResult.id, "spawn.wait");
      assert.equal(spawnResult.unit, "µs");
      assert.equal(spawnResult.higherIsBetter, false);
      assert.equal(spawnResult.samples.length, 1);
      assert.ok(
        spawnResult.value > 0 && spawnResult.p50 > 0 &&
          spawnResult.p99 >= spawnResult.p50,
      );
      assert.ok(spawnResult.baseline.value > 0);
      assert.ok(
        Math.abs(
          spawnResult.ratio - spawnResult.baseline.value / spawnResult.value,
        ) < 1e-9,
      );

      const table = await Deno.readTextFile(md);
      assert.match(table, /^\| mechanism \| figure \|/);
      assert.match(
        table,
        /\n\| spawn\(\) \+ status, \/bin\/true \| [\d,.]+ µs \|/,
      );
      assert.match(
        table,
        /\nMeasured \d{4}-\d\d-\d\d \d\d:\d\d UTC, wake path \S+.*\. Machine: \d+ cores.*1 runs after 1 warm-up, medians \(quick run\)\.\n/,
      );

      const chart = await Deno.readTextFile(svg);
      assert.match(
        chart,
        /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"[^>]*>/,
      );
      assert.ok(chart.trimEnd().endsWith("</svg>"));
      assert.equal([...chart.matchAll(/height="16"/g)].length, 2);
      assert.match(chart, /spawn\(\) \+ status/);
      assert.match(chart, /wake path \S+/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
  { ...perms, write: true },
);

test(
  "bench reports a failing case and a module that does not load, and exits 1",
  async () => {
    const r = await cli(ALL, ["bench", "--quick", "--dir", `${FIXTURES}bench`]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(
      r.stdout,
      /steady <echo> & co\s+11\.0 µs.*slow baseline\s+22\.0 µs.*2\.00×/,
    );
    assert.match(r.stdout, /FAILED broken\.case: the mechanism broke/);
    assert.match(
      r.stdout,
      /skipped unbuilt: does not load: .*not_built_yet\.ts/,
    );

    const only = await cli(ALL, [
      "bench",
      "--quick",
      "--dir",
      `${FIXTURES}bench`,
      "--only",
      "steady",
    ]);
    assert.equal(only.code, 0, only.stdout + only.stderr);
    assert.doesNotMatch(only.stdout, /broken|unbuilt/);
  },
  perms,
);

test(
  "bench exits 2 on fewer than 5 runs without --quick, a bad --runs or an unknown area",
  async () => {
    const cases: [string[], RegExp][] = [
      [["bench", "--runs", "3"], /at least 5 runs.*--quick/],
      [["bench", "--quick", "--runs", "0"], /Invalid --runs/],
      [["bench", "--quick", "--runs", "two"], /Invalid --runs/],
      [
        ["bench", "--quick", "--only", "nope"],
        /Unknown area: nope\. Areas: pipe, spawn, socketpair/,
      ],
      [["bench", "--frobnicate"], /Unknown option '--frobnicate'/],
    ];
    for (const [args, pattern] of cases) {
      const r = await cli(ALL, args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stdout} ${r.stderr}`);
      assert.match(r.stderr, pattern);
    }
  },
  perms,
);

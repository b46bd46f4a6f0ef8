/**
 * `deno task fuzz`: seeded fuzzing of every decoder of data from a peer
 * (the targets of `_fuzz.ts`), for as many cases as asked.
 *
 * ```
 * deno task fuzz [--cases 100000] [--seed N] [--target NAME] [--from I]
 *                [--stall 60]
 * ```
 *
 * The cases are shared among the targets by weight (or all go to
 * `--target`). The seed is random unless given, and printed first; a
 * failing case prints the seed and the command that runs it alone. The
 * cases run in a child process that reports its progress: one that makes
 * none for `--stall` seconds (a decoder that hangs) is killed, and the
 * cases it was in are named.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { spawn } from "../spawn.ts";
import { FuzzFailure, type Outcomes, runTarget, TARGETS } from "./_fuzz.ts";

const PROGRESS_EVERY = 250;

function fail(message: string): never {
  console.error(`fuzz: ${message}`);
  Deno.exit(2);
}

function integer(
  value: string | undefined,
  name: string,
  fallback: number,
  most: number,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > most) {
    fail(`--${name} must be an integer from 0 to ${most}, got ${value}`);
  }
  return n;
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    cases: { type: "string" },
    seed: { type: "string" },
    target: { type: "string" },
    from: { type: "string" },
    stall: { type: "string" },
    worker: { type: "boolean" },
  },
});

const seed = integer(
  values.seed,
  "seed",
  crypto.getRandomValues(new Uint32Array(1))[0],
  0xffff_ffff,
);
const cases = integer(values.cases, "cases", 100_000, 1e9);
const from = integer(values.from, "from", 0, 1e9);
const stall = integer(values.stall, "stall", 60, 86_400);
if (
  values.target !== undefined &&
  !TARGETS.some((t) => t.name === values.target)
) {
  fail(
    `no target ${values.target}; the targets are ${
      TARGETS.map((t) => t.name).join(", ")
    }`,
  );
}
if (values.target === undefined && values.from !== undefined) {
  fail("--from needs --target");
}

/** Each target's share of the cases. */
function plan(): [string, number][] {
  if (values.target !== undefined) return [[values.target, cases]];
  const total = TARGETS.reduce((n, t) => n + t.weight, 0);
  const shares = TARGETS.map((t): [string, number] => [
    t.name,
    Math.floor(cases * t.weight / total),
  ]);
  shares[0][1] += cases - shares.reduce((n, [, c]) => n + c, 0);
  return shares;
}

/** The child: runs the cases, printing progress and outcomes as lines. */
async function worker(): Promise<void> {
  for (const [name, count] of plan()) {
    const target = TARGETS.find((t) => t.name === name)!;
    const outcomes: Outcomes = await runTarget(
      target,
      seed,
      count,
      from,
      (i) => {
        if ((i - from) % PROGRESS_EVERY === 0) console.log(`at ${name} ${i}`);
      },
    );
    console.log(`done ${name} ${count} ${JSON.stringify(outcomes)}`);
  }
}

/** The parent: runs the child and watches its progress. */
async function main(): Promise<number> {
  const started = performance.now();
  console.log(
    `fuzz: seed ${seed}, ${cases} cases` +
      (values.target ? ` of ${values.target} from case ${from}` : "") +
      ` (rerun with --seed ${seed})`,
  );
  const args = [
    "run",
    "--allow-ffi",
    "--allow-read",
    // The poller's wake path may be forced (CI fuzzes both).
    "--allow-env=CONDUIT_IPC_WAKE",
    new URL(import.meta.url).pathname,
    "--worker",
    "--seed",
    String(seed),
    "--cases",
    String(cases),
    ...(values.target
      ? ["--target", values.target, "--from", String(from)]
      : []),
  ];
  await using child = spawn(Deno.execPath(), {
    args,
    stdin: "null",
    stdout: "piped",
  });
  let where = "before the first case";
  let rerun = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stalled = false;
  const watch = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      stalled = true;
      child.kill("SIGKILL");
    }, stall * 1000);
  };
  watch();
  let total = 0;
  try {
    const lines = child.stdout
      .pipeThrough(new TextDecoderStream())
      .pipeThrough(lineSplitter());
    for await (const line of lines) {
      watch();
      const [kind, name, n, rest] = line.split(" ");
      if (kind === "at") {
        where = `in target ${name}, cases ${n} to ${
          Number(n) + PROGRESS_EVERY - 1
        }`;
        rerun =
          `deno task fuzz --seed ${seed} --target ${name} --from ${n} --cases ${PROGRESS_EVERY}`;
      } else if (kind === "done") {
        total += Number(n);
        console.log(`  ${name}: ${n} cases, ${rest}`);
      }
    }
  } finally {
    clearTimeout(timer);
  }
  const status = await child.status;
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  if (stalled) {
    console.error(
      `fuzz: FAILED, no progress for ${stall} s ${where} (seed ${seed}); rerun: ${rerun}`,
    );
    return 1;
  }
  if (!status.success) {
    console.error(
      `fuzz: FAILED ${where} (seed ${seed}, exit ${status.code}); see above`,
    );
    return 1;
  }
  console.log(`fuzz: ${total} cases passed in ${seconds} s (seed ${seed})`);
  return 0;
}

function lineSplitter(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, controller) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      for (const part of parts) controller.enqueue(part);
    },
    flush(controller) {
      if (rest !== "") controller.enqueue(rest);
    },
  });
}

if (values.worker) {
  try {
    await worker();
  } catch (error) {
    if (!(error instanceof FuzzFailure)) throw error;
    const cause = error.cause as Error | undefined;
    console.error(`${error.message}\n${cause?.stack ?? cause}`);
    Deno.exit(1);
  }
} else {
  Deno.exit(await main());
}

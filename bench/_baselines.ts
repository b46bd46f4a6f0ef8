/**
 * The baselines every cross-process benchmark compares against, shared by
 * the area files (`bench/*_bench.ts`):
 *
 * - {@linkcode runs}: one warm-up run, then `options.runs` measured runs, with
 *   progress reporting.
 * - {@linkcode commandStdout}: `Deno.Command` stdout read with a BYOB reader
 *   reusing one buffer (the same read style as {@linkcode readAllByob} uses on
 *   the module's streams, so the comparison is fair).
 * - {@linkcode ddWriter}: the writer for every throughput figure, `dd bs=1M`.
 * - {@linkcode timeRoundTrips}: times round trips through any
 *   {@linkcode Echo} (a child that echoes), one after another or paced, with
 *   the CPU time per message of both processes.
 * - {@linkcode forkEcho} and {@linkcode forkPingPong}: `node:child_process`
 *   `fork()` IPC round trips, `"json"` or `"advanced"` serialization.
 * - {@linkcode forkCount}: `fork()` IPC messages per second, one way, into a
 *   child that counts them.
 * - {@linkcode cThroughput} and {@linkcode cPingPong}: the machine's raw limit,
 *   from bench/c/baseline.c built with `cc` into bench/.build/ on first use
 *   (`null` when there is no C compiler).
 *
 * @example A throughput case against Deno.Command stdout
 * ```ts
 * import { commandStdout, ddWriter, runs } from "./_baselines.ts";
 * import { result } from "./_report.ts";
 * import type { BenchCase } from "./_types.ts";
 *
 * export const cases: BenchCase[] = [{
 *   id: "example.stream",
 *   area: "example",
 *   async run(options) {
 *     const mib = options.quick ? 64 : 1024;
 *     const base: number[] = [];
 *     await runs(options, "example stream", async (measured) => {
 *       const writer = ddWriter(mib);
 *       const r = await commandStdout(writer.cmd, writer.args);
 *       if (measured) base.push(r.mibps);
 *     });
 *     return [result({
 *       id: "example.stream",
 *       mechanism: "Deno.Command stdout",
 *       unit: "MiB/s",
 *       higherIsBetter: true,
 *       samples: base,
 *     })];
 *   },
 * }];
 * ```
 *
 * @module
 */

import { type ChildProcess as ForkedChild, fork } from "node:child_process";
import type { ChildProcess } from "../spawn.ts";
import { CPU_QUESTION, cpuUs } from "./_cpu.ts";
import { percentile, result } from "./_report.ts";
import type {
  BenchCase,
  BenchOptions,
  BenchResult,
  CpuPerMessage,
} from "./_types.ts";

/** 1 MiB: the writer's block and the readers' buffer. */
export const MIB = 1 << 20;

/**
 * Runs `once` for one warm-up run (`measured` false) and then
 * `options.runs` measured runs (`measured` true), reporting progress as
 * `"<label>: warm-up"` and `"<label>: run 3/5"`.
 *
 * Measure the mechanism and its baseline inside the same `once`, so both
 * see the same machine state, and alternate their order by `run` (0 for the
 * warm-up, then 1, 2, ...) to cancel out order effects.
 *
 * @param options The runner's options.
 * @param label What is being measured, for the progress line.
 * @param once One run.
 */
export async function runs(
  options: BenchOptions,
  label: string,
  once: (measured: boolean, run: number) => Promise<void>,
): Promise<void> {
  options.progress(`${label}: warm-up`);
  await once(false, 0);
  for (let i = 1; i <= options.runs; i++) {
    options.progress(`${label}: run ${i}/${options.runs}`);
    await once(true, i);
  }
}

/**
 * {@linkcode runs} over steps that each measure one mechanism: the steps run
 * in the given order on even runs (the warm-up is run 0) and in reverse on
 * odd runs, to cancel out order effects.
 *
 * @param options The runner's options.
 * @param label What is being measured, for the progress line.
 * @param steps One step per mechanism; `measured` is false in the warm-up.
 * @param around Wraps each whole run (every step of it), such as
 *   `withLoad` from bench/_load.ts, so all steps share its conditions.
 */
export async function alternating(
  options: BenchOptions,
  label: string,
  steps: ((measured: boolean) => Promise<void>)[],
  around?: (run: () => Promise<void>) => Promise<void>,
): Promise<void> {
  await runs(options, label, async (measured, run) => {
    const order = run % 2 === 1 ? [...steps].reverse() : steps;
    const all = async () => {
      for (const step of order) await step(measured);
    };
    if (around === undefined) await all();
    else await around(all);
  });
}

/**
 * Round-trip figures of one mechanism over the measured runs: the median of
 * each run's round trips, every round trip for p50 and p99, and each run's
 * CPU time per round trip.
 */
export class RoundTrips {
  /** One median per measured run, µs. */
  readonly samples: number[] = [];
  /** Every round trip of every measured run, µs. */
  readonly operations: number[] = [];
  /** CPU time per round trip of both processes, one per measured run. */
  readonly cpu: CpuPerMessage[] = [];

  /**
   * Records one run.
   *
   * @param run Every round trip of the run and its CPU time.
   */
  add(run: { rtts: number[]; cpu?: CpuPerMessage }): void {
    this.samples.push(percentile(run.rtts, 50));
    this.operations.push(...run.rtts);
    if (run.cpu !== undefined) this.cpu.push(run.cpu);
  }
}

/**
 * MiB per second.
 *
 * @param bytes Bytes moved.
 * @param ms Milliseconds it took.
 * @returns The throughput.
 */
export function mibPerSecond(bytes: number, ms: number): number {
  return bytes / MIB / (ms / 1000);
}

/**
 * Reads a byte stream to its end with one BYOB reader, reusing a single
 * buffer, and returns how many bytes came through. Works for the module's
 * streams (`reader.readable`, socket `readable`) and for `Deno.Command`
 * stdout alike.
 *
 * @param stream A `ReadableStream` of type "bytes".
 * @param bufferSize The buffer size. Default 1 MiB.
 * @returns The byte count.
 */
export async function readAllByob(
  stream: ReadableStream<Uint8Array>,
  bufferSize: number = MIB,
): Promise<number> {
  const reader = stream.getReader({ mode: "byob" });
  let buffer: ArrayBuffer = new ArrayBuffer(bufferSize);
  let total = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read(new Uint8Array(buffer));
      if (done) break;
      total += value.byteLength;
      buffer = value.buffer as ArrayBuffer;
    }
  } finally {
    reader.releaseLock();
  }
  return total;
}

/** How {@linkcode childThroughput} starts a writer child and reads it. */
export interface ChildWriter {
  /** The writer, for the error when it fails, such as `"dd"`. */
  name: string;
  /**
   * The child's end, closed once the child is spawned (the child holds its
   * own copy), so the stream ends when the child exits.
   */
  childEnd: { close(): void };
  /** Spawns the writer with `childEnd`. */
  spawn(): ChildProcess;
  /** Reads the parent's end to its end and returns the byte count. */
  read(): Promise<number>;
  /** Closes the parent's end. */
  close(): void;
}

/**
 * Times bytes from a writer child to the parent, from `start` (taken before
 * the ends are made) to the last byte, and checks that the child succeeded.
 *
 * @param start `performance.now()` when the measurement began.
 * @param writer How to spawn and read the writer.
 * @returns Bytes, time and throughput.
 */
export async function childThroughput(
  start: number,
  writer: ChildWriter,
): Promise<Throughput> {
  let child;
  try {
    child = writer.spawn();
  } finally {
    writer.childEnd.close();
  }
  try {
    const bytes = await writer.read();
    const ms = performance.now() - start;
    const status = await child.status;
    if (!status.success) {
      throw new Error(`${writer.name} exited with ${status.code}`);
    }
    return { bytes, ms, mibps: mibPerSecond(bytes, ms) };
  } finally {
    writer.close();
    await child[Symbol.asyncDispose]();
  }
}

/**
 * Throws unless `got` bytes are exactly `mib` MiB.
 *
 * @param what The mechanism, for the message.
 * @param got Bytes moved.
 * @param mib MiB expected.
 */
export function expectBytes(what: string, got: number, mib: number): void {
  if (got !== mib * MIB) {
    throw new Error(`${what} moved ${got} bytes, expected ${mib * MIB}`);
  }
}

/** The figures of a {@linkcode ddStreamCase} that differ by mechanism. */
export interface DdStreamCase {
  /** The case id and the id of its main figure, such as `"pipe.stream"`. */
  id: string;
  /** The area, also the progress label's first word. */
  area: string;
  /** The mechanism's name in byte-count errors, such as `"pipe()"`. */
  name: string;
  /** One measurement of `mib` MiB from `dd bs=1M` through the mechanism. */
  once(mib: number): Promise<Throughput>;
  /** The main figure's mechanism for a size such as `"1 GiB"`. */
  mechanism(size: string): string;
  /** The C limit's kind, id, mechanism and baseline mechanism. */
  c: {
    kind: "pipe" | "socketpair";
    id: string;
    mechanism(size: string): string;
    baseline: string;
  };
}

/**
 * A throughput case: 1 GiB (64 MiB with --quick) from `dd bs=1M` through the
 * mechanism, against `Deno.Command` stdout of the same `dd` and, when a C
 * compiler exists, a C read()/write() loop with 1 MiB blocks (the machine's
 * limit). The three alternate inside every run.
 *
 * @param spec What differs by mechanism.
 * @returns The case.
 */
export function ddStreamCase(spec: DdStreamCase): BenchCase {
  return {
    id: spec.id,
    area: spec.area,
    async run(options) {
      const mib = options.quick ? 64 : 1024;
      const size = mib >= 1024 ? `${mib / 1024} GiB` : `${mib} MiB`;
      const mine: number[] = [];
      const theirs: number[] = [];
      const limit: number[] = [];
      let hasC = true;
      await alternating(options, `${spec.area} ${size}`, [
        async (measured) => {
          const r = await spec.once(mib);
          expectBytes(spec.name, r.bytes, mib);
          if (measured) mine.push(r.mibps);
        },
        async (measured) => {
          const dd = ddWriter(mib);
          const r = await commandStdout(dd.cmd, dd.args, MIB);
          expectBytes("Deno.Command stdout", r.bytes, mib);
          if (measured) theirs.push(r.mibps);
        },
        async (measured) => {
          if (!hasC) return;
          const r = await cThroughput(spec.c.kind, mib * MIB, MIB, MIB);
          if (r === null) hasC = false;
          else if (measured) limit.push(r.mibps);
        },
      ]);
      const out: BenchResult[] = [result({
        id: spec.id,
        mechanism: spec.mechanism(size),
        unit: "MiB/s",
        higherIsBetter: true,
        samples: mine,
        baseline: {
          mechanism: "Deno.Command stdout BYOB, same dd",
          samples: theirs,
        },
      })];
      if (hasC && limit.length > 0) {
        out.push(result({
          id: spec.c.id,
          mechanism: spec.c.mechanism(size),
          unit: "MiB/s",
          higherIsBetter: true,
          samples: mine,
          baseline: { mechanism: spec.c.baseline, samples: limit },
        }));
      }
      return out;
    },
  };
}

/** A command line: program and arguments. */
export interface CommandLine {
  /** The program. */
  cmd: string;
  /** Its arguments. */
  args: string[];
}

/**
 * The writer of every throughput figure: `dd` writing `mib` MiB of zeros,
 * 1 MiB per write, to stdout or to `output` (such as `/dev/fd/3`).
 *
 * @param mib How many MiB to write.
 * @param output Where to write. Default stdout.
 * @returns The command line.
 */
export function ddWriter(mib: number, output?: string): CommandLine {
  const args = ["if=/dev/zero", "bs=1M", `count=${mib}`, "status=none"];
  if (output !== undefined) args.push(`of=${output}`);
  return { cmd: "dd", args };
}

/** A throughput measurement. */
export interface Throughput {
  /** Bytes read. */
  bytes: number;
  /** Milliseconds from spawn to the end of the stream. */
  ms: number;
  /** MiB per second. */
  mibps: number;
}

/**
 * The `Deno.Command` baseline: spawns `cmd` with stdout piped and reads it to
 * the end with a BYOB reader reusing one buffer. The time runs from spawn to
 * the last byte, like the module's own figures.
 *
 * @param cmd The writer program, such as `dd`.
 * @param args Its arguments.
 * @param bufferSize The read buffer. Default 1 MiB.
 * @returns Bytes, time and throughput; throws if the writer fails.
 */
export async function commandStdout(
  cmd: string,
  args: string[],
  bufferSize: number = MIB,
): Promise<Throughput> {
  const start = performance.now();
  const child = new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const bytes = await readAllByob(child.stdout, bufferSize);
  const ms = performance.now() - start;
  const status = await child.status;
  if (!status.success) {
    throw new Error(
      `Cannot measure Deno.Command stdout: ${cmd} exited with ${status.code}`,
    );
  }
  return { bytes, ms, mibps: mibPerSecond(bytes, ms) };
}

/**
 * A child that echoes, as the round-trip benchmarks drive it: one round trip
 * at a time, a query for the child's own CPU time, and the end.
 */
export interface Echo {
  /** One round trip of message `i`; throws when the answer is wrong. */
  roundTrip(i: number): Promise<void>;
  /**
   * The child's CPU time so far, µs: its own `getrusage(RUSAGE_SELF)`,
   * asked for over the same mechanism outside the timed round trips.
   */
  childCpuUs(): Promise<number>;
  /** Ends the child and waits for it; throws when it failed. */
  close(): Promise<void>;
}

/** Round trips between two processes. */
export interface PingPong {
  /** Every round trip in µs, in order. */
  rtts: number[];
  /** Wall-clock seconds for all round trips (pauses included when paced). */
  seconds: number;
  /** Round trips per second. */
  msgPerSec: number;
  /** CPU time per round trip of both processes, µs. */
  cpu: CpuPerMessage;
}

/** Resolves after `ms` milliseconds. */
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Times `count` round trips through `echo`. Without `intervalMs` they run
 * one after another; with it, round trip `i` starts at `i * intervalMs` ms
 * after the first (or at once when late) and both processes idle in
 * between: paced traffic. The CPU time per round trip of each process covers
 * the whole window, pauses included.
 *
 * @param echo The child.
 * @param count Round trips.
 * @param intervalMs The pace, or 0 for back to back. Default 0.
 * @returns Every round trip, the rate and the CPU time per round trip.
 */
export async function timeRoundTrips(
  echo: Echo,
  count: number,
  intervalMs = 0,
): Promise<PingPong> {
  const child0 = await echo.childCpuUs();
  const parent0 = cpuUs();
  const rtts = new Array<number>(count);
  const start = performance.now();
  for (let i = 0; i < count; i++) {
    if (intervalMs > 0) {
      const wait = start + i * intervalMs - performance.now();
      if (wait > 0) await sleep(wait);
    }
    const t0 = performance.now();
    await echo.roundTrip(i);
    rtts[i] = (performance.now() - t0) * 1000;
  }
  const seconds = (performance.now() - start) / 1000;
  const parent1 = cpuUs();
  const child1 = await echo.childCpuUs();
  return {
    rtts,
    seconds,
    msgPerSec: count / seconds,
    cpu: {
      parent: (parent1 - parent0) / count,
      child: (child1 - child0) / count,
    },
  };
}

/**
 * Starts an echo child, times round trips through it (see
 * {@linkcode timeRoundTrips}) and ends it, also when the timing fails.
 *
 * @param start Starts the child; the first round trip (start-up) is done.
 * @param count Round trips.
 * @param intervalMs The pace, or 0 for back to back. Default 0.
 * @param warmUp Round trips at the same pace before those timed, not
 * counted. Default 0.
 * @param backToBack Round trips back to back before the warm-up, not
 * counted. Default 0.
 * @returns The figures of the timed round trips.
 */
export async function measureRoundTrips(
  start: () => Promise<Echo>,
  count: number,
  intervalMs = 0,
  warmUp = 0,
  backToBack = 0,
): Promise<PingPong> {
  const echo = await start();
  let out: PingPong;
  try {
    if (backToBack > 0) await timeRoundTrips(echo, backToBack, 0);
    if (warmUp > 0) await timeRoundTrips(echo, warmUp, intervalMs);
    out = await timeRoundTrips(echo, count, intervalMs);
  } catch (error) {
    await echo.close().catch(() => {});
    throw error;
  }
  await echo.close();
  return out;
}

/** `fork()` serialization: `"json"` (the default) or `"advanced"`. */
export type Serialization = "json" | "advanced";

/** What `ChildProcess#send()` of `node:child_process` takes. */
type Sendable = Parameters<ForkedChild["send"]>[0];

const FORK_CHILD = new URL("./_fork_echo.ts", import.meta.url);

/** Forks bench/_fork_echo.ts in `mode` and waits until it says it is ready. */
async function forkChild(
  serialization: Serialization,
  args: string[],
): Promise<{ child: ForkedChild; exited: Promise<number | null> }> {
  const child = fork(FORK_CHILD.pathname, args, {
    serialization,
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once("exit", (code) => resolve(code));
    child.once("error", reject);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      child.once("message", () => resolve());
      child.once(
        "exit",
        () => reject(new Error("The fork() child exited early")),
      );
    });
  } catch (error) {
    await exited.catch(() => {});
    throw error;
  }
  return { child, exited };
}

/** Disconnects a forked child and waits for it to exit. */
async function endFork(
  child: ForkedChild,
  exited: Promise<number | null>,
): Promise<void> {
  if (child.connected) child.disconnect();
  const code = await exited;
  if (code !== 0) throw new Error(`The fork() child exited with ${code}`);
}

/** Reads the CPU figure out of a fork child's answer. */
function cpuAnswer(message: unknown): number {
  const us = (message as { cpuUs?: unknown } | null)?.cpuUs;
  if (typeof us !== "number" || !Number.isFinite(us) || us < 0) {
    throw new Error("The fork() child answered the CPU query wrongly");
  }
  return us;
}

/** Options for {@linkcode forkEcho}. */
export interface ForkEchoOptions {
  /** `fork()` serialization. */
  serialization: Serialization;
  /** The message sent and echoed. Default a 64-character string. */
  payload?: unknown;
}

/**
 * The `node:child_process` `fork()` IPC baseline as an {@linkcode Echo}:
 * forks an echo child (bench/_fork_echo.ts) and waits until it is ready.
 * One `"message"` listener serves every round trip.
 *
 * @param options Serialization and payload.
 * @returns The echo.
 */
export async function forkEcho(options: ForkEchoOptions): Promise<Echo> {
  const payload = options.payload ?? "x".repeat(64);
  const { child, exited } = await forkChild(options.serialization, ["echo"]);
  // One pending question at a time; the child's exit fails it, so no
  // round trip pays for a race against the exit.
  let pending:
    | { resolve(message: unknown): void; reject(error: Error): void }
    | undefined;
  let gone = false;
  child.on("message", (message: unknown) => {
    const waiter = pending;
    pending = undefined;
    waiter?.resolve(message);
  });
  child.once("exit", () => {
    gone = true;
    const waiter = pending;
    pending = undefined;
    waiter?.reject(
      new Error("The fork() child exited during the round trips"),
    );
  });
  const ask = (message: unknown) =>
    new Promise<unknown>((resolve, reject) => {
      if (gone) {
        reject(new Error("The fork() child has exited"));
        return;
      }
      pending = { resolve, reject };
      child.send(message as Sendable);
    });
  return {
    async roundTrip() {
      await ask(payload);
    },
    async childCpuUs() {
      return cpuAnswer(await ask({ cpu: CPU_QUESTION }));
    },
    close: () => endFork(child, exited),
  };
}

/** Options for {@linkcode forkPingPong}. */
export interface ForkPingPongOptions extends ForkEchoOptions {
  /** Round trips. */
  count: number;
  /** Start one round trip every so many ms (paced); 0 for back to back. */
  intervalMs?: number;
}

/**
 * The `node:child_process` `fork()` IPC baseline: forks an echo child
 * (bench/_fork_echo.ts), waits until it is ready, then times `count` round
 * trips of `payload` (see {@linkcode timeRoundTrips}).
 *
 * @param options Serialization, count, payload and pace.
 * @returns Every round trip, the rate and the CPU time per round trip.
 */
export function forkPingPong(options: ForkPingPongOptions): Promise<PingPong> {
  return measureRoundTrips(
    () => forkEcho(options),
    options.count,
    options.intervalMs ?? 0,
  );
}

/** Messages sent one way into a child that counts them. */
export interface OneWay {
  /** Messages per second, from the first send to the child's count. */
  msgPerSec: number;
  /** CPU time per message of both processes, µs. */
  cpu: CpuPerMessage;
}

/**
 * `fork()` IPC one way: sends `count` messages to a child
 * (bench/_fork_echo.ts `count`) that counts them in its `"message"` handler
 * and answers with the count and its CPU time once it has them all. The
 * time runs from the first send to that answer.
 *
 * @param serialization `fork()` serialization.
 * @param count Messages.
 * @param payload The message. Default a 64-character string.
 * @returns The rate and the CPU time per message.
 */
export async function forkCount(
  serialization: Serialization,
  count: number,
  payload: unknown = "x".repeat(64),
): Promise<OneWay> {
  const { child, exited } = await forkChild(serialization, [
    "count",
    String(count),
  ]);
  try {
    const next = () =>
      new Promise<unknown>((resolve, reject) => {
        child.once("message", resolve);
        exited.then(() =>
          reject(new Error("The fork() child exited before it answered"))
        );
      });
    let reply = next();
    child.send({ cpu: CPU_QUESTION });
    const child0 = cpuAnswer(await reply);
    reply = next();
    const parent0 = cpuUs();
    const start = performance.now();
    for (let i = 0; i < count; i++) child.send(payload as Sendable);
    const done = await reply as { seen?: unknown };
    const seconds = (performance.now() - start) / 1000;
    const parent1 = cpuUs();
    if (done?.seen !== count) {
      throw new Error(
        `The fork() child counted ${done?.seen} messages, expected ${count}`,
      );
    }
    return {
      msgPerSec: count / seconds,
      cpu: {
        parent: (parent1 - parent0) / count,
        child: (cpuAnswer(done) - child0) / count,
      },
    };
  } finally {
    await endFork(child, exited);
  }
}

const C_SOURCE = new URL("./c/baseline.c", import.meta.url);
const C_BINARY = new URL("./.build/baseline", import.meta.url);
let built: Promise<string | null> | undefined;

/**
 * The C compiler the C baselines are built with: `$CC`, else the first of
 * `cc`, `gcc`, `clang` that runs, else `null`.
 *
 * @returns The compiler command, or `null`.
 */
export async function findCompiler(): Promise<string | null> {
  const env = Deno.env.get("CC");
  const candidates = env ? [env] : ["cc", "gcc", "clang"];
  for (const cc of candidates) {
    try {
      const { success } = await new Deno.Command(cc, {
        args: ["--version"],
        stdout: "null",
        stderr: "null",
      }).output();
      if (success) return cc;
    } catch {
      // Not installed: try the next one.
    }
  }
  return null;
}

/**
 * Builds bench/c/baseline.c into bench/.build/baseline with `-O2` once per
 * process, and again only when the source is newer than the binary.
 *
 * @returns The binary's path, or `null` when there is no C compiler.
 */
export function buildCBaseline(): Promise<string | null> {
  return built ??= (async () => {
    const cc = await findCompiler();
    if (cc === null) return null;
    const source = await Deno.stat(C_SOURCE);
    const binary = await Deno.stat(C_BINARY).catch(() => null);
    if (
      binary === null || (binary.mtime?.getTime() ?? 0) <
        (source.mtime?.getTime() ?? Infinity)
    ) {
      await Deno.mkdir(new URL("./", C_BINARY), { recursive: true });
      const { success, stderr } = await new Deno.Command(cc, {
        args: ["-O2", "-o", C_BINARY.pathname, C_SOURCE.pathname],
        stdout: "null",
        stderr: "piped",
      }).output();
      if (!success) {
        throw new Error(
          `Cannot build the C baseline with ${cc}: ${
            new TextDecoder().decode(stderr)
          }`,
        );
      }
    }
    return C_BINARY.pathname;
  })();
}

async function runC(args: string[]): Promise<Record<string, number>> {
  const binary = await buildCBaseline();
  if (binary === null) {
    throw new Error("Cannot run the C baseline: no C compiler");
  }
  const { success, stdout, stderr } = await new Deno.Command(binary, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!success) {
    throw new Error(
      `The C baseline failed: ${new TextDecoder().decode(stderr).trim()}`,
    );
  }
  return JSON.parse(new TextDecoder().decode(stdout));
}

/**
 * The raw throughput limit of the machine: a C child writes `bytes` in
 * `chunk`-sized blocking writes, a C parent reads them with a `chunk` buffer.
 *
 * @param kind `"pipe"` or `"socketpair"` (SOCK_STREAM).
 * @param bytes Bytes to move.
 * @param chunk Write and read size. Default 1 MiB.
 * @param capacity For pipes, the `F_SETPIPE_SZ` capacity. Default 1 MiB.
 * @returns The figure, or `null` when there is no C compiler.
 */
export async function cThroughput(
  kind: "pipe" | "socketpair",
  bytes: number,
  chunk: number = MIB,
  capacity: number = MIB,
): Promise<Throughput | null> {
  if ((await buildCBaseline()) === null) return null;
  const args = ["throughput", kind, String(bytes), String(chunk)];
  if (kind === "pipe") args.push(String(capacity));
  const out = await runC(args);
  return { bytes: out.bytes, ms: out.seconds * 1000, mibps: out.mibps };
}

/** C round trips: percentiles are computed in C over every round trip. */
export interface CPingPong {
  /** 50th percentile round trip, µs. */
  p50: number;
  /** 99th percentile round trip, µs. */
  p99: number;
  /** Round trips per second. */
  msgPerSec: number;
}

/**
 * The raw round-trip limit of the machine: a C parent sends `size` bytes, a
 * forked C child echoes them, `count` times, with blocking reads.
 *
 * @param kind `"seqpacket"` or `"stream"` socketpair, or `"pipe"` (two pipes).
 * @param count Round trips.
 * @param size Message size in bytes. Default 64.
 * @returns The figure, or `null` when there is no C compiler.
 */
export async function cPingPong(
  kind: "seqpacket" | "stream" | "pipe",
  count: number,
  size = 64,
): Promise<CPingPong | null> {
  if ((await buildCBaseline()) === null) return null;
  const out = await runC(["pingpong", kind, String(count), String(size)]);
  return { p50: out.p50_us, p99: out.p99_us, msgPerSec: out.msgps };
}

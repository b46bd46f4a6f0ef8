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
 * - {@linkcode forkPingPong}: `node:child_process` `fork()` IPC round trips,
 *   `"json"` or `"advanced"` serialization.
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

import { fork } from "node:child_process";
import type { BenchOptions } from "./_types.ts";

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

/** Round trips between two processes. */
export interface PingPong {
  /** Every round trip in µs, in order. */
  rtts: number[];
  /** Wall-clock seconds for all round trips. */
  seconds: number;
  /** Round trips per second. */
  msgPerSec: number;
}

/** Options for {@linkcode forkPingPong}. */
export interface ForkPingPongOptions {
  /** `fork()` serialization: `"json"` or `"advanced"` (structured clone). */
  serialization: "json" | "advanced";
  /** Round trips. */
  count: number;
  /** The message sent and echoed. Default a 64-character string. */
  payload?: unknown;
}

const FORK_CHILD = new URL("./_fork_echo.ts", import.meta.url);

/**
 * The `node:child_process` `fork()` IPC baseline: forks an echo child
 * (bench/_fork_echo.ts), waits until it is ready, then times `count` round
 * trips of `payload` one after another.
 *
 * @param options Serialization, count and payload.
 * @returns Every round trip and the rate.
 */
export async function forkPingPong(
  options: ForkPingPongOptions,
): Promise<PingPong> {
  const payload = options.payload ?? "x".repeat(64);
  const child = fork(FORK_CHILD.pathname, [], {
    serialization: options.serialization,
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
    const rtts = new Array<number>(options.count);
    const start = performance.now();
    for (let i = 0; i < options.count; i++) {
      const t0 = performance.now();
      await new Promise<void>((resolve) => {
        child.once("message", () => resolve());
        child.send(payload);
      });
      rtts[i] = (performance.now() - t0) * 1000;
    }
    const seconds = (performance.now() - start) / 1000;
    return { rtts, seconds, msgPerSec: options.count / seconds };
  } finally {
    if (child.connected) child.disconnect();
    await exited;
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

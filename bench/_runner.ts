/**
 * The benchmark runner behind `cli.ts bench`: finds the area files
 * (`bench/<area>_bench.ts`) that exist, runs their cases with a progress
 * line, prints the machine and the table, and writes the JSON report and the
 * SVG chart. Areas whose file does not load are skipped and named in the
 * report.
 *
 * It lives in bench/ (not published) and `cli.ts` loads it on demand, so the
 * published command line stays free of benchmark code.
 *
 * @example Run the spawn area quickly
 * ```ts
 * import { runBench } from "./_runner.ts";
 *
 * const code = await runBench({ runs: 1, quick: true, only: ["spawn"] });
 * Deno.exit(code);
 * ```
 *
 * @module
 */

import { findCompiler } from "./_baselines.ts";
import {
  type BenchReport,
  CPU_NOTE,
  type FailedCase,
  formatDate,
  formatMachine,
  formatMarkdown,
  formatRunLine,
  formatTable,
  formatWakePath,
  type MachineInfo,
  renderSvg,
  type SkippedArea,
  toJson,
} from "./_report.ts";
import type { BenchCase, BenchResult } from "./_types.ts";
import { currentWakePath } from "./_wake.ts";

/**
 * The order of the areas in the report (the published table's); an area
 * not listed comes after them, by name.
 */
export const AREA_ORDER: readonly string[] = [
  "pipe",
  "spawn",
  "socketpair",
  "channel",
  "nats",
  "shm",
  "sync",
];

/** Options of one benchmark run. */
export interface RunnerOptions {
  /** Measured runs per case, after one warm-up run. */
  runs: number;
  /** Smaller payloads, for smoke runs and tests. */
  quick: boolean;
  /** Only these areas (all when empty). */
  only: string[];
  /** Where to write the JSON report. */
  json?: string;
  /** Where to write the SVG chart. */
  svg?: string;
  /** Where to write the table as Markdown, with the machine line. */
  markdown?: string;
  /** The directory of the area files. Default bench/. */
  dir?: URL;
}

/** An area file found in bench/. */
export interface AreaFile {
  /** The area, such as `"pipe"`. */
  area: string;
  /** The file's URL. */
  url: URL;
}

const BENCH_DIR = new URL("./", import.meta.url);

/**
 * Lists the area files in a directory (`<area>_bench.ts`) in
 * {@linkcode AREA_ORDER}, then the rest by name.
 *
 * @param dir The directory. Default this file's (bench/).
 * @returns The areas found.
 */
export async function discoverAreas(dir: URL = BENCH_DIR): Promise<AreaFile[]> {
  const found: AreaFile[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const match = /^([a-z0-9][a-z0-9_-]*)_bench\.ts$/.exec(entry.name);
    if (entry.isFile && match) {
      found.push({ area: match[1], url: new URL(entry.name, dir) });
    }
  }
  const rank = (area: string) => {
    const i = AREA_ORDER.indexOf(area);
    return i === -1 ? AREA_ORDER.length : i;
  };
  return found.sort((a, b) =>
    rank(a.area) - rank(b.area) || a.area.localeCompare(b.area)
  );
}

async function kernel(): Promise<string> {
  try {
    return Deno.osRelease();
  } catch {
    try {
      const out = await new Deno.Command("uname", { args: ["-r"] }).output();
      return new TextDecoder().decode(out.stdout).trim() || "unknown";
    } catch {
      return "unknown";
    }
  }
}

async function cpuModel(): Promise<string | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile("/proc/cpuinfo");
  } catch {
    // Deno asks for --allow-all to read /proc directly; cat needs only --allow-run.
    try {
      const out = await new Deno.Command("cat", { args: ["/proc/cpuinfo"] })
        .output();
      text = new TextDecoder().decode(out.stdout);
    } catch {
      return undefined;
    }
  }
  return /^model name\s*:\s*(.+)$/m.exec(text)?.[1].trim();
}

/**
 * Describes this machine: cores, CPU, kernel, Deno and V8 versions, memory
 * and the C compiler. Anything the permissions do not let it read is left
 * out.
 *
 * @returns The machine.
 */
export async function machineInfo(): Promise<MachineInfo> {
  const info: MachineInfo = {
    cores: navigator.hardwareConcurrency,
    cpu: await cpuModel(),
    kernel: await kernel(),
    os: Deno.build.os,
    arch: Deno.build.arch,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
  };
  try {
    info.memoryGiB = Deno.systemMemoryInfo().total / 2 ** 30;
  } catch {
    // Needs --allow-sys.
  }
  const cc = await findCompiler().catch(() => null);
  if (cc !== null) info.cc = cc;
  return info;
}

/** Writes the progress line: redrawn in place on a terminal, one line otherwise. */
class Progress {
  #tty = Deno.stderr.isTerminal();
  #encoder = new TextEncoder();
  #shown = false;

  show(text: string): void {
    if (this.#tty) {
      let width = 100;
      try {
        width = Deno.consoleSize().columns || width;
      } catch {
        // No terminal size known: keep the default.
      }
      const line = [...text].slice(0, Math.max(10, width - 1)).join("");
      this.#write(`\r\x1b[2K${line}`);
      this.#shown = true;
    } else {
      this.#write(`${text}\n`);
    }
  }

  clear(): void {
    if (this.#tty && this.#shown) this.#write("\r\x1b[2K");
    this.#shown = false;
  }

  #write(text: string): void {
    Deno.stderr.writeSync(this.#encoder.encode(text));
  }
}

/** The first line of an error message, without terminal colours. */
function message(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  // deno-lint-ignore no-control-regex
  return text.split("\n")[0].replace(/\x1b\[[0-9;]*m/g, "").trim();
}

/**
 * Runs the benchmarks and prints the report. Exit codes: 0 when every case
 * ran, 1 when a case failed or nothing ran, 2 when `only` names an area that
 * has no file.
 *
 * @param options What to run and where to write the results.
 * @returns The exit code.
 */
export async function runBench(options: RunnerOptions): Promise<number> {
  const dir = options.dir ?? BENCH_DIR;
  const files = await discoverAreas(dir);
  const known = new Set(files.map((f) => f.area));
  const unknown = options.only.filter((a) => !known.has(a));
  if (unknown.length > 0) {
    console.error(
      `Unknown area: ${unknown.join(", ")}. Areas: ${[...known].join(", ")}`,
    );
    return 2;
  }
  const wanted = (area: string) =>
    options.only.length === 0 || options.only.includes(area);

  const progress = new Progress();
  const date = new Date().toISOString();
  const machine = await machineInfo();
  // The poller picks its path once; the children are told to take it too.
  const wakePath = currentWakePath();
  console.log(`Machine: ${formatMachine(machine)}`);
  console.log(
    `Wake path: ${wakePath.path}${
      wakePath.reason ? ` (${wakePath.reason})` : ""
    }`,
  );
  console.log(
    `Runs: ${options.runs} measured after 1 warm-up, median reported${
      options.quick ? " (quick: small payloads, not for publishing)" : ""
    }`,
  );

  const skipped: SkippedArea[] = [];
  const failed: FailedCase[] = [];
  const results: BenchResult[] = [];
  const areas: string[] = [];
  for (const file of files) {
    if (!wanted(file.area)) continue;
    let cases: BenchCase[];
    try {
      progress.show(`${file.area}: loading`);
      const mod = await import(file.url.href);
      if (!Array.isArray(mod.cases)) {
        throw new TypeError("it does not export cases: BenchCase[]");
      }
      cases = mod.cases;
    } catch (error) {
      progress.clear();
      skipped.push({
        area: file.area,
        reason: `does not load: ${message(error)}`,
      });
      continue;
    }
    areas.push(file.area);
    for (const c of cases) {
      try {
        const out = await c.run({
          runs: options.runs,
          quick: options.quick,
          progress: (text) => progress.show(`[${c.id}] ${text}`),
        });
        results.push(...out);
      } catch (error) {
        failed.push({ id: c.id, error: message(error) });
      }
    }
  }
  progress.clear();
  const runLine = formatRunLine(date, wakePath, machine);
  const hasCpu = results.some((r) => r.cpu || r.baseline?.cpu);

  console.log("");
  if (results.length > 0) console.log(formatTable(results));
  console.log(`Measured ${runLine}`);
  if (hasCpu) console.log(CPU_NOTE);
  for (const s of skipped) console.log(`skipped ${s.area}: ${s.reason}`);
  for (const f of failed) console.log(`FAILED ${f.id}: ${f.error}`);

  const report: BenchReport = {
    version: 1,
    date,
    machine,
    wakePath,
    options: { runs: options.runs, quick: options.quick, areas },
    results,
    skipped,
    failed,
  };
  if (options.json !== undefined) {
    await Deno.writeTextFile(options.json, toJson(report));
    console.log(`Wrote ${options.json}`);
  }
  if (options.svg !== undefined) {
    await Deno.writeTextFile(
      options.svg,
      renderSvg(results, {
        subtitle: [
          formatMachine(machine),
          `${formatDate(date)}, ${
            formatWakePath(wakePath)
          }; ${options.runs} runs after 1 warm-up, medians${
            options.quick ? " (quick run, not for publishing)" : ""
          }`,
        ],
      }),
    );
    console.log(`Wrote ${options.svg}`);
  }
  if (options.markdown !== undefined) {
    await Deno.writeTextFile(
      options.markdown,
      `${
        formatMarkdown(results)
      }\nMeasured ${runLine}; ${options.runs} runs after 1 warm-up, medians${
        options.quick ? " (quick run)" : ""
      }.${hasCpu ? `\n${CPU_NOTE}.` : ""}\n`,
    );
    console.log(`Wrote ${options.markdown}`);
  }
  if (failed.length > 0) return 1;
  if (results.length === 0) {
    console.error("No benchmark produced a result");
    return 1;
  }
  return 0;
}

/**
 * Statistics, the results table, the JSON report and the SVG bar chart of
 * `cli.ts bench`. Pure functions with no I/O, so they are unit-tested
 * (tests/bench_report_test.ts) and area benchmarks can build their results
 * with {@linkcode result}.
 *
 * @example Build a result from samples and print the table
 * ```ts
 * import { formatTable, result } from "./_report.ts";
 *
 * const r = result({
 *   id: "pipe.stream",
 *   mechanism: "pipe() reader.readable",
 *   unit: "MiB/s",
 *   higherIsBetter: true,
 *   samples: [2400, 2500, 2450],
 *   baseline: { mechanism: "Deno.Command stdout", samples: [1800, 1900, 1850] },
 * });
 * console.log(formatTable([r]));
 * ```
 *
 * @module
 */

import type { BenchResult, CpuPerMessage } from "./_types.ts";

/** The machine a report was measured on. */
export interface MachineInfo {
  /** Logical CPUs (`navigator.hardwareConcurrency`). */
  cores: number;
  /** CPU model from /proc/cpuinfo, when readable. */
  cpu?: string;
  /** Kernel release (`Deno.osRelease()` or `uname -r`). */
  kernel: string;
  /** `Deno.build.os`. */
  os: string;
  /** `Deno.build.arch`. */
  arch: string;
  /** Deno version. */
  deno: string;
  /** V8 version. */
  v8: string;
  /** Total memory in GiB, when readable. */
  memoryGiB?: number;
  /** The C compiler used for the C baselines, if any. */
  cc?: string;
}

/** The poller's wake path during the run (see bench/_wake.ts). */
export interface WakePath {
  /** `"uring"`, `"aio"`, `"ffi"`, or `"unknown"` when the poller does not say. */
  path: string;
  /** Why this path (or why it is unknown). */
  reason: string;
}

/** An area that was not run, and why. */
export interface SkippedArea {
  /** The area name, such as `"socketpair"`. */
  area: string;
  /** Why it was skipped, such as `"does not load: ..."`. */
  reason: string;
}

/** A case that threw instead of returning results. */
export interface FailedCase {
  /** The case id. */
  id: string;
  /** The error message. */
  error: string;
}

/** Everything one `bench` run measured: what `--json FILE` writes. */
export interface BenchReport {
  /** Format version of this JSON document. */
  version: 1;
  /** When the run started, ISO 8601. */
  date: string;
  /** The machine. */
  machine: MachineInfo;
  /** The poller's wake path in the benchmark process. */
  wakePath: WakePath;
  /** How the run was configured. */
  options: { runs: number; quick: boolean; areas: string[] };
  /** Every figure, in the order measured. */
  results: BenchResult[];
  /** Areas not run. */
  skipped: SkippedArea[];
  /** Cases that failed. */
  failed: FailedCase[];
}

function assertSamples(values: readonly number[], what: string): void {
  if (values.length === 0) {
    throw new RangeError(`Cannot compute ${what}: no samples`);
  }
  for (const v of values) {
    if (!Number.isFinite(v)) {
      throw new RangeError(
        `Cannot compute ${what}: sample is not finite: ${v}`,
      );
    }
  }
}

/**
 * The median: the middle value, or the mean of the two middle values.
 *
 * @param values At least one finite number, in any order.
 * @returns The median.
 */
export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

/**
 * A percentile by linear interpolation between the closest ranks (the
 * default of NumPy and of R type 7): rank = p/100 * (n - 1).
 *
 * @param values At least one finite number, in any order.
 * @param p The percentile, 0 to 100.
 * @returns The interpolated value.
 */
export function percentile(values: readonly number[], p: number): number {
  assertSamples(values, `percentile ${p}`);
  if (!(p >= 0 && p <= 100)) {
    throw new RangeError(
      `Cannot compute percentile: p must be 0-100, got ${p}`,
    );
  }
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (sorted.length - 1);
  const low = Math.floor(rank);
  const high = Math.min(low + 1, sorted.length - 1);
  return sorted[low] + (sorted[high] - sorted[low]) * (rank - low);
}

/**
 * How many times better a value is than its baseline: value / baseline when
 * higher is better (throughput), baseline / value when lower is better
 * (latency). `undefined` when either is not a positive number.
 *
 * @param value The mechanism's figure.
 * @param baseline The baseline's figure.
 * @param higherIsBetter Whether larger figures are better.
 * @returns The ratio, above 1 when the mechanism wins.
 */
export function ratio(
  value: number,
  baseline: number,
  higherIsBetter: boolean,
): number | undefined {
  if (!(value > 0) || !(baseline > 0)) return undefined;
  if (!Number.isFinite(value) || !Number.isFinite(baseline)) return undefined;
  return higherIsBetter ? value / baseline : baseline / value;
}

/** Input of {@linkcode result}: the samples, from which medians are taken. */
export interface ResultInput {
  /** Stable identifier, such as `"pipe.stream_1gib"`. */
  id: string;
  /** What was measured. */
  mechanism: string;
  /** Unit of the samples. */
  unit: BenchResult["unit"];
  /** Whether a larger value is better. */
  higherIsBetter: boolean;
  /** One figure per measured run. */
  samples: number[];
  /** Individual operation times in µs, for p50 and p99 (latency figures). */
  operations?: number[];
  /** CPU time per message of both processes, one per measured run. */
  cpu?: CpuPerMessage[];
  /** The baseline measured in the same run. */
  baseline?: {
    mechanism: string;
    samples: number[];
    operations?: number[];
    cpu?: CpuPerMessage[];
  };
}

/**
 * The median CPU time per message of each process over the runs (each
 * process's median separately).
 *
 * @param runs One figure per run, at least one.
 * @returns The medians.
 */
export function medianCpu(runs: readonly CpuPerMessage[]): CpuPerMessage {
  return {
    parent: median(runs.map((r) => r.parent)),
    child: median(runs.map((r) => r.child)),
  };
}

/**
 * Builds a {@linkcode BenchResult}: the median of the samples, p50 and p99 of
 * the individual operations when given, the median CPU time per message when
 * given, and the ratio against the baseline.
 *
 * @param input The samples.
 * @returns The result as the runner reports it.
 */
export function result(input: ResultInput): BenchResult {
  const out: BenchResult = {
    id: input.id,
    mechanism: input.mechanism,
    unit: input.unit,
    higherIsBetter: input.higherIsBetter,
    value: median(input.samples),
    samples: [...input.samples],
  };
  if (input.operations !== undefined && input.operations.length > 0) {
    out.p50 = percentile(input.operations, 50);
    out.p99 = percentile(input.operations, 99);
  }
  if (input.cpu !== undefined && input.cpu.length > 0) {
    out.cpu = medianCpu(input.cpu);
  }
  if (input.baseline !== undefined) {
    const b = input.baseline;
    out.baseline = {
      mechanism: b.mechanism,
      value: median(b.samples),
      samples: [...b.samples],
    };
    if (b.operations !== undefined && b.operations.length > 0) {
      out.baseline.p50 = percentile(b.operations, 50);
      out.baseline.p99 = percentile(b.operations, 99);
    }
    if (b.cpu !== undefined && b.cpu.length > 0) {
      out.baseline.cpu = medianCpu(b.cpu);
    }
    out.ratio = ratio(out.value, out.baseline.value, out.higherIsBetter);
  }
  return out;
}

/**
 * Formats a figure with a precision that suits its size: `2417 MiB/s`,
 * `12.3 µs`, `84,210 msg/s`.
 *
 * @param value The figure.
 * @param unit Its unit.
 * @returns The figure and unit as text.
 */
export function formatValue(value: number, unit: string): string {
  return `${formatNumber(value)} ${unit}`;
}

/**
 * Formats a number: integers with thousands separators at 1000 and above,
 * three significant digits below.
 *
 * @param value The number.
 * @returns The text.
 */
export function formatNumber(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return "-";
  const abs = Math.abs(value);
  if (abs >= 1000) {
    return Math.round(value).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  return value.toPrecision(3);
}

/**
 * Formats a ratio as `1.42×`, or `-` when there is none.
 *
 * @param value The ratio.
 * @returns The text.
 */
export function formatRatio(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return "-";
  return `${value.toFixed(2)}×`;
}

/**
 * CPU time per message as `parent + child` µs, or `-` when not measured.
 *
 * @param cpu The figures.
 * @returns Such as `12.3 + 8.10`.
 */
export function formatCpu(cpu: CpuPerMessage | undefined): string {
  if (cpu === undefined) return "-";
  return `${formatNumber(cpu.parent)} + ${formatNumber(cpu.child)}`;
}

/** What the CPU columns hold, for the line under a table. */
export const CPU_NOTE =
  "CPU µs/msg: CPU time per message of the parent + the child, each from its own getrusage(RUSAGE_SELF) over the measured messages";

/**
 * The date, wake path and machine of a run on one line, for the report
 * header and footers.
 *
 * @param date When the run started, ISO 8601.
 * @param wake The wake path.
 * @param machine The machine.
 * @returns Such as `2026-12-01 09:30 UTC, wake path aio (...). Machine: 2 cores ...`.
 */
export function formatRunLine(
  date: string,
  wake: WakePath,
  machine: MachineInfo,
): string {
  return `${formatDate(date)}, ${formatWakePath(wake)}. Machine: ${
    formatMachine(machine)
  }`;
}

/**
 * A date as `YYYY-MM-DD HH:MM UTC` (the input as given when it does not
 * parse).
 *
 * @param date ISO 8601.
 * @returns The short form.
 */
export function formatDate(date: string): string {
  const d = new Date(date);
  if (Number.isNaN(d.getTime())) return date;
  return `${d.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

/**
 * The wake path as `wake path aio (reason)`.
 *
 * @param wake The wake path.
 * @returns The text.
 */
export function formatWakePath(wake: WakePath): string {
  return `wake path ${wake.path}${wake.reason ? ` (${wake.reason})` : ""}`;
}

/**
 * One line describing the machine, for the report header.
 *
 * @param machine The machine.
 * @returns Such as `2 cores (AMD EPYC), Linux 6.1.0 x86_64, Deno 2.9.6, V8 15.0`.
 */
export function formatMachine(machine: MachineInfo): string {
  const cpu = machine.cpu ? ` (${machine.cpu})` : "";
  const memory = machine.memoryGiB
    ? `, ${machine.memoryGiB.toFixed(1)} GiB`
    : "";
  const cc = machine.cc ? `, C baseline: ${machine.cc}` : ", no C compiler";
  return `${machine.cores} cores${cpu}${memory}, ${machine.os} ${machine.kernel} ${machine.arch}, Deno ${machine.deno}, V8 ${machine.v8}${cc}`;
}

function pad(text: string, width: number, right: boolean): string {
  const gap = Math.max(0, width - [...text].length);
  return right ? " ".repeat(gap) + text : text + " ".repeat(gap);
}

/**
 * The results as an aligned plain-text table: mechanism, figure, p50 and
 * p99, CPU per message, the baseline with the same, and the ratio.
 *
 * @param results The results.
 * @returns The table, one line per result, with a header line.
 */
export function formatTable(results: readonly BenchResult[]): string {
  const header = [
    "mechanism",
    "figure",
    "p50 µs",
    "p99 µs",
    "CPU µs/msg",
    "baseline (same run)",
    "figure",
    "p50 µs",
    "p99 µs",
    "CPU µs/msg",
    "ratio",
  ];
  const right = [
    false,
    true,
    true,
    true,
    true,
    false,
    true,
    true,
    true,
    true,
    true,
  ];
  const rows = results.map((r) => [
    r.mechanism,
    formatValue(r.value, r.unit),
    formatNumber(r.p50),
    formatNumber(r.p99),
    formatCpu(r.cpu),
    r.baseline?.mechanism ?? "-",
    r.baseline ? formatValue(r.baseline.value, r.unit) : "-",
    formatNumber(r.baseline?.p50),
    formatNumber(r.baseline?.p99),
    formatCpu(r.baseline?.cpu),
    formatRatio(r.ratio),
  ]);
  const widths = header.map((h, i) =>
    Math.max([...h].length, ...rows.map((row) => [...row[i]].length))
  );
  const line = (cells: string[]) =>
    cells.map((c, i) => pad(c, widths[i], right[i])).join("  ").trimEnd();
  return [
    line(header),
    line(widths.map((w) => "-".repeat(w))),
    ...rows.map(line),
  ].join("\n");
}

/**
 * The results as a Markdown table (for the README): mechanism, figure, p50
 * and p99, CPU per message, the baseline with the same, and the ratio.
 *
 * @param results The results.
 * @returns The table, with a header and a separator line.
 */
export function formatMarkdown(results: readonly BenchResult[]): string {
  const cell = (text: string) => text.replace(/\|/g, "\\|");
  const lines = [
    "| mechanism | figure | p50 / p99 µs | CPU µs/msg | baseline (same run) | figure | p50 / p99 µs | CPU µs/msg | ratio |",
    "|---|--:|--:|--:|---|--:|--:|--:|--:|",
  ];
  const percentiles = (p50?: number, p99?: number) =>
    p50 === undefined ? "-" : `${formatNumber(p50)} / ${formatNumber(p99)}`;
  for (const r of results) {
    lines.push(
      `| ${
        [
          cell(r.mechanism),
          formatValue(r.value, r.unit),
          percentiles(r.p50, r.p99),
          formatCpu(r.cpu),
          cell(r.baseline?.mechanism ?? "-"),
          r.baseline ? formatValue(r.baseline.value, r.unit) : "-",
          percentiles(r.baseline?.p50, r.baseline?.p99),
          formatCpu(r.baseline?.cpu),
          formatRatio(r.ratio),
        ].join(" | ")
      } |`,
    );
  }
  return lines.join("\n") + "\n";
}

/**
 * The report as JSON text (two-space indented, with a final newline).
 *
 * @param report The report.
 * @returns The JSON document.
 */
export function toJson(report: BenchReport): string {
  return JSON.stringify(report, null, 2) + "\n";
}

/**
 * Escapes text for SVG (XML) content and attribute values.
 *
 * @param text Any text.
 * @returns The escaped text.
 */
export function escapeXml(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) =>
      ({
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "'": "&apos;",
      })[
        c
      ]!,
  );
}

function truncate(text: string, max: number): string {
  const chars = [...text];
  return chars.length <= max ? text : chars.slice(0, max - 1).join("") + "…";
}

/** Options for {@linkcode renderSvg}. */
export interface SvgOptions {
  /** Chart title. Default `"@conduit/ipc: cross-process benchmarks"`. */
  title?: string;
  /** Lines under the title, such as the date, wake path and machine. */
  subtitle?: string | string[];
  /**
   * Total width in pixels. Default: room for the longest label (at least
   * 960 in all, more when rows have CPU figures).
   */
  width?: number;
}

/** The label column's narrowest width, px. */
const LABEL_WIDTH = 380;
/** Longest label drawn whole, in characters; longer ones are cut. */
const LABEL_MAX_CHARS = 100;
/** About the width of one character of the 12 px sans-serif font, px. */
const CHAR_WIDTH = 6.2;
/** The longest bar when the chart's width is left to the default, px. */
const BAR_WIDTH = 360;
const RATIO_WIDTH = 90;
const BAR_HEIGHT = 16;
const GROUP_GAP = 14;
const OURS = "#2f6fb0";
const BASE = "#a3acb9";

/**
 * Draws the results as a horizontal bar chart in plain SVG text: for each
 * result, a bar for the mechanism and one for its baseline, scaled to the
 * larger of the two (units differ between rows), each labelled with its
 * figure (and CPU time per message when measured), and the ratio at the
 * right.
 *
 * @param results The results.
 * @param options Title and size.
 * @returns A standalone SVG document.
 */
export function renderSvg(
  results: readonly BenchResult[],
  options: SvgOptions = {},
): string {
  const hasCpu = results.some((r) => r.cpu || r.baseline?.cpu);
  // The label column fits the longest label (up to LABEL_MAX_CHARS), so
  // labels that differ only at the end (such as the condition of a round
  // trip) stay apart.
  const longest = Math.max(
    0,
    ...results.flatMap((r) => [
      [...r.mechanism].length,
      r.baseline ? [...r.baseline.mechanism].length : 0,
    ]),
  );
  const labelWidth = Math.max(
    LABEL_WIDTH,
    Math.ceil(Math.min(longest, LABEL_MAX_CHARS) * CHAR_WIDTH) + 16,
  );
  // Room right of the longest bar for its figure.
  const figureRoom = hasCpu ? 330 : 130;
  const width = options.width ??
    labelWidth + RATIO_WIDTH + figureRoom + BAR_WIDTH;
  const title = options.title ?? "@conduit/ipc: cross-process benchmarks";
  const barMax = Math.max(100, width - labelWidth - RATIO_WIDTH - figureRoom);
  const subtitle = options.subtitle === undefined
    ? []
    : Array.isArray(options.subtitle)
    ? options.subtitle
    : [options.subtitle];
  const top = 58 + 18 * subtitle.length;
  const parts: string[] = [];
  let y = top;
  for (const r of results) {
    const rows: {
      label: string;
      value: number;
      cpu?: CpuPerMessage;
      color: string;
    }[] = [{ label: r.mechanism, value: r.value, cpu: r.cpu, color: OURS }];
    if (r.baseline) {
      rows.push({
        label: r.baseline.mechanism,
        value: r.baseline.value,
        cpu: r.baseline.cpu,
        color: BASE,
      });
    }
    const scale = Math.max(...rows.map((row) => row.value), 0);
    const groupTop = y;
    for (const row of rows) {
      const length = scale > 0 && row.value > 0
        ? Math.max(1, (row.value / scale) * barMax)
        : 0;
      const better = r.higherIsBetter ? "" : " (lower is better)";
      const cpu = row.cpu ? `, CPU ${formatCpu(row.cpu)} µs/msg` : "";
      parts.push(
        `<text x="${labelWidth - 8}" y="${y + 12}" text-anchor="end">${
          escapeXml(truncate(row.label, LABEL_MAX_CHARS))
        }</text>`,
        `<rect x="${labelWidth}" y="${y}" width="${
          length.toFixed(1)
        }" height="${BAR_HEIGHT}" fill="${row.color}"/>`,
        `<text x="${(labelWidth + length + 6).toFixed(1)}" y="${y + 12}">${
          escapeXml(formatValue(row.value, r.unit) + better + cpu)
        }</text>`,
      );
      y += BAR_HEIGHT + 4;
    }
    if (r.ratio !== undefined) {
      parts.push(
        `<text x="${width - 12}" y="${
          groupTop + 12 + (rows.length - 1) * 10
        }" text-anchor="end" font-weight="bold">${
          escapeXml(formatRatio(r.ratio))
        }</text>`,
      );
    }
    y += GROUP_GAP - 4;
  }
  const height = y + 30;
  const legendY = height - 16;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="12" y="26" font-size="16" font-weight="bold">${
      escapeXml(title)
    }</text>`,
    ...subtitle.map((line, i) =>
      `<text x="12" y="${46 + 18 * i}" fill="#555555">${escapeXml(line)}</text>`
    ),
    `<text x="${width - 12}" y="${
      top - 8
    }" text-anchor="end" fill="#555555">× baseline</text>`,
    ...parts,
    `<rect x="12" y="${legendY - 10}" width="12" height="12" fill="${OURS}"/>`,
    `<text x="30" y="${legendY}">@conduit/ipc</text>`,
    `<rect x="130" y="${legendY - 10}" width="12" height="12" fill="${BASE}"/>`,
    `<text x="148" y="${legendY}">baseline, same run (bars scaled per pair)${
      hasCpu ? "; CPU µs/msg: parent + child" : ""
    }</text>`,
    `</svg>`,
    "",
  ].filter((line) => line !== "").join("\n") + "\n";
}

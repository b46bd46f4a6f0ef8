// bench/_report.ts: the statistics, the tables, the JSON report and the chart.

import assert from "node:assert/strict";
import {
  type BenchReport,
  escapeXml,
  formatCpu,
  formatDate,
  formatMarkdown,
  formatNumber,
  formatRatio,
  formatRunLine,
  formatTable,
  median,
  medianCpu,
  percentile,
  ratio,
  renderSvg,
  result,
  toJson,
} from "../bench/_report.ts";
import type { BenchResult } from "../bench/_types.ts";
import { test } from "./_util.ts";

test("median() takes the middle value, or the mean of the two middle values", () => {
  assert.equal(median([5]), 5);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([10, 10, 1000, 10, 9]), 10);
});

test("median() leaves its input in the order it was given", () => {
  const samples = [3, 1, 2];
  median(samples);
  assert.deepEqual(samples, [3, 1, 2]);
});

test("percentile() interpolates linearly between the closest ranks", () => {
  const values = Array.from({ length: 101 }, (_, i) => 100 - i); // 0..100 shuffled
  assert.equal(percentile(values, 0), 0);
  assert.equal(percentile(values, 50), 50);
  assert.equal(percentile(values, 99), 99);
  assert.equal(percentile(values, 100), 100);
  // n = 4: rank of p99 is 2.97, between 30 and 40.
  assert.ok(Math.abs(percentile([10, 20, 30, 40], 99) - 39.7) < 1e-9);
  assert.equal(percentile([10, 20, 30, 40], 50), 25);
  assert.equal(percentile([7], 99), 7);
});

test("percentile() and median() reject empty, non-finite and out-of-range input", () => {
  assert.throws(() => median([]), RangeError);
  assert.throws(() => median([1, Number.NaN]), RangeError);
  assert.throws(() => percentile([1, Infinity], 50), RangeError);
  assert.throws(() => percentile([1, 2], 101), RangeError);
  assert.throws(() => percentile([1, 2], -1), RangeError);
});

test("ratio() is 'times better': value/baseline for throughput, baseline/value for latency", () => {
  assert.equal(ratio(260, 200, true), 1.3);
  assert.equal(ratio(400, 500, false), 1.25);
  assert.equal(ratio(0, 500, true), undefined);
  assert.equal(ratio(100, 0, false), undefined);
  assert.equal(ratio(Number.NaN, 1, true), undefined);
});

test("result() reports medians, p50/p99 of the operations and the ratio", () => {
  const r = result({
    id: "x.rtt",
    mechanism: "ours",
    unit: "µs",
    higherIsBetter: false,
    samples: [12, 10, 11, 50, 10],
    operations: Array.from({ length: 100 }, (_, i) => i + 1),
    baseline: {
      mechanism: "theirs",
      samples: [30, 33, 31],
      operations: [1, 2, 3],
    },
  });
  assert.equal(r.value, 11);
  assert.deepEqual(r.samples, [12, 10, 11, 50, 10]);
  assert.equal(r.p50, 50.5);
  assert.ok(Math.abs(r.p99! - 99.01) < 1e-9);
  assert.equal(r.baseline?.value, 31);
  assert.equal(r.baseline?.p50, 2);
  assert.equal(r.ratio, 31 / 11);

  const plain = result({
    id: "y",
    mechanism: "alone",
    unit: "MiB/s",
    higherIsBetter: true,
    samples: [1, 2, 3],
  });
  assert.equal(plain.baseline, undefined);
  assert.equal(plain.ratio, undefined);
  assert.equal(plain.p50, undefined);
});

test("formatNumber() and formatRatio() pick a precision that suits the size", () => {
  assert.equal(formatNumber(2417.4), "2,417");
  assert.equal(formatNumber(1234567), "1,234,567");
  assert.equal(formatNumber(512.4), "512");
  assert.equal(formatNumber(12.34), "12.3");
  assert.equal(formatNumber(1.234), "1.23");
  assert.equal(formatNumber(0.61234), "0.612");
  assert.equal(formatNumber(undefined), "-");
  assert.equal(formatRatio(1.4249), "1.42×");
  assert.equal(formatRatio(undefined), "-");
});

const SAMPLE: BenchResult[] = [
  result({
    id: "pipe.stream",
    mechanism: "pipe() reader.readable",
    unit: "MiB/s",
    higherIsBetter: true,
    samples: [2400, 2600, 2500],
    baseline: { mechanism: "Deno.Command stdout", samples: [1800, 2000, 1900] },
  }),
  result({
    id: "socketpair.rtt",
    mechanism: 'seqpacket <ping> & "pong"',
    unit: "µs",
    higherIsBetter: false,
    samples: [8, 9, 10],
    operations: [7, 8, 9, 30],
    cpu: [{ parent: 5, child: 4 }, { parent: 6, child: 40 }, {
      parent: 7,
      child: 3,
    }],
    baseline: {
      mechanism: "fork() IPC json",
      samples: [80, 90, 100],
      cpu: [{ parent: 20, child: 12.5 }],
    },
  }),
  result({
    id: "alone",
    mechanism: "no baseline",
    unit: "msg/s",
    higherIsBetter: true,
    samples: [84210],
  }),
];

test("formatTable() prints one aligned row per result with CPU per message, the baseline and the ratio", () => {
  const lines = formatTable(SAMPLE).split("\n");
  assert.equal(lines.length, 2 + SAMPLE.length);
  assert.match(
    lines[0],
    /^mechanism\s+figure\s+p50 µs\s+p99 µs\s+CPU µs\/msg\s+baseline \(same run\)\s+figure\s+p50 µs\s+p99 µs\s+CPU µs\/msg\s+ratio$/,
  );
  assert.match(lines[1], /^-+ +-+/);
  assert.match(
    lines[2],
    /pipe\(\) reader\.readable\s+2,500 MiB\/s\s+-\s+-\s+-\s+Deno\.Command stdout\s+1,900 MiB\/s.*1\.32×$/,
  );
  // Medians of each process's CPU over the runs: parent 6, child 4.
  assert.match(
    lines[3],
    /9\.00 µs\s+8\.50\s+29\.4\s+6\.00 \+ 4\.00\s+fork\(\) IPC json\s+90\.0 µs\s+-\s+-\s+20\.0 \+ 12\.5\s+10\.00×$/,
  );
  assert.match(lines[4], /no baseline\s+84,210 msg\/s.*-$/);
  // The figure column is right-aligned: every row's figure ends at one column.
  const end = (line: string, text: string) => line.indexOf(text) + text.length;
  assert.equal(end(lines[2], "2,500 MiB/s"), end(lines[3], "9.00 µs"));
});

test("formatMarkdown() writes a Markdown table with right-aligned figures and escaped pipes", () => {
  const text = formatMarkdown([
    ...SAMPLE,
    result({
      id: "pipes",
      mechanism: "a | b",
      unit: "MiB/s",
      higherIsBetter: true,
      samples: [1],
    }),
  ]);
  const lines = text.trimEnd().split("\n");
  assert.equal(lines.length, 2 + SAMPLE.length + 1);
  assert.equal(
    lines[0],
    "| mechanism | figure | p50 / p99 µs | CPU µs/msg | baseline (same run) | figure | p50 / p99 µs | CPU µs/msg | ratio |",
  );
  assert.equal(lines[1], "|---|--:|--:|--:|---|--:|--:|--:|--:|");
  assert.equal(
    lines[2],
    "| pipe() reader.readable | 2,500 MiB/s | - | - | Deno.Command stdout | 1,900 MiB/s | - | - | 1.32× |",
  );
  assert.match(
    lines[3],
    /\| 9\.00 µs \| 8\.50 \/ 29\.4 \| 6\.00 \+ 4\.00 \| fork\(\) IPC json \| 90\.0 µs \| - \| 20\.0 \+ 12\.5 \| 10\.00× \|$/,
  );
  assert.match(lines[5], /^\| a \\\| b \|/);
  // Every row has the same number of cells as the header.
  const cells = (line: string) => line.replace(/\\\|/g, "").split("|").length;
  for (const line of lines) assert.equal(cells(line), cells(lines[0]));
});

test("toJson() writes a report that parses back to the same value", () => {
  const report: BenchReport = {
    version: 1,
    date: "2025-01-01T00:00:00.000Z",
    machine: {
      cores: 2,
      kernel: "6.1.0",
      os: "linux",
      arch: "x86_64",
      deno: "2.9.6",
      v8: "15.0",
    },
    wakePath: { path: "aio", reason: "IOCB_CMD_POLL accepted" },
    options: { runs: 5, quick: false, areas: ["pipe", "socketpair"] },
    results: SAMPLE,
    skipped: [{ area: "shm", reason: "does not load: no cases" }],
    failed: [],
  };
  const text = toJson(report);
  assert.ok(text.endsWith("}\n"));
  assert.deepEqual(JSON.parse(text), report);
});

test("escapeXml() escapes the five XML special characters", () => {
  assert.equal(
    escapeXml(`a<b>&"c"'d'`),
    "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;",
  );
});

/** A small well-formedness check: tags balance, attributes are quoted, entities are known. */
function assertWellFormedSvg(svg: string): void {
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.ok(svg.trimEnd().endsWith("</svg>"));
  const stack: string[] = [];
  const tag = /<(\/?)([a-zA-Z]+)((?:\s+[a-zA-Z-]+="[^"<>]*")*)\s*(\/?)>/g;
  let last = 0;
  for (const m of svg.matchAll(tag)) {
    const between = svg.slice(last, m.index);
    assert.ok(!/[<>]/.test(between), `stray markup: ${between}`);
    for (const entity of between.match(/&[^;\s]*;?/g) ?? []) {
      assert.match(entity, /^&(amp|lt|gt|quot|apos);$/, `bad entity ${entity}`);
    }
    last = m.index + m[0].length;
    const [, close, name, , selfClose] = m;
    if (close) assert.equal(stack.pop(), name, `unbalanced </${name}>`);
    else if (!selfClose) stack.push(name);
  }
  assert.equal(svg.slice(last).trim(), "");
  assert.deepEqual(stack, []);
}

test("renderSvg() draws a well-formed bar chart: a bar per figure, scaled per pair, with the ratio", () => {
  const svg = renderSvg(SAMPLE, {
    subtitle: ["2 cores <test>", "2026-12-01 09:30 UTC, wake path aio"],
    width: 900,
  });
  assertWellFormedSvg(svg);
  assert.ok(svg.includes('width="900"'));
  assert.ok(svg.includes("2 cores &lt;test&gt;"));
  // Each subtitle line has its own text element, one under the other.
  assert.match(svg, /<text x="12" y="46"[^>]*>2 cores &lt;test&gt;<\/text>/);
  assert.match(
    svg,
    /<text x="12" y="64"[^>]*>2026-12-01 09:30 UTC, wake path aio<\/text>/,
  );
  // CPU per message beside the latency figures, and in the legend.
  assert.ok(svg.includes("9.00 µs (lower is better), CPU 6.00 + 4.00 µs/msg"));
  assert.ok(svg.includes("90.0 µs (lower is better), CPU 20.0 + 12.5 µs/msg"));
  assert.ok(svg.includes("CPU µs/msg: parent + child"));
  assert.ok(svg.includes("seqpacket &lt;ping&gt; &amp; &quot;pong&quot;"));
  assert.ok(!svg.includes("<ping>"));
  // Bars: 2 + 2 + 1, plus the background and two legend squares.
  const bars = [
    ...svg.matchAll(/<rect x="(\d+)" y="\d+" width="([\d.]+)" height="16"/g),
  ];
  assert.equal(bars.length, 5);
  // Within a pair the larger figure gets the full length.
  const widths = bars.map((b) => Number(b[2]));
  assert.ok(Math.abs(widths[0] / widths[1] - 2500 / 1900) < 0.01);
  assert.ok(Math.abs(widths[2] / widths[3] - 9 / 90) < 0.01);
  assert.equal(widths[4], widths[0]);
  assert.ok(svg.includes("1.32×"));
  assert.ok(svg.includes("10.00×"));
  assert.ok(svg.includes("(lower is better)"));
});

test("renderSvg() widens the label column so long labels that differ at the end stay whole", () => {
  const long = (condition: string) =>
    result({
      id: `x.${condition}`,
      mechanism:
        `socketpair() seqpacket, 64 B round trip to a Deno child, ${condition}`,
      unit: "µs",
      higherIsBetter: false,
      samples: [1],
    });
  const svg = renderSvg([
    long("paced: 1 round trip per ms"),
    long("loaded: 1 CPU-bound process running"),
  ]);
  assertWellFormedSvg(svg);
  assert.ok(svg.includes(", paced: 1 round trip per ms</text>"));
  assert.ok(svg.includes(", loaded: 1 CPU-bound process running</text>"));
  // The bars start right of the labels, and the chart grew to fit them.
  const x = Number(
    /<rect x="(\d+)" y="\d+" width="[\d.]+" height="16"/.exec(
      svg,
    )![1],
  );
  assert.ok(x > 380 && x >= 91 * 6, `bars start at ${x}`);
  assert.ok(Number(/width="(\d+)"/.exec(svg)![1]) > 960);
});

test("renderSvg() draws an empty chart when there are no results", () => {
  const svg = renderSvg([]);
  assertWellFormedSvg(svg);
  assert.ok(!svg.includes('height="16"'));
  assert.ok(!svg.includes("CPU"));
});

test("medianCpu() and result() take each process's median CPU separately", () => {
  assert.deepEqual(
    medianCpu([{ parent: 1, child: 30 }, { parent: 3, child: 10 }, {
      parent: 2,
      child: 20,
    }]),
    { parent: 2, child: 20 },
  );
  assert.throws(() => medianCpu([]), RangeError);
  const r = SAMPLE[1];
  assert.deepEqual(r.cpu, { parent: 6, child: 4 });
  assert.deepEqual(r.baseline?.cpu, { parent: 20, child: 12.5 });
  assert.equal(SAMPLE[0].cpu, undefined);
  assert.equal(SAMPLE[0].baseline?.cpu, undefined);
  assert.equal(formatCpu(undefined), "-");
  assert.equal(formatCpu({ parent: 123.4, child: 0.5 }), "123 + 0.500");
});

test("formatRunLine() gives the date, the wake path and the machine on one line", () => {
  const machine = {
    cores: 2,
    cpu: "AMD EPYC",
    kernel: "6.1.0",
    os: "linux",
    arch: "x86_64",
    deno: "2.9.6",
    v8: "15.0",
  };
  assert.equal(
    formatRunLine(
      "2026-12-01T09:30:59.123Z",
      { path: "ffi", reason: "forced by the environment" },
      machine,
    ),
    "2026-12-01 09:30 UTC, wake path ffi (forced by the environment). " +
      "Machine: 2 cores (AMD EPYC), linux 6.1.0 x86_64, Deno 2.9.6, V8 15.0, no C compiler",
  );
  assert.match(
    formatRunLine("2026-12-01T09:30:00Z", { path: "aio", reason: "" }, machine),
    /^2026-12-01 09:30 UTC, wake path aio\. Machine: /,
  );
  assert.equal(formatDate("not a date"), "not a date");
});

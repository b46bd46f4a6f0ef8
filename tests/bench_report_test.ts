import assert from "node:assert/strict";
import {
  type BenchReport,
  escapeXml,
  formatMarkdown,
  formatNumber,
  formatRatio,
  formatTable,
  median,
  percentile,
  ratio,
  renderSvg,
  result,
  toJson,
} from "../bench/_report.ts";
import { discoverAreas } from "../bench/_runner.ts";
import {
  commandStdout,
  cPingPong,
  cThroughput,
  ddWriter,
  findCompiler,
  forkPingPong,
  readAllByob,
} from "../bench/_baselines.ts";
import type { BenchResult } from "../bench/_types.ts";

Deno.test("median() takes the middle value, or the mean of the two middle values", () => {
  assert.equal(median([5]), 5);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([10, 10, 1000, 10, 9]), 10);
});

Deno.test("median() leaves its input in the order it was given", () => {
  const samples = [3, 1, 2];
  median(samples);
  assert.deepEqual(samples, [3, 1, 2]);
});

Deno.test("percentile() interpolates linearly between the closest ranks", () => {
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

Deno.test("percentile() and median() reject empty, non-finite and out-of-range input", () => {
  assert.throws(() => median([]), RangeError);
  assert.throws(() => median([1, Number.NaN]), RangeError);
  assert.throws(() => percentile([1, Infinity], 50), RangeError);
  assert.throws(() => percentile([1, 2], 101), RangeError);
  assert.throws(() => percentile([1, 2], -1), RangeError);
});

Deno.test("ratio() is 'times better': value/baseline for throughput, baseline/value for latency", () => {
  assert.equal(ratio(260, 200, true), 1.3);
  assert.equal(ratio(400, 500, false), 1.25);
  assert.equal(ratio(0, 500, true), undefined);
  assert.equal(ratio(100, 0, false), undefined);
  assert.equal(ratio(Number.NaN, 1, true), undefined);
});

Deno.test("result() reports medians, p50/p99 of the operations and the ratio", () => {
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

Deno.test("formatNumber() and formatRatio() pick a precision that suits the size", () => {
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
    baseline: { mechanism: "fork() IPC json", samples: [80, 90, 100] },
  }),
  result({
    id: "alone",
    mechanism: "no baseline",
    unit: "msg/s",
    higherIsBetter: true,
    samples: [84210],
  }),
];

Deno.test("formatTable() prints one aligned row per result with the baseline and the ratio", () => {
  const lines = formatTable(SAMPLE).split("\n");
  assert.equal(lines.length, 2 + SAMPLE.length);
  assert.match(lines[0], /^mechanism\s+figure\s+p50 µs\s+p99 µs\s+baseline/);
  assert.match(lines[1], /^-+ +-+/);
  assert.match(
    lines[2],
    /pipe\(\) reader\.readable\s+2,500 MiB\/s.*Deno\.Command stdout\s+1,900 MiB\/s.*1\.32×$/,
  );
  assert.match(
    lines[3],
    /9\.00 µs\s+8\.50\s+29\.4.*fork\(\) IPC json\s+90\.0 µs.*10\.00×$/,
  );
  assert.match(lines[4], /no baseline\s+84,210 msg\/s.*-$/);
  // The figure column is right-aligned: every row's figure ends at one column.
  const end = (line: string, text: string) => line.indexOf(text) + text.length;
  assert.equal(end(lines[2], "2,500 MiB/s"), end(lines[3], "9.00 µs"));
});

Deno.test("formatMarkdown() writes a Markdown table with right-aligned figures and escaped pipes", () => {
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
  assert.match(lines[0], /^\| mechanism \| figure \|.*\| ratio \|$/);
  assert.equal(lines[1], "|---|--:|--:|---|--:|--:|--:|");
  assert.equal(
    lines[2],
    "| pipe() reader.readable | 2,500 MiB/s | - | Deno.Command stdout | 1,900 MiB/s | - | 1.32× |",
  );
  assert.match(lines[3], /\| 9\.00 µs \| 8\.50 \/ 29\.4 \|/);
  assert.match(lines[5], /^\| a \\\| b \|/);
  // Every row has the same number of cells as the header.
  const cells = (line: string) => line.replace(/\\\|/g, "").split("|").length;
  for (const line of lines) assert.equal(cells(line), cells(lines[0]));
});

Deno.test("toJson() writes a report that parses back to the same value", () => {
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
    options: { runs: 5, quick: false, areas: ["pipe", "socketpair"] },
    results: SAMPLE,
    skipped: [{ area: "shm", reason: "not built yet" }],
    failed: [],
  };
  const text = toJson(report);
  assert.ok(text.endsWith("}\n"));
  assert.deepEqual(JSON.parse(text), report);
});

Deno.test("escapeXml() escapes the five XML special characters", () => {
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

Deno.test("renderSvg() draws a well-formed bar chart: a bar per figure, scaled per pair, with the ratio", () => {
  const svg = renderSvg(SAMPLE, { subtitle: "2 cores <test>", width: 900 });
  assertWellFormedSvg(svg);
  assert.ok(svg.includes('width="900"'));
  assert.ok(svg.includes("2 cores &lt;test&gt;"));
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

Deno.test("renderSvg() draws an empty chart when there are no results", () => {
  const svg = renderSvg([]);
  assertWellFormedSvg(svg);
  assert.ok(!svg.includes('height="16"'));
});

Deno.test({
  name: "discoverAreas() lists <area>_bench.ts files, planned areas first",
  permissions: { read: true },
  async fn() {
    const dir = new URL("./fixtures/bench/", import.meta.url);
    const areas = (await discoverAreas(dir)).map((a) => a.area);
    assert.deepEqual(areas, ["broken", "steady", "unbuilt"]);
    const real = (await discoverAreas()).map((a) => a.area);
    assert.deepEqual(real.slice(0, 2), ["pipe", "spawn"]);
  },
});

Deno.test("readAllByob() reads a byte stream to its end into one reused buffer", async () => {
  const chunks = [new Uint8Array(700), new Uint8Array(300), new Uint8Array(5)];
  let i = 0;
  const sizes = new Set<number>();
  const buffers = new Set<ArrayBufferLike>();
  const stream = new ReadableStream({
    type: "bytes",
    pull(controller) {
      const request = controller.byobRequest!;
      const view = request.view as Uint8Array;
      sizes.add(view.buffer.byteLength);
      buffers.add(view.buffer);
      if (i === chunks.length) {
        controller.close();
        request.respond(0);
        return;
      }
      const n = Math.min(chunks[i].byteLength, view.byteLength);
      i++;
      request.respond(n);
    },
  });
  assert.equal(await readAllByob(stream, 1024), 1005);
  // Every read offers the whole 1024-byte buffer again (transferred, never
  // reallocated smaller or bigger).
  assert.deepEqual([...sizes], [1024]);
  assert.equal(buffers.size, chunks.length + 1);
});

Deno.test({
  name:
    "forkPingPong() times every round trip with json and advanced serialization",
  permissions: { run: true, read: true, env: true },
  async fn() {
    for (const serialization of ["json", "advanced"] as const) {
      const r = await forkPingPong({
        serialization,
        count: 40,
        payload: new Uint8Array(64).fill(7),
      });
      assert.equal(r.rtts.length, 40);
      assert.ok(r.rtts.every((t) => t > 0 && Number.isFinite(t)));
      assert.ok(r.msgPerSec > 0);
    }
  },
});

Deno.test({
  name: "commandStdout() reads all of dd's output through a BYOB reader",
  permissions: { run: true },
  async fn() {
    const dd = ddWriter(8);
    const r = await commandStdout(dd.cmd, dd.args);
    assert.equal(r.bytes, 8 << 20);
    assert.ok(r.mibps > 0 && r.ms > 0);
  },
});

Deno.test({
  name: "the C baselines build with cc and report throughput and round trips",
  permissions: { run: true, read: true, write: true, env: true },
  async fn() {
    const cc = await findCompiler();
    const through = await cThroughput("pipe", 8 << 20);
    const rtt = await cPingPong("seqpacket", 100);
    if (cc === null) {
      assert.equal(through, null);
      assert.equal(rtt, null);
      return;
    }
    assert.equal(through?.bytes, 8 << 20);
    assert.ok(through!.mibps > 0);
    assert.ok(rtt!.p50 > 0 && rtt!.p99 >= rtt!.p50 && rtt!.msgPerSec > 0);
    const stream = await cThroughput("socketpair", 8 << 20, 65536);
    assert.equal(stream?.bytes, 8 << 20);
  },
});

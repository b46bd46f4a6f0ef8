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
import { AREA_ORDER, discoverAreas } from "../bench/_runner.ts";
import {
  alternating,
  commandStdout,
  cPingPong,
  cThroughput,
  ddWriter,
  type Echo,
  findCompiler,
  forkCount,
  forkPingPong,
  measureRoundTrips,
  readAllByob,
  timeRoundTrips,
} from "../bench/_baselines.ts";
import { cpuUs, decodeCpu, encodeCpu } from "../bench/_cpu.ts";
import { withLoad } from "../bench/_load.ts";
import {
  conditionCount,
  conditionNote,
  roundTripCase,
} from "../bench/_roundtrip.ts";
import { childRun, currentWakePath, WAKE_ENV } from "../bench/_wake.ts";
import type { BenchOptions, BenchResult } from "../bench/_types.ts";
import { seqpacketEcho } from "../bench/socketpair_bench.ts";
import { channelCount, channelEcho } from "../bench/channel_bench.ts";
import { queueEcho, transfer } from "../bench/shm_bench.ts";
import { readProcText, test, withTimeout, zombieChildren } from "./_util.ts";

/** The bound of every wait on a child process in these tests, ms. */
const CHILD_WAIT_MS = 30_000;

// cpuUs() opens libc on its first call: do it here, so that no test is
// charged with loading the dynamic library.
cpuUs();

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

Deno.test("formatTable() prints one aligned row per result with CPU per message, the baseline and the ratio", () => {
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

Deno.test("renderSvg() widens the label column so long labels that differ at the end stay whole", () => {
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

Deno.test("renderSvg() draws an empty chart when there are no results", () => {
  const svg = renderSvg([]);
  assertWellFormedSvg(svg);
  assert.ok(!svg.includes('height="16"'));
  assert.ok(!svg.includes("CPU"));
});

Deno.test("medianCpu() and result() take each process's median CPU separately", () => {
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

Deno.test("formatRunLine() gives the date, the wake path and the machine on one line", () => {
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

Deno.test({
  name:
    "currentWakePath() reports the poller's path, and unknown with the reason when asking fails",
  permissions: { ffi: true, env: true },
  fn() {
    assert.deepEqual(
      currentWakePath(() => ({ path: "ffi", reason: "forced" })),
      { path: "ffi", reason: "forced" },
    );
    assert.deepEqual(
      currentWakePath(() => {
        throw new Error("AIO refused");
      }),
      { path: "unknown", reason: "wakePath() threw: AIO refused" },
    );
    // The real poller: one of its two paths, the forced one when forced.
    const real = currentWakePath();
    assert.ok(real.path === "aio" || real.path === "ffi", real.path);
    assert.notEqual(real.reason, "");
    const forced = Deno.env.get(WAKE_ENV);
    if (forced) assert.equal(real.path, forced);
    // Children are told to take the same path, and may read only that variable.
    const run = childRun();
    assert.deepEqual(run.env, { [WAKE_ENV]: real.path });
    assert.deepEqual(run.flags, ["--allow-ffi", `--allow-env=${WAKE_ENV}`]);
  },
});

Deno.test({
  name: "cpuUs() counts this process's CPU time, and encodeCpu() round-trips",
  permissions: { ffi: true },
  fn() {
    const before = cpuUs();
    let x = 0;
    // Busy for at least a few ms of CPU.
    const until = performance.now() + 20;
    while (performance.now() < until) x += Math.sqrt(x + 1);
    const used = cpuUs() - before;
    assert.ok(x > 0);
    // The loop ran on this thread for 20 ms of wall time: some of it was
    // CPU time.
    assert.ok(used > 0, `used ${used} µs`);
    assert.equal(decodeCpu(encodeCpu(1234.5)), 1234.5);
    assert.throws(() => decodeCpu(new Uint8Array(7)), /8 bytes/);
    assert.throws(() => decodeCpu(encodeCpu(-1)), /bad CPU figure/);
    assert.throws(() => decodeCpu(encodeCpu(Number.NaN)), /bad CPU figure/);
  },
});

Deno.test({
  name:
    "discoverAreas() lists <area>_bench.ts files in the report's order, the rest by name",
  permissions: { read: true },
  async fn() {
    const dir = new URL("./fixtures/bench/", import.meta.url);
    const areas = (await discoverAreas(dir)).map((a) => a.area);
    assert.deepEqual(areas, ["broken", "steady", "unbuilt"]);
    // Every area of the report has its file, in the report's order.
    const real = (await discoverAreas()).map((a) => a.area);
    assert.deepEqual(real, AREA_ORDER);
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
    "forkPingPong() times every round trip with json and advanced serialization, with both processes' CPU",
  permissions: { run: true, read: true, env: true, ffi: true },
  async fn() {
    for (const serialization of ["json", "advanced"] as const) {
      const r = await withTimeout(
        forkPingPong({
          serialization,
          count: 40,
          payload: new Uint8Array(64).fill(7),
        }),
        CHILD_WAIT_MS,
        `fork() round trips, ${serialization}`,
      );
      assert.equal(r.rtts.length, 40);
      assert.ok(r.rtts.every((t) => t > 0 && Number.isFinite(t)));
      assert.ok(r.msgPerSec > 0);
      // Both processes handle every message: both use CPU for it.
      assert.ok(r.cpu.parent > 0, `parent ${r.cpu.parent}`);
      assert.ok(r.cpu.child > 0, `child ${r.cpu.child}`);
    }
  },
});

Deno.test({
  name:
    "forkCount() sends messages one way into a child that counts all of them",
  permissions: { run: true, read: true, env: true, ffi: true },
  async fn() {
    for (const serialization of ["json", "advanced"] as const) {
      // forkCount() throws unless the child counted exactly 300.
      const r = await withTimeout(
        forkCount(serialization, 300),
        CHILD_WAIT_MS,
        `fork() one way, ${serialization}`,
      );
      assert.ok(r.msgPerSec > 0 && Number.isFinite(r.msgPerSec));
      assert.ok(r.cpu.parent > 0 && r.cpu.child > 0);
    }
  },
});

/** An in-process echo that records when each round trip started. */
function fakeEcho(childCpu: number[] = [100, 500]) {
  const starts: number[] = [];
  const seen: number[] = [];
  let queries = 0;
  let closed = 0;
  const echo: Echo = {
    roundTrip(i) {
      starts.push(performance.now());
      seen.push(i);
      return Promise.resolve();
    },
    childCpuUs() {
      return Promise.resolve(
        childCpu[Math.min(queries++, childCpu.length - 1)],
      );
    },
    close() {
      closed++;
      return Promise.resolve();
    },
  };
  return {
    echo,
    starts,
    seen,
    get closed() {
      return closed;
    },
  };
}

Deno.test({
  name:
    "timeRoundTrips() runs every round trip in order, and the child's CPU is the difference of its two answers",
  permissions: { ffi: true },
  async fn() {
    const fake = fakeEcho([100, 500]);
    const r = await timeRoundTrips(fake.echo, 8);
    assert.deepEqual(fake.seen, [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.equal(r.rtts.length, 8);
    assert.ok(r.rtts.every((t) => t >= 0));
    assert.equal(r.cpu.child, (500 - 100) / 8);
    assert.ok(r.cpu.parent >= 0);
  },
});

Deno.test({
  name:
    "timeRoundTrips() paced starts round trip i no earlier than i intervals after the first",
  permissions: { ffi: true },
  async fn() {
    const fake = fakeEcho();
    const interval = 5;
    const r = await timeRoundTrips(fake.echo, 6, interval);
    assert.equal(fake.starts.length, 6);
    for (let i = 1; i < fake.starts.length; i++) {
      const offset = fake.starts[i] - fake.starts[0];
      // Timers may fire late (a loaded machine) but never early; allow the
      // first round trip's own start-up time as slack.
      assert.ok(
        offset >= i * interval - 1,
        `round trip ${i} started ${offset} ms after the first`,
      );
    }
    assert.ok(r.seconds * 1000 >= 5 * interval - 1);
  },
});

Deno.test({
  name: "measureRoundTrips() closes the echo when a round trip fails",
  permissions: { ffi: true },
  async fn() {
    const fake = fakeEcho();
    const failing: Echo = {
      ...fake.echo,
      roundTrip: (i) =>
        i === 3
          ? Promise.reject(new Error("wrong echo"))
          : fake.echo.roundTrip(i),
    };
    await assert.rejects(
      measureRoundTrips(() => Promise.resolve(failing), 10),
      /wrong echo/,
    );
    assert.equal(fake.closed, 1);
    await measureRoundTrips(() => Promise.resolve(fake.echo), 2);
    assert.equal(fake.closed, 2);
  },
});

const QUIET: BenchOptions = { runs: 2, quick: true, progress: () => {} };

Deno.test("alternating() reverses the steps on odd runs and wraps each whole run", async () => {
  const order: string[] = [];
  await alternating(
    QUIET,
    "test",
    [
      (measured) => {
        order.push(`a${measured ? "" : "?"}`);
        return Promise.resolve();
      },
      () => {
        order.push("b");
        return Promise.resolve();
      },
    ],
    async (run) => {
      order.push("[");
      await run();
      order.push("]");
    },
  );
  // Warm-up (run 0) in order, run 1 reversed, run 2 in order.
  assert.deepEqual(order, [
    "[",
    "a?",
    "b",
    "]",
    "[",
    "b",
    "a",
    "]",
    "[",
    "a",
    "b",
    "]",
  ]);
});

Deno.test("roundTripCase() makes one row per baseline with the condition in the id and the mechanism", async () => {
  const contender = (cpu: number[]) => ({
    start: () => Promise.resolve(fakeEcho(cpu).echo),
  });
  const make = (condition: "tight" | "paced") =>
    roundTripCase({
      id: "x.rtt",
      area: "x",
      label: "x",
      condition,
      count: { full: 1000, quick: 7 },
      mine: { mechanism: "ours", ...contender([0, 70]) },
      baselines: [
        { id: "x.rtt_a", mechanism: "theirs a", ...contender([0, 700]) },
        { id: "x.rtt_b", mechanism: "theirs b", ...contender([0, 1400]) },
      ],
    });
  assert.equal(make("tight").id, "x.rtt");
  assert.equal(make("paced").id, "x.rtt_paced");
  assert.equal(
    conditionCount({ condition: "paced", count: { full: 1, quick: 1 } }, {
      quick: false,
    }),
    500,
  );
  assert.equal(
    conditionCount({ condition: "tight", count: { full: 9, quick: 7 } }, {
      quick: true,
    }),
    7,
  );

  const rows = await make("tight").run(QUIET);
  assert.deepEqual(rows.map((r) => r.id), ["x.rtt_a", "x.rtt_b"]);
  assert.deepEqual(rows.map((r) => r.baseline?.mechanism), [
    "theirs a",
    "theirs b",
  ]);
  for (const r of rows) {
    assert.equal(r.mechanism, "ours");
    assert.equal(r.unit, "µs");
    assert.equal(r.higherIsBetter, false);
    assert.equal(r.samples.length, QUIET.runs);
    // Child CPU per round trip: the difference of the fake's answers over 7.
    assert.equal(r.cpu?.child, 10);
  }
  assert.equal(rows[0].baseline?.cpu?.child, 100);
  assert.equal(rows[1].baseline?.cpu?.child, 200);

  const paced = await make("paced").run({ ...QUIET, runs: 1 });
  assert.deepEqual(paced.map((r) => r.id), ["x.rtt_a_paced", "x.rtt_b_paced"]);
  assert.equal(paced[0].mechanism, `ours${conditionNote("paced")}`);
  assert.match(conditionNote("paced"), /1 round trip per ms/);
  assert.match(conditionNote("loaded"), /CPU-bound/);
});

Deno.test({
  name:
    "withLoad() runs a CPU-bound process during the measurement and kills and reaps it after, also on failure",
  permissions: { run: true, read: true, env: true, ffi: true },
  async fn() {
    const state = (pid: number) => {
      const stat = readProcText(`/proc/${pid}/stat`);
      return stat?.slice(stat.lastIndexOf(")") + 2)[0];
    };
    let pid = 0;
    const seen = await withTimeout(
      withLoad((load) => {
        pid = load.pid;
        assert.match(load.command, /for\(;;\)\{\}/);
        return Promise.resolve(state(load.pid));
      }),
      CHILD_WAIT_MS,
      "withLoad()",
    );
    // Running or runnable while the measurement ran: it spins.
    assert.equal(seen, "R");
    // Killed and reaped: no process (not even a zombie) is left.
    assert.equal(readProcText(`/proc/${pid}/stat`), undefined);

    await assert.rejects(
      withTimeout(
        withLoad((load) => {
          pid = load.pid;
          return Promise.reject(new Error("measurement failed"));
        }),
        CHILD_WAIT_MS,
        "withLoad() with a failing measurement",
      ),
      /measurement failed/,
    );
    assert.equal(readProcText(`/proc/${pid}/stat`), undefined);
  },
});

Deno.test({
  name:
    "bench code and its children pass no spin option: every row uses the defaults",
  permissions: { read: true },
  async fn() {
    const dirs = [
      new URL("../bench/", import.meta.url),
      new URL("./fixtures/bench/", import.meta.url),
    ];
    let files = 0;
    for (const dir of dirs) {
      for await (const entry of Deno.readDir(dir)) {
        if (!entry.isFile || !entry.name.endsWith(".ts")) continue;
        files++;
        const text = await Deno.readTextFile(new URL(entry.name, dir));
        assert.doesNotMatch(
          text,
          /\bspin\s*:|SPIN_US/,
          `${entry.name} passes a spin option`,
        );
      }
    }
    assert.ok(files > 10);
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

const CHILD_PERMS = { run: true, read: true, env: true };

for (
  const [name, start] of [
    ["seqpacket", () => seqpacketEcho(64)],
    ["channel", channelEcho],
    ["shm queue", queueEcho],
  ] as const
) {
  test(
    `the ${name} echo child answers round trips and reports its CPU time`,
    async () => {
      const r = await withTimeout(
        measureRoundTrips(start, 50),
        CHILD_WAIT_MS,
        `${name} round trips`,
      );
      assert.equal(r.rtts.length, 50);
      assert.ok(r.rtts.every((t) => t > 0 && Number.isFinite(t)));
      // The child's CPU comes from its own getrusage: it handled 50 messages.
      assert.ok(r.cpu.child > 0, `child ${r.cpu.child}`);
      assert.ok(r.cpu.parent > 0, `parent ${r.cpu.parent}`);
      assert.deepEqual(zombieChildren(), []);
    },
    CHILD_PERMS,
  );
}

test(
  "the channel count child counts every one-way message with for await",
  async () => {
    // channelCount() throws unless the child counted exactly 500.
    const r = await withTimeout(
      channelCount(500),
      CHILD_WAIT_MS,
      "channel one way",
    );
    assert.ok(r.msgPerSec > 0 && Number.isFinite(r.msgPerSec));
    assert.ok(r.cpu.parent > 0 && r.cpu.child > 0);
    assert.deepEqual(zombieChildren(), []);
  },
  CHILD_PERMS,
);

test(
  "the shm throughput transfers move every byte both ways through all three mechanisms",
  async () => {
    for (const direction of ["c2p", "p2c"] as const) {
      for (const way of ["shm", "socketpair", "command"] as const) {
        // transfer() throws unless exactly 2 MiB arrived.
        const mibps = await withTimeout(
          transfer(direction, way, 2),
          CHILD_WAIT_MS,
          `${way} ${direction}`,
        );
        assert.ok(mibps > 0 && Number.isFinite(mibps), `${direction} ${way}`);
      }
    }
    assert.deepEqual(zombieChildren(), []);
  },
  CHILD_PERMS,
);

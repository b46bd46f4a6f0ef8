/**
 * The contract between the benchmark runner (`cli.ts bench`) and the area
 * benchmarks (`bench/*_bench.ts`). Each area exports `cases: BenchCase[]`.
 *
 * @module
 */

/** One measured figure and the baseline measured in the same run. */
export interface BenchResult {
  /** Stable identifier, such as `"pipe.stream_1gib"`. */
  id: string;
  /** What was measured, such as `"pipe() reader.readable, 1 GiB child to parent"`. */
  mechanism: string;
  /** Unit of `value`: throughput, latency or rate. */
  unit: "MiB/s" | "µs" | "msg/s" | "ms";
  /** Whether a larger value is better (throughput) or worse (latency). */
  higherIsBetter: boolean;
  /** The median over `samples`. */
  value: number;
  /** One figure per measured run, after the warm-up. */
  samples: number[];
  /** For latency figures: 50th and 99th percentiles of individual operations. */
  p50?: number;
  p99?: number;
  /** CPU time per message of both processes (medians over the runs). */
  cpu?: CpuPerMessage;
  /** The mechanism a user would otherwise use, measured in the same run. */
  baseline?: {
    mechanism: string;
    value: number;
    samples: number[];
    p50?: number;
    p99?: number;
    cpu?: CpuPerMessage;
  };
  /**
   * How much better than the baseline, always as "times better": for
   * throughput value / baseline, for latency baseline / value.
   */
  ratio?: number;
}

/**
 * CPU time per message, in µs, of the two processes of a measurement: each
 * process's own `getrusage(RUSAGE_SELF)` (every thread, user plus system)
 * over the measured messages, divided by their count.
 */
export interface CpuPerMessage {
  /** The benchmark process (the parent). */
  parent: number;
  /** The child at the other end. */
  child: number;
}

/** Options the runner passes to every case. */
export interface BenchOptions {
  /** Measured runs (after one warm-up run); the report uses their median. */
  runs: number;
  /** Smaller payloads and fewer iterations, for tests and smoke runs. */
  quick: boolean;
  /** Reports progress, such as `"pipe 1 GiB: run 3/5"`. */
  progress(message: string): void;
}

/** One area benchmark. */
export interface BenchCase {
  /** Stable identifier, such as `"pipe.stream"`. */
  id: string;
  /** The area it belongs to: `"pipe"`, `"spawn"`, `"socketpair"`, ... */
  area: string;
  /** Runs warm-up plus `runs` measured runs and returns the figures. */
  run(options: BenchOptions): Promise<BenchResult[]>;
}

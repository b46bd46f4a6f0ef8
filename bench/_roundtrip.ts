/**
 * Round-trip cases under three conditions, each mechanism against its
 * baselines in the same run, alternating:
 *
 * - `"tight"`: round trips back to back (the caller's count);
 * - `"paced"`: one round trip per ms, 500 of them (100 with --quick), both
 *   processes idle in between, as request/response traffic looks; each
 *   child is new, so these are its first round trips (its JavaScript runs
 *   before V8 optimizes it);
 * - `"paced_warm"`: the same after 20,000 back-to-back and then 1,000
 *   paced round trips (200 and 50 with --quick) in the same child that are
 *   not counted: a process that has served requests for a while, whose
 *   code V8 has optimized;
 * - `"loaded"`: back to back, 2,000 (200 with --quick), while one CPU-bound
 *   process runs (bench/_load.ts), started before and killed after each run
 *   so the mechanism and its baselines share it.

 * - `"loaded_warm"`: the same after 2,000 round trips (200 with --quick)
 *   under the same load in the same child that are not counted: a new
 *   child runs much of a loaded run before V8 has optimized it, as its
 *   compiler threads share the CPUs with the load. *
 * Every row has p50/p99 over all round trips and the CPU time per round trip
 * of both processes.
 *
 * @example A case of the seqpacket round trip, paced
 * ```ts ignore
 * import { roundTripCase } from "./_roundtrip.ts";
 * import { forkEcho } from "./_baselines.ts";
 *
 * const paced = roundTripCase({
 *   id: "socketpair.seqpacket_rtt",
 *   area: "socketpair",
 *   label: "seqpacket 64 B",
 *   condition: "paced",
 *   count: { full: 20_000, quick: 2_000 },
 *   mine: { mechanism: "seqpacket 64 B", start: startSeqpacketEcho },
 *   baselines: [{
 *     id: "socketpair.seqpacket_rtt",
 *     mechanism: "fork() IPC",
 *     start: () => forkEcho({ serialization: "json" }),
 *   }],
 * });
 * ```
 *
 * @module
 */

import {
  alternating,
  type Echo,
  measureRoundTrips,
  RoundTrips,
} from "./_baselines.ts";
import { withLoad } from "./_load.ts";
import { result } from "./_report.ts";
import type { BenchCase, BenchOptions, BenchResult } from "./_types.ts";

/** How the round trips run. */
export type Condition =
  | "tight"
  | "paced"
  | "paced_warm"
  | "loaded"
  | "loaded_warm";

/** Round trips of the paced and loaded conditions. */
export const CONDITION_COUNTS: Readonly<
  Record<Exclude<Condition, "tight">, { full: number; quick: number }>
> = {
  paced: { full: 500, quick: 100 },
  paced_warm: { full: 500, quick: 100 },
  loaded: { full: 2_000, quick: 200 },
  loaded_warm: { full: 2_000, quick: 200 },
};

/**
 * Round trips each child makes, under the same condition, before those of
 * a warm condition that are counted.
 */
export const WARM_UP: Readonly<
  Record<"paced_warm" | "loaded_warm", WarmUp>
> = {
  // V8 optimizes a function after some thousands of calls: 1,000 paced
  // round trips leave much of both sides' code unoptimized, as in a new
  // child; a process that has served a while has passed that.
  paced_warm: {
    full: 1_000,
    quick: 50,
    backToBack: { full: 20_000, quick: 200 },
  },
  loaded_warm: { full: 2_000, quick: 200 },
};

/** The warm-up of a warm condition. */
export interface WarmUp {
  /** Round trips under the condition itself, full and with --quick. */
  full: number;
  quick: number;
  /** Back-to-back round trips before those, if any. */
  backToBack?: { full: number; quick: number };
}

/** The pace of the paced condition: one round trip per this many ms. */
export const PACE_MS = 1;

/** A mechanism as a round-trip case drives it. */
export interface Contender {
  /** What it is, for the report. */
  mechanism: string;
  /** Starts its echo child; the start-up round trip is done. */
  start(): Promise<Echo>;
}

/** A baseline, with the id of the row that compares against it. */
export interface BaselineContender extends Contender {
  /**
   * The row's id for the tight condition, such as `"channel.rtt_json"`;
   * the other conditions append `_paced` or `_loaded`.
   */
  id: string;
}

/** Extra steps of a case, such as a C limit measured alongside. */
export interface ExtraStep {
  /** One more step of each run, alternated with the others. */
  step(measured: boolean, count: number): Promise<void>;
  /** The rows it adds, given the mechanism's round trips. */
  rows(mine: RoundTrips): BenchResult[];
}

/** What {@linkcode roundTripCase} measures. */
export interface RoundTripSpec {
  /** The case id for the tight condition; others append the condition. */
  id: string;
  /** The area. */
  area: string;
  /** Short name for the progress line, such as `"seqpacket 64 B"`. */
  label: string;
  /** The condition. */
  condition: Condition;
  /** Round trips of the tight condition, full and with --quick. */
  count: { full: number; quick: number };
  /** The mechanism. */
  mine: Contender;
  /** Its baselines: one row each. */
  baselines: BaselineContender[];
  /** Makes more steps and rows for each run of the case (tight only). */
  extra?: () => ExtraStep;
}

/**
 * The id suffix of a condition: `""`, or `"_"` and the condition, such as
 * `"_paced_warm"`.
 */
export function conditionSuffix(condition: Condition): string {
  return condition === "tight" ? "" : `_${condition}`;
}

/** What a condition adds to a mechanism's name in the report. */
export function conditionNote(condition: Condition): string {
  switch (condition) {
    case "tight":
      return "";
    case "paced":
      return `, paced: ${pace()}, new child`;
    case "paced_warm":
      return `, paced: ${pace()}, after ${warmUpText("paced_warm")}`;
    case "loaded":
      return ", loaded: 1 CPU-bound process running, new child";
    case "loaded_warm":
      return `, loaded: 1 CPU-bound process running, after ${
        warmUpText("loaded_warm")
      }`;
  }
}

function warmUpText(condition: "paced_warm" | "loaded_warm"): string {
  const { full, backToBack } = WARM_UP[condition];
  const n = (count: number) => count.toLocaleString("en-US");
  return backToBack === undefined
    ? `${n(full)} of warm-up`
    : `${n(backToBack.full)} back-to-back and ${n(full)} paced of warm-up`;
}

function pace(): string {
  return PACE_MS === 1
    ? "1 round trip per ms"
    : `1 round trip per ${PACE_MS} ms`;
}

/** Round trips per measurement of a condition. */
export function conditionCount(
  spec: Pick<RoundTripSpec, "condition" | "count">,
  options: Pick<BenchOptions, "quick">,
): number {
  const counts = spec.condition === "tight"
    ? spec.count
    : CONDITION_COUNTS[spec.condition];
  return options.quick ? counts.quick : counts.full;
}

/**
 * A case that measures a mechanism's round trips against its baselines
 * under one condition, alternating them inside every run.
 *
 * @param spec The mechanism, its baselines and the condition.
 * @returns The case; its rows carry p50/p99 and CPU per round trip.
 */
export function roundTripCase(spec: RoundTripSpec): BenchCase {
  const suffix = conditionSuffix(spec.condition);
  return {
    id: spec.id + suffix,
    area: spec.area,
    async run(options) {
      const count = conditionCount(spec, options);
      const { condition } = spec;
      const paced = condition === "paced" || condition === "paced_warm";
      const loaded = condition === "loaded" || condition === "loaded_warm";
      const interval = paced ? PACE_MS : 0;
      const warm = condition === "paced_warm" || condition === "loaded_warm"
        ? WARM_UP[condition]
        : undefined;
      const warmUp = warm === undefined
        ? 0
        : options.quick
        ? warm.quick
        : warm.full;
      const backToBack = warm?.backToBack === undefined
        ? 0
        : options.quick
        ? warm.backToBack.quick
        : warm.backToBack.full;
      const mine = new RoundTrips();
      const theirs = spec.baselines.map(() => new RoundTrips());
      const measure = (contender: Contender, into: RoundTrips) =>
      async (
        measured: boolean,
      ) => {
        const r = await measureRoundTrips(
          contender.start,
          count,
          interval,
          warmUp,
          backToBack,
        );
        if (measured) into.add(r);
      };
      const steps = [
        measure(spec.mine, mine),
        ...spec.baselines.map((b, i) => measure(b, theirs[i])),
      ];
      const extra = spec.condition === "tight" ? spec.extra?.() : undefined;
      if (extra) steps.push((measured) => extra.step(measured, count));
      await alternating(
        options,
        `${spec.label}${
          spec.condition === "tight" ? "" : ` ${spec.condition}`
        } ×${count}`,
        steps,
        loaded ? (run) => withLoad(run) : undefined,
      );
      const mechanism = spec.mine.mechanism + conditionNote(spec.condition);
      const out: BenchResult[] = spec.baselines.map((b, i) =>
        result({
          id: b.id + suffix,
          mechanism,
          unit: "µs",
          higherIsBetter: false,
          samples: mine.samples,
          operations: mine.operations,
          cpu: mine.cpu,
          baseline: {
            mechanism: b.mechanism,
            samples: theirs[i].samples,
            operations: theirs[i].operations,
            cpu: theirs[i].cpu,
          },
        })
      );
      if (extra) out.push(...extra.rows(mine));
      return out;
    },
  };
}

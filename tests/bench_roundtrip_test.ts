// bench/_roundtrip.ts: round-trip cases, one row per baseline and condition.

import assert from "node:assert/strict";
import {
  conditionCount,
  conditionNote,
  roundTripCase,
} from "../bench/_roundtrip.ts";
import { fakeEcho, QUIET } from "./_bench_util.ts";
import { test } from "./_util.ts";

test("roundTripCase() makes one row per baseline with the condition in the id and the mechanism", async () => {
  const contender = (cpu: number[]) => ({
    start: () => Promise.resolve(fakeEcho(cpu).echo),
  });
  const make = (
    condition: "tight" | "paced" | "paced_warm" | "loaded_warm",
  ) =>
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
  assert.match(conditionNote("paced"), /1 round trip per ms, new child/);
  const warm = await make("paced_warm").run({ ...QUIET, runs: 1 });
  assert.deepEqual(warm.map((r) => r.id), [
    "x.rtt_a_paced_warm",
    "x.rtt_b_paced_warm",
  ]);
  assert.match(
    conditionNote("paced_warm"),
    /1 round trip per ms, after 20,000 back-to-back and 1,000 paced of warm-up/,
  );
  assert.equal(make("loaded_warm").id, "x.rtt_loaded_warm");
  assert.match(conditionNote("loaded"), /CPU-bound process running, new child/);
  assert.match(
    conditionNote("loaded_warm"),
    /CPU-bound process running, after 2,000 of warm-up/,
  );
  assert.match(conditionNote("loaded"), /CPU-bound/);
});

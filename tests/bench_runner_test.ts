// bench/_runner.ts: the area files it finds; and what every bench file
// leaves to the defaults.

import assert from "node:assert/strict";
import { AREA_ORDER, discoverAreas } from "../bench/_runner.ts";
import { test } from "./_util.ts";

test(
  "discoverAreas() lists <area>_bench.ts files in the report's order, the rest by name",
  async () => {
    const dir = new URL("./fixtures/bench/", import.meta.url);
    const areas = (await discoverAreas(dir)).map((a) => a.area);
    assert.deepEqual(areas, ["broken", "steady", "unbuilt"]);
    // Every area of the report has its file, in the report's order.
    const real = (await discoverAreas()).map((a) => a.area);
    assert.deepEqual(real, AREA_ORDER);
  },
  { read: true },
);

test(
  "bench code and its children pass no spin option: every row uses the defaults",
  async () => {
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
  { read: true },
);

// The checks of `deno task check` that are scripts of this repository:
// scripts/check_cycles.ts and scripts/check_internals.ts.

import assert from "node:assert/strict";
import { circle, cycles, importGraph } from "../scripts/check_cycles.ts";
import { shownInternals } from "../scripts/check_internals.ts";
import { test } from "./_util.ts";

const ROOT = "file:///repo/";

function graphOf(edges: Record<string, string[]>): Map<string, Set<string>> {
  return new Map(
    Object.entries(edges).map(([from, to]) => [from, new Set(to)]),
  );
}

test("cycles() finds no cycle in a layered graph", () => {
  const graph = graphOf({
    "mod.ts": ["from_fd.ts", "pipe.ts"],
    "from_fd.ts": ["_adopt.ts"],
    "_adopt.ts": ["pipe.ts", "ffi/libc.ts"],
    "pipe.ts": ["ffi/libc.ts"],
    "ffi/libc.ts": [],
  });
  assert.deepEqual(cycles(graph), []);
});

test("cycles() finds each circle of imports, and one through itself", () => {
  const graph = graphOf({
    "a.ts": ["b.ts"],
    "b.ts": ["c.ts", "d.ts"],
    "c.ts": ["a.ts"],
    "d.ts": ["e.ts"],
    "e.ts": ["e.ts"],
  });
  assert.deepEqual(cycles(graph), [["e.ts"], ["a.ts", "b.ts", "c.ts"]]);
  assert.deepEqual(circle(graph, ["a.ts", "b.ts", "c.ts"]), [
    "a.ts",
    "b.ts",
    "c.ts",
    "a.ts",
  ]);
});

test("importGraph() keeps the project's files and counts type-only imports only when asked", () => {
  const info = {
    modules: [
      {
        specifier: `${ROOT}unix_socket.ts`,
        dependencies: [
          { type: { specifier: `${ROOT}_adopt.ts` } },
          { code: { specifier: `${ROOT}_received.ts` } },
          { code: { specifier: "npm:/nats@2.29" } },
        ],
      },
      {
        specifier: `${ROOT}_adopt.ts`,
        dependencies: [{ code: { specifier: `${ROOT}unix_socket.ts` } }],
      },
      { specifier: "npm:/nats@2.29", dependencies: [] },
    ],
  };
  const runtime = importGraph(info, ROOT, false);
  assert.deepEqual([...runtime.keys()].sort(), ["_adopt.ts", "unix_socket.ts"]);
  assert.deepEqual([...runtime.get("unix_socket.ts")!], ["_received.ts"]);
  assert.deepEqual(cycles(runtime), []);
  const typed = importGraph(info, ROOT, true);
  assert.deepEqual(cycles(typed), [["_adopt.ts", "unix_socket.ts"]]);
});

test("shownInternals() names _ members, symbol-keyed internals and @internal, not public protocols", () => {
  const at = { filename: "file:///repo/pipe.ts", line: 1 };
  const member = (name: string, tags: string[] = []) => ({
    name,
    location: at,
    jsDoc: { tags: tags.map((kind) => ({ kind })) },
  });
  const json = {
    nodes: {
      "file:///repo/pipe.ts": {
        symbols: [{
          name: "PipeReader",
          declarations: [{
            kind: "class",
            location: at,
            def: {
              constructors: [{
                location: at,
                jsDoc: { tags: [{ kind: "internal" }] },
              }],
              methods: [
                member("read"),
                member("_release"),
                member("[releaseFd]"),
                member("[Symbol.dispose]"),
                member("[Symbol.asyncIterator]"),
                member('[Symbol.for("Deno.customInspect")]'),
              ],
              properties: [member("rawFd"), member("_mode")],
            },
          }],
        }],
      },
    },
  };
  assert.deepEqual(shownInternals(json).map((line) => line.split(" ")[1]), [
    "PipeReader.[releaseFd]",
    "PipeReader._mode",
    "PipeReader._release",
    "PipeReader.constructor",
  ]);
});

/**
 * Fails when the project's modules import each other in a circle. Part of
 * `deno task check`.
 *
 * The graph is Deno's own (`deno info --json`) from every entry point in
 * `deno.json` `exports`, restricted to the project's files. Type-only
 * imports (`import type`, `export type ... from`) count as edges too: a
 * module that needs another's types sits above it as much as one that
 * needs its values, and a cycle of types is a cycle of concepts.
 *
 * Usage: `deno run --allow-read --allow-run scripts/check_cycles.ts`
 *
 * @module
 */

interface Dependency {
  code?: { specifier: string };
  type?: { specifier: string };
}
interface InfoJson {
  modules: { specifier: string; dependencies?: Dependency[] }[];
}

/** Import edges between the project's files, keyed by path from `root`. */
export function importGraph(
  info: InfoJson,
  root: string,
  types: boolean,
  graph: Map<string, Set<string>> = new Map(),
): Map<string, Set<string>> {
  const local = (specifier: string) =>
    specifier.startsWith(root) ? specifier.slice(root.length) : undefined;
  for (const module of info.modules) {
    const from = local(module.specifier);
    if (from === undefined) continue;
    let edges = graph.get(from);
    if (edges === undefined) graph.set(from, edges = new Set());
    for (const dependency of module.dependencies ?? []) {
      const target = dependency.code ?? (types ? dependency.type : undefined);
      const to = target === undefined ? undefined : local(target.specifier);
      if (to !== undefined) edges.add(to);
    }
  }
  return graph;
}

/**
 * The strongly connected components with more than one module, or with a
 * module that imports itself: each is a set of modules that import each
 * other in a circle (Tarjan's algorithm, iterative).
 */
export function cycles(graph: Map<string, Set<string>>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const found: string[][] = [];
  let next = 0;
  for (const start of [...graph.keys()].sort()) {
    if (index.has(start)) continue;
    const work: [string, Iterator<string>][] = [];
    const enter = (node: string) => {
      index.set(node, next);
      low.set(node, next);
      next++;
      stack.push(node);
      onStack.add(node);
      work.push([node, (graph.get(node) ?? new Set()).values()]);
    };
    enter(start);
    while (work.length > 0) {
      const [node, edges] = work[work.length - 1];
      const edge = edges.next();
      if (!edge.done) {
        const to = edge.value;
        if (!index.has(to)) enter(to);
        else if (onStack.has(to)) {
          low.set(node, Math.min(low.get(node)!, index.get(to)!));
        }
        continue;
      }
      work.pop();
      if (work.length > 0) {
        const parent = work[work.length - 1][0];
        low.set(parent, Math.min(low.get(parent)!, low.get(node)!));
      }
      if (low.get(node) !== index.get(node)) continue;
      const component: string[] = [];
      let member;
      do {
        member = stack.pop()!;
        onStack.delete(member);
        component.push(member);
      } while (member !== node);
      if (component.length > 1 || graph.get(node)?.has(node)) {
        found.push(component.sort());
      }
    }
  }
  return found;
}

/** One circular path through a component, for the message. */
export function circle(
  graph: Map<string, Set<string>>,
  component: string[],
): string[] {
  const members = new Set(component);
  const start = component[0];
  const previous = new Map<string, string>();
  const queue = [start];
  for (let i = 0; i < queue.length; i++) {
    for (const to of graph.get(queue[i]) ?? []) {
      if (!members.has(to)) continue;
      if (to === start) {
        const path = [start];
        for (let at = queue[i]; at !== start; at = previous.get(at)!) {
          path.splice(1, 0, at);
        }
        return [...path, start];
      }
      if (!previous.has(to)) {
        previous.set(to, queue[i]);
        queue.push(to);
      }
    }
  }
  return component;
}

async function info(entry: string): Promise<InfoJson> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!output.success) throw new Error(`deno info ${entry} failed`);
  return JSON.parse(new TextDecoder().decode(output.stdout));
}

if (import.meta.main) {
  const config = JSON.parse(await Deno.readTextFile("deno.json"));
  const entries = Object.values(config.exports as Record<string, string>);
  const root = new URL(`${Deno.cwd()}/`, "file://").href;
  const graph = new Map<string, Set<string>>();
  const types = Deno.args.includes("--types");
  for (const entry of entries) {
    importGraph(await info(entry), root, types, graph);
  }
  const found = cycles(graph);
  for (const component of found) {
    console.error(`Import cycle: ${circle(graph, component).join(" -> ")}`);
    console.error(`  (modules in it: ${component.join(", ")})`);
  }
  if (found.length > 0) Deno.exit(1);
  console.log(
    `No import cycle among ${graph.size} modules from ${entries.length} entry points`,
  );
}

/**
 * Fails when a public class, function or substantive method of an entry
 * point has no `@example` in its documentation. Part of `deno task check`.
 *
 * Substantive: every method but `close`, `ref`, `unref`, accessors and
 * symbol-keyed protocol methods (`[Symbol.dispose]`, async iteration,
 * `Deno.customInspect`) and members tagged `@internal` (not public API).
 *
 * Usage: `deno run --allow-read --allow-run scripts/check_examples.ts <entry>...`
 *
 * @module
 */

const ROUTINE = new Set(["close", "ref", "unref"]);

interface JsDoc {
  tags?: { kind: string }[];
}
interface Method {
  name: string;
  kind: string;
  accessibility?: string;
  jsDoc?: JsDoc;
}
interface Declaration {
  kind: string;
  jsDoc?: JsDoc;
  location: { filename: string; line: number };
  def?: { methods?: Method[] };
}
interface DocJson {
  nodes: Record<
    string,
    { symbols?: { name: string; declarations: Declaration[] }[] }
  >;
}

function hasExample(doc: JsDoc | undefined): boolean {
  return doc?.tags?.some((tag) => tag.kind === "example") ?? false;
}

/** Where each undocumented symbol is, as `file:line name`. */
export function missingExamples(json: DocJson): string[] {
  const missing = new Set<string>();
  for (const module of Object.values(json.nodes)) {
    for (const symbol of module.symbols ?? []) {
      for (const declaration of symbol.declarations) {
        const where = `${
          declaration.location.filename.replace(`file://${Deno.cwd()}/`, "")
        }:${declaration.location.line}`;
        if (declaration.kind !== "class" && declaration.kind !== "function") {
          continue;
        }
        if (!hasExample(declaration.jsDoc)) {
          missing.add(`${where} ${declaration.kind} ${symbol.name}`);
        }
        if (declaration.kind !== "class") continue;
        for (const method of declaration.def?.methods ?? []) {
          if (
            method.name.startsWith("[") || ROUTINE.has(method.name) ||
            method.kind === "getter" || method.kind === "setter" ||
            method.accessibility === "private" ||
            method.jsDoc?.tags?.some((tag) => tag.kind === "internal")
          ) {
            continue;
          }
          if (!hasExample(method.jsDoc)) {
            missing.add(`${where} method ${symbol.name}.${method.name}`);
          }
        }
      }
    }
  }
  return [...missing].sort();
}

if (import.meta.main) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--json", ...Deno.args],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!output.success) Deno.exit(1);
  const missing = missingExamples(
    JSON.parse(new TextDecoder().decode(output.stdout)),
  );
  if (missing.length > 0) {
    console.error(
      `${missing.length} public symbols have no @example:\n${
        missing.join("\n")
      }`,
    );
    Deno.exit(1);
  }
  console.log(
    "Every public class, function and substantive method has an @example",
  );
}

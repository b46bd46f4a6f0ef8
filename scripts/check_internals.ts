/**
 * Fails when the documentation of an entry point shows an internal: a
 * symbol or member whose name starts with `_`, a symbol-keyed member other
 * than the public protocols (`Symbol.dispose`, `Symbol.asyncDispose`,
 * `Symbol.iterator`, `Symbol.asyncIterator`, `Deno.customInspect`), or one
 * tagged `@internal`. Part of `deno task check`.
 *
 * Internals that other modules of the package need are members keyed by a
 * symbol from a private module (`_keys.ts`) and tagged `@ignore`, which
 * `deno doc` leaves out.
 *
 * Usage: `deno run --allow-read --allow-run scripts/check_internals.ts <entry>...`
 *
 * @module
 */

const PROTOCOLS = new Set([
  "[Symbol.dispose]",
  "[Symbol.asyncDispose]",
  "[Symbol.iterator]",
  "[Symbol.asyncIterator]",
  '[Symbol.for("Deno.customInspect")]',
]);

interface JsDoc {
  tags?: { kind: string }[];
}
interface Member {
  name?: string;
  jsDoc?: JsDoc;
  location?: { filename: string; line: number };
}
interface Declaration {
  kind: string;
  jsDoc?: JsDoc;
  location: { filename: string; line: number };
  def?: {
    constructors?: Member[];
    methods?: Member[];
    properties?: Member[];
  };
}
interface DocJson {
  nodes: Record<
    string,
    { symbols?: { name: string; declarations: Declaration[] }[] }
  >;
}

function internalTag(doc: JsDoc | undefined): boolean {
  return doc?.tags?.some((tag) => tag.kind === "internal") ?? false;
}

function internalName(name: string): boolean {
  return name.startsWith("_") ||
    (name.startsWith("[") && !PROTOCOLS.has(name));
}

/** Where each internal shown by the documentation is, as `file:line name`. */
export function shownInternals(json: DocJson): string[] {
  const found = new Set<string>();
  const where = (location: { filename: string; line: number }) =>
    `${
      location.filename.replace(`file://${Deno.cwd()}/`, "")
    }:${location.line}`;
  for (const module of Object.values(json.nodes)) {
    for (const symbol of module.symbols ?? []) {
      for (const declaration of symbol.declarations) {
        if (internalName(symbol.name) || internalTag(declaration.jsDoc)) {
          found.add(`${where(declaration.location)} ${symbol.name}`);
        }
        const def = declaration.def ?? {};
        for (
          const member of [
            ...def.constructors ?? [],
            ...def.methods ?? [],
            ...def.properties ?? [],
          ]
        ) {
          const name = member.name ?? "constructor";
          if (internalName(name) || internalTag(member.jsDoc)) {
            const at = member.location ?? declaration.location;
            found.add(`${where(at)} ${symbol.name}.${name}`);
          }
        }
      }
    }
  }
  return [...found].sort();
}

if (import.meta.main) {
  let failed = false;
  for (const entry of Deno.args) {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["doc", "--json", entry],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    if (!output.success) throw new Error(`deno doc ${entry} failed`);
    const shown = shownInternals(
      JSON.parse(new TextDecoder().decode(output.stdout)),
    );
    for (const line of shown) {
      console.error(`${entry}: internal shown: ${line}`);
    }
    failed ||= shown.length > 0;
  }
  if (failed) {
    console.error(
      "Key internals by a symbol from a private module and tag them @ignore",
    );
    Deno.exit(1);
  }
}

/**
 * How endpoints print with `console.log` and `Deno.inspect`: their kind, then
 * the fields that say what they are and whether they can still be used, as
 * in `PipeReader { fd: 7, state: "open" }`. Endpoints define
 * `[Symbol.for("Deno.customInspect")]` and call {@linkcode inspectEndpoint}.
 *
 * @module
 */

/** The `inspect` function Deno hands to a custom inspector. */
export type Inspect = (value: unknown, options?: unknown) => string;

/** The state shown for an fd-backed endpoint. */
export interface FdState {
  /** The fd number while open; absent once closed. */
  fd?: number;
  /** `"open"` or `"closed"`. */
  state: "open" | "closed";
  /** Present (false) only when the endpoint was unref'd. */
  ref?: false;
}

/**
 * Formats an endpoint as `Kind { ...fields }` with Deno's own formatting of
 * the fields, so colours and depth follow the caller's options.
 */
export function inspectEndpoint(
  kind: string,
  fields: object,
  inspect: Inspect,
  options: unknown,
): string {
  return `${kind} ${inspect(fields, options)}`;
}

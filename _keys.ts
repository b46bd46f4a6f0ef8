/**
 * The keys of what endpoints show only to this package's own modules:
 * symbols that no entry point exports, on members tagged `@ignore` so that
 * the documentation leaves them out. A module recognises another's
 * endpoints by {@linkcode endpointKind} instead of importing its class for
 * `instanceof`, so endpoint modules need not import each other.
 *
 * @module
 */

/** The kind of every endpoint class, as its class name. */
export type EndpointKind =
  | "PipeReader"
  | "PipeWriter"
  | "UnixSocket"
  | "UnixListener"
  | "SharedMemory"
  | "ShmSender"
  | "ShmReceiver"
  | "Sender"
  | "Receiver";

/** An endpoint's kind: a getter on the prototype of every endpoint class. */
export const endpointKind: unique symbol = Symbol("endpoint kind");

/**
 * Gives up an endpoint's fd without closing it and returns it; the
 * endpoint is closed as far as this process is concerned. On every
 * endpoint class.
 */
export const releaseFd: unique symbol = Symbol("release fd");

/**
 * Closes an endpoint that was transferred in a message: closed here, but
 * not by the program's own `close()` (a loop over it fails rather than
 * ends). On endpoints whose loops tell the two apart (`ShmReceiver`).
 */
export const givenAway: unique symbol = Symbol("given away");

/**
 * Whether a pipe reader's stream is being read (locked to a reader): on
 * `PipeReader`.
 */
export const streamInUse: unique symbol = Symbol("stream in use");

/** The kind of an endpoint of this package, or `undefined` for anything else. */
export function kindOf(value: unknown): EndpointKind | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  return (value as { [endpointKind]?: EndpointKind })[endpointKind];
}

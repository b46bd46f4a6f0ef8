/**
 * What the NATS ends check of their arguments, and the error of an end used
 * after `close()`.
 *
 * @module
 */

const DEFAULT_CAPACITY = 256;
const MAX_CAPACITY = 1_000_000;
/** A subject token: no whitespace, no wildcard. */
const TOKEN = /^[^\s.*>]+$/;
/**
 * A durable consumer's name: a token that is also a file name on the
 * server (no path separators, no control characters).
 */
// deno-lint-ignore no-control-regex
const DURABLE = /^[^\s.*>/\\\x00-\x1f\x7f]+$/;

export function checkSubject(subject: string, doing: string): void {
  if (
    typeof subject !== "string" || subject.length === 0 ||
    !subject.split(".").every((token) => TOKEN.test(token))
  ) {
    throw new TypeError(
      `Cannot ${doing}: the subject must be dot-separated tokens without spaces or wildcards, got ${
        JSON.stringify(subject)
      }`,
    );
  }
}

export function checkCapacity(
  value: number | undefined,
  doing: string,
): number {
  if (value === undefined) return DEFAULT_CAPACITY;
  if (!Number.isInteger(value) || value < 1 || value > MAX_CAPACITY) {
    throw new RangeError(
      `Cannot ${doing}: capacity must be an integer from 1 to ${MAX_CAPACITY}, got ${value}`,
    );
  }
  return value;
}

/**
 * A durable consumer's name as NATS takes it: not empty, no whitespace,
 * dots or wildcards (the client refuses it, and the receiver would retry
 * for ever).
 */
export function checkDurable(durable: unknown, doing: string): void {
  if (durable === undefined) return;
  if (typeof durable !== "string" || !DURABLE.test(durable)) {
    throw new TypeError(
      `Cannot ${doing}: jetstream.durable must be a name without spaces, dots, wildcards, slashes or control characters, got ${
        JSON.stringify(durable)
      }`,
    );
  }
}

/** `maxPendingBytes`, checked: a positive integer, or the default. */
export function checkMaxPending(
  value: unknown,
  fallback: number,
  doing: string,
): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
    throw new RangeError(
      `Cannot ${doing}: maxPendingBytes must be a positive integer, got ${
        typeof value === "number" ? value : typeof value
      }`,
    );
  }
  return value;
}

/** `servers`: a string, or an array of them, or absent. */
export function checkServers(servers: unknown, doing: string): void {
  if (
    servers === undefined || typeof servers === "string" ||
    (Array.isArray(servers) && servers.every((s) => typeof s === "string"))
  ) {
    return;
  }
  throw new TypeError(
    `Cannot ${doing}: servers must be a string or an array of strings, got ${
      servers === null ? "null" : typeof servers
    }`,
  );
}

export function closedError(what: string): Deno.errors.BadResource {
  return new Deno.errors.BadResource(`Cannot use ${what}: it is closed`);
}

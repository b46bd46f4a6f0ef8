/**
 * The limits on what decoding one received value may build, and their
 * defaults: a few bytes on the wire can ask for much more memory and time,
 * so a receiver bounds the result, not only the message.
 *
 * @module
 */

import { MAX_DEPTH } from "./_codec_tags.ts";
import { checkNumberOption } from "../_socket_options.ts";

/**
 * Limits on what decoding one received value may build. A few bytes on the
 * wire can ask for much more memory and time (an empty object is 2 bytes,
 * an array slot or a bigint digit 1), so the receiver bounds the result,
 * not only the message.
 */
export interface DecodeLimits {
  /**
   * The most memory the decoded value may take, estimated from V8's object
   * sizes, in bytes; the contents of `ArrayBuffer`s and typed arrays are
   * not counted (they are the message's own bytes, which `maxMessageBytes`
   * bounds). Default 256 MiB.
   */
  maxBytes?: number;
  /**
   * The most elements one value may have: every value in it (nested ones
   * included), every array slot (holes too) and every blob. Default 2^24
   * (16_777_216).
   */
  maxElements?: number;
  /**
   * The deepest nesting, from 1 to 1000 (senders refuse values nested
   * deeper than 1000 levels). Default 1000.
   */
  maxDepth?: number;
  /**
   * The most endpoints (pipe ends, sockets, channel ends, shared memory)
   * one message may carry, from 0 to 253. A message with more is refused
   * (`InvalidData`, every fd it carried closed) and its sender dropped. A
   * receiver that expects plain data sets 0, so that no sender can make
   * this process hold fds it never asked for: JavaScript closes nothing
   * that is dropped, and an endpoint holds its fd until it is closed.
   * Default 253 (as many as one message can carry).
   */
  maxEndpoints?: number;
}

/** The most fds one message can carry (`SCM_MAX_FD` is 253). */
const MAX_ENDPOINTS = 253;

/** The limits of a receiver that sets none. */
export const DEFAULT_LIMITS: Readonly<Required<DecodeLimits>> = Object.freeze({
  maxBytes: 256 * 1024 * 1024,
  maxElements: 1 << 24,
  maxDepth: MAX_DEPTH,
  maxEndpoints: MAX_ENDPOINTS,
});

/** The range of each limit. */
const RANGES: Readonly<Record<keyof DecodeLimits, readonly [number, number]>> =
  {
    maxBytes: [1, Number.MAX_SAFE_INTEGER],
    maxElements: [1, Number.MAX_SAFE_INTEGER],
    maxDepth: [1, MAX_DEPTH],
    maxEndpoints: [0, MAX_ENDPOINTS],
  };
const KEYS = Object.keys(RANGES) as (keyof DecodeLimits)[];

/**
 * Checks `limits` and fills in the defaults: every given field must be an
 * integer in its range (`maxDepth` 1 to {@linkcode MAX_DEPTH},
 * `maxEndpoints` 0 to 253, the others positive), else a RangeError that
 * says which.
 */
export function resolveLimits(
  limits: DecodeLimits | undefined,
  doing: string,
): Readonly<Required<DecodeLimits>> {
  if (limits === undefined) return DEFAULT_LIMITS;
  if (typeof limits !== "object" || limits === null) {
    throw new TypeError(`Cannot ${doing}: limits must be an object`);
  }
  const resolved = { ...DEFAULT_LIMITS };
  for (const key of KEYS) {
    const value = limits[key];
    if (value === undefined) continue;
    const [least, most] = RANGES[key];
    checkNumberOption(value, `limits.${key}`, doing);
    if (!Number.isInteger(value) || value < least || value > most) {
      throw new RangeError(
        `Cannot ${doing}: limits.${key} must be an integer from ${least} to ${most}, got ${value}`,
      );
    }
    resolved[key] = value;
  }
  return Object.freeze(resolved);
}

/** The failure of a value that would build more than the limits allow. */
export function overLimit(
  key: keyof DecodeLimits,
  limit: number,
  what: string,
): Deno.errors.InvalidData {
  return new Deno.errors.InvalidData(
    `Cannot receive on channel: the message exceeds limits.${key} (${limit}): ${what}; ` +
      "a receiver that expects such values can raise its limits",
  );
}

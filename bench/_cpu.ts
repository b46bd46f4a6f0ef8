/**
 * CPU time of this process, for the CPU-per-message figures of the
 * benchmarks: `getrusage(RUSAGE_SELF)`, user plus system time of every
 * thread, in µs. The parent and the Deno children of the benchmarks each
 * call it on themselves; a child reports its figure to the parent when asked
 * (over the mechanism under test, outside the timed messages). Needs
 * `--allow-ffi`.
 *
 * `RUSAGE_CHILDREN` is not used: it only counts children once they are
 * reaped, includes their start-up and exit, and mixes in every other reaped
 * child (such as the CPU-bound process of the loaded rows).
 *
 * @example The CPU time of a loop
 * ```ts
 * import { cpuUs } from "./_cpu.ts";
 *
 * const before = cpuUs();
 * let x = 0;
 * for (let i = 0; i < 1e6; i++) x += i;
 * console.log(`${cpuUs() - before} µs of CPU`, x > 0);
 * ```
 *
 * @module
 */

const RUSAGE_SELF = 0;
/** `struct rusage` is 144 bytes on 64-bit Linux: two timevals, then 14 longs. */
const RUSAGE_LONGS = 18;

let getrusage:
  | ((who: number, usage: BigInt64Array<ArrayBuffer>) => number)
  | undefined;
const usage = new BigInt64Array(RUSAGE_LONGS);

/**
 * CPU time this process has used so far (every thread, user plus system),
 * from `getrusage(RUSAGE_SELF)`.
 *
 * @returns Microseconds.
 */
export function cpuUs(): number {
  if (getrusage === undefined) {
    const lib = Deno.dlopen("libc.so.6", {
      getrusage: { parameters: ["i32", "buffer"], result: "i32" },
    });
    getrusage = lib.symbols.getrusage;
  }
  if (getrusage(RUSAGE_SELF, usage) !== 0) {
    throw new Error("getrusage(RUSAGE_SELF) failed");
  }
  // ru_utime and ru_stime: { tv_sec, tv_usec } each.
  return Number(usage[0]) * 1e6 + Number(usage[1]) +
    Number(usage[2]) * 1e6 + Number(usage[3]);
}

/**
 * Encodes a CPU figure as 8 bytes (little-endian float64), the answer of the
 * byte-message children (seqpacket and shm queue echoes).
 *
 * @param us The figure.
 * @returns 8 bytes.
 */
export function encodeCpu(us: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setFloat64(0, us, true);
  return bytes;
}

/**
 * Decodes {@linkcode encodeCpu}'s 8 bytes, checking the length and that the
 * figure is a finite non-negative number.
 *
 * @param bytes The answer.
 * @returns The figure in µs.
 */
export function decodeCpu(bytes: Uint8Array): number {
  if (bytes.byteLength !== 8) {
    throw new Error(
      `A CPU figure is 8 bytes, the child answered ${bytes.byteLength}`,
    );
  }
  const us = new DataView(bytes.buffer, bytes.byteOffset, 8).getFloat64(
    0,
    true,
  );
  if (!Number.isFinite(us) || us < 0) {
    throw new Error(`The child reported a bad CPU figure: ${us}`);
  }
  return us;
}

/** The byte message that asks a byte-message echo child for its CPU time. */
export const CPU_QUERY: Uint8Array<ArrayBuffer> = new Uint8Array([0x3f]);

/** The message that asks a `fork()` or channel child for its CPU time. */
export const CPU_QUESTION = "cpu?";

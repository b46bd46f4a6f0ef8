/**
 * Helpers for the shared-memory wait, primitive and server tests: children
 * with a region as fd 3, and line-by-line reading of a child's output with
 * a bound on every read.
 *
 * @module
 */

import { type ChildProcess, type SharedMemory, spawn } from "../mod.ts";
import { DENO, fixture, withTimeout } from "./_util.ts";

/** The child of the wait and primitive tests; its first argument is its mode. */
export const SYNC_CHILD: string = fixture("shm_sync_child.ts");

/** Reads a stream one line at a time; every read is bounded. */
export class Lines {
  #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";
  #done = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  }

  /**
   * The next line (without its newline), or `null` at the end. Throws
   * naming `what` when none comes within `ms`.
   */
  async next(what: string, ms = 20_000): Promise<string | null> {
    for (;;) {
      const at = this.#buffer.indexOf("\n");
      if (at !== -1) {
        const line = this.#buffer.slice(0, at);
        this.#buffer = this.#buffer.slice(at + 1);
        return line;
      }
      if (this.#done) {
        const rest = this.#buffer;
        this.#buffer = "";
        return rest === "" ? null : rest;
      }
      const { value, done } = await withTimeout(this.#reader.read(), ms, what);
      if (done) this.#done = true;
      else this.#buffer += value;
    }
  }

  /** Every line left, up to the end of the stream. */
  async rest(what: string, ms = 60_000): Promise<string[]> {
    const out: string[] = [];
    for (;;) {
      const line = await this.next(what, ms);
      if (line === null) return out;
      out.push(line);
    }
  }

  /** Stops reading. */
  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }
}

/** A running child and its output lines; `await using` kills and reaps it. */
export class Child implements AsyncDisposable {
  /** The process. */
  readonly child: ChildProcess;
  /** Its stdout, line by line. */
  readonly out: Lines;

  /** Starts `args` under Deno with `fds`, stdout piped. */
  constructor(args: string[], fds: SharedMemory[] = []) {
    this.child = spawn(DENO, { args, fds, stdout: "piped" });
    this.out = new Lines(this.child.stdout);
  }

  /** Kills the child if it still runs, reaps it, stops reading. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.out.cancel();
    await this.child[Symbol.asyncDispose]();
  }
}

/**
 * Starts {@linkcode SYNC_CHILD} with `mem` as its fd 3 and `args` (the mode
 * first), stdout piped.
 */
export function syncChild(mem: SharedMemory, ...args: string[]): Child {
  return new Child(["run", "--allow-ffi", SYNC_CHILD, ...args], [mem]);
}

/** Waits (bounded) for a child to exit and checks it succeeded. */
export async function exitedOk(
  { child, out }: Child,
  what: string,
  ms = 60_000,
): Promise<string[]> {
  const rest = await out.rest(what, ms);
  const status = await withTimeout(child.status, ms, what);
  if (!status.success) {
    throw new Error(`${what} failed: ${JSON.stringify(status)}, ${rest}`);
  }
  return rest;
}

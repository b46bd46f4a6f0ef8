/**
 * Helpers of the NATS tests: whether `nats-server` can run here, a local
 * server per test, the peer process, and line-by-line reading of its output
 * with bounded waits.
 *
 * @module
 */

import { type ChildProcess, type ChildStatus, spawn } from "../mod.ts";
import {
  findNatsServer,
  type NatsServer,
  startNatsServer,
} from "../nats/_server.ts";
import { DENO, fixture, listDir, readProcText, withTimeout } from "./_util.ts";

/**
 * Why the NATS tests cannot run here (no `nats-server`), or `undefined`.
 * CI installs it (`.ci/run`); elsewhere `apt-get install nats-server`.
 */
export const NATS_MISSING: string | undefined = await findNatsServer() === null
  ? "nats-server is not installed (apt-get install nats-server): the NATS tests are skipped"
  : undefined;
if (NATS_MISSING !== undefined) console.warn(NATS_MISSING);

/** The permissions of a NATS test: the server, its store, child processes. */
export const NATS_PERMISSIONS: Deno.PermissionOptionsObject = {
  net: ["127.0.0.1"],
  run: true,
  read: true,
  write: true,
};

/** Starts a local server for one test (stopped by `await using`). */
export function natsServer(jetstream = false): Promise<NatsServer> {
  return startNatsServer({ jetstream });
}

const CONFIG = new URL("../deno.json", import.meta.url).pathname;
const PEER = fixture("nats_peer.ts");

/** A peer process (see `tests/fixtures/nats_peer.ts`) and its output. */
export class Peer implements AsyncDisposable {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  #reading: Promise<void>;
  #changed = Promise.withResolvers<void>();
  #ended = false;
  #stdin: WritableStreamDefaultWriter<Uint8Array> | undefined;

  constructor(args: string[], stdin = false) {
    this.child = spawn(DENO, {
      args: ["run", "--config", CONFIG, "--allow-net=127.0.0.1", PEER, ...args],
      stdin: stdin ? "piped" : "null",
      stdout: "piped",
    });
    if (stdin) this.#stdin = this.child.stdin.getWriter();
    this.#reading = this.#read();
  }

  async #read(): Promise<void> {
    let pending = "";
    try {
      for await (
        const text of this.child.stdout.pipeThrough(new TextDecoderStream())
      ) {
        pending += text;
        const lines = pending.split("\n");
        pending = lines.pop()!;
        if (lines.length > 0) {
          this.lines.push(...lines);
          this.#signal();
        }
      }
    } finally {
      this.#ended = true;
      this.#signal();
    }
  }

  #signal(): void {
    const changed = this.#changed;
    this.#changed = Promise.withResolvers<void>();
    changed.resolve();
  }

  /**
   * The first line (from `from` on) that `match` accepts; throws when the
   * output ends first or after `ms`.
   */
  async waitFor(
    match: (line: string) => boolean,
    what: string,
    ms = 20_000,
    from = 0,
  ): Promise<string> {
    const deadline = performance.now() + ms;
    for (let seen = from;;) {
      for (; seen < this.lines.length; seen++) {
        if (match(this.lines[seen])) return this.lines[seen];
      }
      if (this.#ended) {
        throw new Error(
          `The peer's output ended without ${what}: ${this.tail()}`,
        );
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new Error(`Timed out waiting for ${what}: ${this.tail()}`);
      }
      await withTimeout(this.#changed.promise, left, what).catch(() => {});
    }
  }

  /** The last lines, for failure messages. */
  tail(): string {
    return JSON.stringify(this.lines.slice(-8));
  }

  /** Writes a line to its stdin. */
  async say(line: string): Promise<void> {
    await this.#stdin!.write(new TextEncoder().encode(line + "\n"));
  }

  /**
   * Waits (bounded) for it to exit and for its output to be read to the
   * end: disposing of the child instead would close the pipe under a read
   * still behind, losing the last lines and failing that read.
   */
  async exited(what: string, ms = 30_000): Promise<ChildStatus> {
    const status = await withTimeout(this.child.status, ms, what);
    await withTimeout(this.#reading, ms, `the output of ${what}`);
    return status;
  }

  /** Waits for it to exit with success (bounded). */
  async success(what: string, ms = 30_000): Promise<void> {
    const status = await this.exited(what, ms);
    if (!status.success) {
      throw new Error(`${what} failed (${status.code}): ${this.tail()}`);
    }
  }

  /** Kills it if it still runs, reaps it and closes its pipes. */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.#stdin?.close().catch(() => {});
    } finally {
      await this.child[Symbol.asyncDispose]();
      await this.#reading.catch(() => {});
    }
  }
}

/** The summary a receiving peer prints at the end of the stream. */
export interface PeerSummary {
  count: number;
  last: number;
  lost: number;
  outOfOrder: number;
  bad: number;
}

/** Waits for a receiving peer's summary. */
export async function summaryOf(peer: Peer, ms = 30_000): Promise<PeerSummary> {
  const line = await peer.waitFor(
    (l) => l.startsWith("end "),
    "the end of the stream",
    ms,
  );
  return JSON.parse(line.slice(4));
}

/** The indexes a peer reported with `got <i>` lines. */
export function gotIndexes(peer: Peer): number[] {
  return peer.lines.filter((l) => /^got \d+$/.test(l)).map((l) =>
    Number(l.slice(4))
  );
}

/** A channel end that closes asynchronously. */
interface Closable {
  close(options?: { signal?: AbortSignal }): Promise<void>;
}

/**
 * Closes every end, each given up after `ms` (so that a test never hangs on
 * a server that does not answer); throws afterwards if one had to be.
 */
export async function closeEnds(
  ms: number,
  ...ends: Closable[]
): Promise<void> {
  const late: number[] = [];
  await Promise.all(ends.map(async (end, i) => {
    const stop = new AbortController();
    const timer = setTimeout(() => {
      late.push(i);
      stop.abort();
    }, ms);
    try {
      await end.close({ signal: stop.signal });
    } finally {
      clearTimeout(timer);
    }
  }));
  if (late.length > 0) {
    throw new Error(`Closing ends ${late} was given up after ${ms} ms`);
  }
}

/**
 * `closeEnds()` for a `finally` block: bounded the same way, but it does not
 * throw, so the failure that got the test there is the one reported.
 */
export async function closeQuietly(...ends: Closable[]): Promise<void> {
  await closeEnds(10_000, ...ends).catch(() => {});
}

/**
 * Every process whose parent is this one (from any thread, as `Deno.Command`
 * starts them), as `<pid> <command> <state>`: running or not yet reaped.
 */
export function ownProcesses(): string[] {
  const found: string[] = [];
  for (const name of listDir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const stat = readProcText(`/proc/${name}/stat`);
    if (stat === undefined) continue;
    const close = stat.lastIndexOf(")");
    const [state, ppid] = stat.slice(close + 2).split(" ");
    if (Number(ppid) === Deno.pid) {
      found.push(
        `${name} ${stat.slice(stat.indexOf("(") + 1, close)} ${state}`,
      );
    }
  }
  return found;
}

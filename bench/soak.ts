/**
 * The soak run: channels, seqpacket sockets (with fds attached), pipes and
 * shared-memory queues between this process and echo children, round after
 * round for a given time, with children SIGKILLed at random points.
 *
 * Every echo is checked byte for byte. A round whose child was not killed
 * must get every message back ("lost" counts any it did not); a killed round
 * must end with a clean error or end of stream, never a hang ("hangs" counts
 * waits that needed the 10 s bound), and what arrived before the kill must be
 * intact. After every round this process's fd table must be back to where it
 * started, and no child may be left unreaped.
 *
 * Run: `deno task soak --minutes 5` (`--seed`, `--kill-rate`, `--hogs N` to
 * run N CPU-bound processes beside it). Exits 1 when anything was lost,
 * corrupted, hung or leaked.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  channel,
  ChannelClosedError,
  duplex,
  pipe,
  shmQueue,
  socketpair,
  spawn,
} from "../mod.ts";
import type { ChildProcess, FdEndpoint } from "../spawn.ts";
import { openFds, zombieChildren } from "../tests/_util.ts";

const CHILD = new URL("./_soak_child.ts", import.meta.url).pathname;
const BOUND_MS = 10_000;
const KINDS = ["channel", "seqpacket", "pipe", "shm"] as const;
type Kind = typeof KINDS[number];

interface Tally {
  rounds: number;
  killed: number;
  messages: number;
  lost: number;
  corrupt: number;
  hangs: number;
  errors: string[];
}

/** A small seeded generator (xorshift32), so a failing run can be repeated. */
function rng(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 0x1_0000_0000;
  };
}

/** The bytes of message `i` of round `round`: reproducible, size varies. */
function payload(round: number, i: number, size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  let x = (round * 2_654_435_761 + i * 40_503 + 1) >>> 0;
  for (let k = 0; k < size; k++) {
    x = (x * 1_103_515_245 + 12_345) >>> 0;
    bytes[k] = x >>> 24;
  }
  return bytes;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

function bounded<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Deno.errors.TimedOut(`${what} hung`)),
      BOUND_MS,
    );
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

/** The errors a round may end with once its peer was killed. */
function expectedAfterKill(error: unknown): boolean {
  return error instanceof ChannelClosedError ||
    error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.BadResource;
}

/** SIGKILL, unless the child has exited already. */
function kill(child: ChildProcess): void {
  try {
    child.kill("SIGKILL");
  } catch (error) {
    if (!(error instanceof TypeError)) throw error;
  }
}

interface Transport {
  /** Endpoints for the child, as fd 3, 4, ... */
  childFds: (FdEndpoint & { close(): void })[];
  send(data: Uint8Array, i: number): Promise<void>;
  /** The next echo (of `size` bytes), or null at the end. */
  recv(size: number): Promise<Uint8Array | null>;
  /** Ends this side's sending, so the child sees the end of its input. */
  finish(): void;
  close(): void;
}

function transport(kind: Kind): Transport {
  switch (kind) {
    case "channel": {
      const [tx, childRx] = channel<Uint8Array>({ capacity: 16 });
      const [childTx, rx] = channel<Uint8Array>({ capacity: 16 });
      return {
        childFds: [childRx, childTx],
        send: (data) => tx.send(data),
        recv: async () => {
          try {
            return await rx.recv();
          } catch (error) {
            if (error instanceof ChannelClosedError) return null;
            throw error;
          }
        },
        finish: () => tx.close(),
        close: () => {
          tx.close();
          rx.close();
        },
      };
    }
    case "seqpacket": {
      const [mine, theirs] = socketpair({ type: "seqpacket" });
      return {
        childFds: [theirs],
        send: async (data, i) => {
          if (i % 8 !== 3) return await mine.send(data);
          // Every few messages carry an fd, which the child closes.
          const extra = pipe();
          try {
            await mine.send(data, { fds: [extra.reader] });
          } finally {
            extra.reader.close();
            extra.writer.close();
          }
        },
        recv: async () => (await mine.recv())?.data ?? null,
        finish: () => mine.shutdown("write"),
        close: () => mine.close(),
      };
    }
    case "pipe": {
      const [mine, theirs] = duplex();
      let pending = new Uint8Array(0);
      const chunk = new Uint8Array(64 * 1024);
      return {
        childFds: [theirs.reader, theirs.writer],
        send: (data) => mine.writer.write(data),
        // A byte stream has no boundaries: cut the echo by the sizes sent.
        recv: async (want) => {
          while (pending.byteLength < want) {
            const n = await mine.reader.read(chunk);
            if (n === null) return null;
            const joined = new Uint8Array(pending.byteLength + n);
            joined.set(pending);
            joined.set(chunk.subarray(0, n), pending.byteLength);
            pending = joined;
          }
          const message = pending.slice(0, want);
          pending = pending.subarray(want);
          return message;
        },
        finish: () => mine.writer.close(),
        close: () => {
          mine.reader.close();
          mine.writer.close();
        },
      };
    }
    case "shm": {
      const [tx, childRx] = shmQueue({ bytes: 1 << 20 });
      const [childTx, rx] = shmQueue({ bytes: 1 << 20 });
      return {
        childFds: [childRx, childTx],
        send: (data) => tx.send(data),
        recv: () => rx.recv(),
        finish: () => tx.close(),
        close: () => {
          tx.close();
          rx.close();
        },
      };
    }
  }
}

interface ChildStats {
  rss: number;
  fds: number;
}

async function round(
  n: number,
  kind: Kind,
  random: () => number,
  killRate: number,
  tally: Tally,
  childStats: Map<Kind, ChildStats>,
): Promise<void> {
  const t = transport(kind);
  const count = 20 + Math.floor(random() * 200);
  const maxSize = kind === "seqpacket" ? 32 * 1024 : 256 * 1024;
  const sizes = Array.from(
    { length: count },
    () =>
      random() < 0.9
        ? 1 + Math.floor(random() * 256)
        : 1 + Math.floor(random() * maxSize),
  );
  const killAt = random() < killRate ? Math.floor(random() * count) : -1;
  const child = spawn(Deno.execPath(), {
    args: ["run", "-A", CHILD, kind],
    fds: t.childFds,
    stdout: "piped",
    stderr: Deno.env.get("SOAK_DEBUG") ? "inherit" : "null",
  });
  for (const end of t.childFds) end.close();
  const stdout = new Response(child.stdout).text();
  let received = 0;
  try {
    const sender = (async () => {
      for (let i = 0; i < count; i++) {
        await t.send(payload(n, i, sizes[i]), i);
      }
      t.finish();
    })();
    const receiver = (async () => {
      for (let i = 0; i < count; i++) {
        if (i === killAt) kill(child);
        const echo = await t.recv(sizes[i]);
        if (echo === null) return;
        if (!sameBytes(echo, payload(n, i, sizes[i]))) {
          tally.corrupt++;
          tally.errors.push(`round ${n} (${kind}): echo ${i} differs`);
        }
        received++;
      }
    })();
    const outcome = await Promise.allSettled([
      bounded(sender, `${kind} sender`),
      bounded(receiver, `${kind} receiver`),
    ]);
    for (const o of outcome) {
      if (o.status === "fulfilled") continue;
      if (o.reason instanceof Deno.errors.TimedOut) {
        tally.hangs++;
        tally.errors.push(`round ${n} (${kind}): ${o.reason.message}`);
      } else if (killAt < 0 || !expectedAfterKill(o.reason)) {
        tally.errors.push(
          `round ${n} (${kind}): ${o.reason?.name}: ${o.reason?.message}`,
        );
      }
    }
  } finally {
    t.close();
    if (killAt >= 0) kill(child);
  }
  const status = await bounded(child.status, `${kind} child exit`);
  const text = await bounded(stdout, `${kind} child stdout`);
  tally.rounds++;
  tally.messages += received;
  if (killAt >= 0) {
    tally.killed++;
  } else {
    if (received !== count) {
      tally.lost += count - received;
      tally.errors.push(`round ${n} (${kind}): ${count - received} lost`);
    }
    if (!status.success) {
      tally.errors.push(`round ${n} (${kind}): child exited ${status.code}`);
    } else {
      const line = text.trim().split("\n").at(-1) ?? "";
      const stats = JSON.parse(line) as ChildStats;
      const seen = childStats.get(kind);
      if (seen === undefined || stats.rss > seen.rss) {
        childStats.set(kind, stats);
      }
    }
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      minutes: { type: "string", default: "1" },
      seed: { type: "string" },
      "kill-rate": { type: "string", default: "0.3" },
      hogs: { type: "string", default: "0" },
    },
  });
  const minutes = Number(values.minutes);
  const killRate = Number(values["kill-rate"]);
  const hogs = Number(values.hogs);
  const seed = values.seed === undefined
    ? (Date.now() % 0x7fff_ffff)
    : Number(values.seed);
  if (!(minutes > 0) || !(killRate >= 0 && killRate <= 1) || !(hogs >= 0)) {
    console.error(
      "Usage: soak.ts [--minutes M] [--seed S] [--kill-rate 0..1] [--hogs N]",
    );
    return 2;
  }
  console.log(
    `soak: ${minutes} min, seed ${seed}, kill rate ${killRate}, ${hogs} CPU-bound processes beside it`,
  );
  const hogProcesses = Array.from(
    { length: hogs },
    () =>
      new Deno.Command("node", {
        args: ["-e", "for(;;){}"],
        stdout: "null",
        stderr: Deno.env.get("SOAK_DEBUG") ? "inherit" : "null",
      }).spawn(),
  );
  const random = rng(seed);
  const tallies = new Map<Kind, Tally>(
    KINDS.map((k) => [k, {
      rounds: 0,
      killed: 0,
      messages: 0,
      lost: 0,
      corrupt: 0,
      hangs: 0,
      errors: [],
    }]),
  );
  const childStats = new Map<Kind, ChildStats>();
  const leaks: string[] = [];
  let maxRss = 0;
  try {
    // One round of each kind first: libc, the poller and Deno's own
    // resources are loaded before the fd baseline is taken.
    for (const kind of KINDS) {
      await round(0, kind, random, 0, tallies.get(kind)!, childStats);
    }
    const baseline = openFds().length;
    const startRss = Deno.memoryUsage().rss;
    const end = performance.now() + minutes * 60_000;
    let n = 1;
    let lastReport = performance.now();
    while (performance.now() < end) {
      const kind = KINDS[Math.floor(random() * KINDS.length)];
      await round(n, kind, random, killRate, tallies.get(kind)!, childStats);
      const fds = openFds().length;
      if (fds !== baseline) {
        leaks.push(
          `after round ${n} (${kind}): ${fds} fds, ${baseline} at start`,
        );
      }
      maxRss = Math.max(maxRss, Deno.memoryUsage().rss);
      if (performance.now() - lastReport > 15_000) {
        lastReport = performance.now();
        // With --v8-flags=--expose-gc, the live heap after a full collection
        // tells a leak from a heap that merely grew.
        (globalThis as { gc?: () => void }).gc?.();
        const { heapUsed } = Deno.memoryUsage();
        console.log(
          `  ${n} rounds, rss ${(maxRss / 2 ** 20).toFixed(0)} MiB, heap ${
            (heapUsed / 2 ** 20).toFixed(1)
          } MiB, fds ${openFds().length}`,
        );
      }
      n++;
    }
    console.log(
      `\nrounds by kind (this process: fds ${openFds().length} at the end, ${baseline} at start; RSS ${
        (startRss / 2 ** 20).toFixed(0)
      } MiB at start, ${(maxRss / 2 ** 20).toFixed(0)} MiB at most)`,
    );
  } finally {
    for (const hog of hogProcesses) {
      hog.kill("SIGKILL");
      await hog.status;
    }
  }
  console.log(
    "| transport | rounds | peers killed | messages echoed | lost | corrupt | hangs | child RSS (max) | child fds |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|");
  let bad = leaks.length;
  for (const [kind, t] of tallies) {
    const c = childStats.get(kind);
    console.log(
      `| ${kind} | ${t.rounds} | ${t.killed} | ${t.messages} | ${t.lost} | ${t.corrupt} | ${t.hangs} | ${
        c ? `${(c.rss / 2 ** 20).toFixed(0)} MiB` : "-"
      } | ${c?.fds ?? "-"} |`,
    );
    bad += t.lost + t.corrupt + t.hangs + t.errors.length;
    for (const error of t.errors.slice(0, 10)) console.log(`  ${error}`);
  }
  for (const leak of leaks.slice(0, 10)) console.log(`  fd leak ${leak}`);
  const zombies = zombieChildren();
  if (zombies.length > 0) {
    bad += zombies.length;
    console.log(`  unreaped children: ${zombies.join(", ")}`);
  }
  console.log(
    bad === 0 ? "soak: clean" : `soak: ${bad} problems (seed ${seed})`,
  );
  return bad === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());

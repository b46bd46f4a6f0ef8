/**
 * Figures for waits on shared memory, across processes:
 *
 * - `sync.server`: requests per second through `examples/shm_server.ts`
 *   from 4 client processes at once (`examples/shm_client.ts`, random
 *   sizes up to 4 KiB, 32 requests ahead of their replies, every reply's
 *   checksum checked), against the same protocol, clients and traffic
 *   through Deno's own Unix stream sockets (`Deno.listen`, one task per
 *   connection). Timed from the first client's first request to the last
 *   client's last reply.
 * - `sync.mutex`: 4 processes adding one to a counter under a `Mutex`,
 *   100,000 times in total, against 4 `node:child_process` `fork()` children
 *   each asking the parent (which keeps the counter) to add one, one
 *   request at a time. The figure is the wall time per increment, all
 *   processes together.
 *
 * The two sides alternate inside every run.
 *
 * @module
 */

import { fork } from "node:child_process";
import { Barrier, Mutex, SharedMemory } from "../shm/mod.ts";
import { spawn } from "../spawn.ts";
import { lines } from "../examples/_lines.ts";
import { alternating } from "./_baselines.ts";
import { childRun } from "./_wake.ts";
import { result } from "./_report.ts";
import type { BenchCase } from "./_types.ts";

const SERVER = new URL("../examples/shm_server.ts", import.meta.url).pathname;
const CLIENT = new URL("../examples/shm_client.ts", import.meta.url).pathname;
const CHILD = new URL("./_sync_child.ts", import.meta.url).pathname;
const SOCKET = new URL("./_sync_socket.ts", import.meta.url).pathname;
const FORK_COUNTER = new URL("./_fork_counter.ts", import.meta.url).pathname;
const CLIENTS = 4;
const SIZE = 4096;
const WINDOW = 32;

interface Span {
  startedAt: number;
  endedAt: number;
  messages: number;
}

function perSecond(spans: Span[]): number {
  const start = Math.min(...spans.map((s) => s.startedAt));
  const end = Math.max(...spans.map((s) => s.endedAt));
  const messages = spans.reduce((sum, s) => sum + s.messages, 0);
  return messages / ((end - start) / 1000);
}

async function jsonOf(
  child: ReturnType<typeof spawn>,
  what: string,
): Promise<Span> {
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) throw new Error(`${what} failed: ${text}`);
  return JSON.parse(text.split("\n").at(-1)!);
}

async function throughShm(messages: number): Promise<number> {
  const deno = childRun();
  await using server = spawn(Deno.execPath(), {
    env: deno.env,
    args: [
      "run",
      ...deno.flags,
      SERVER,
      "serve",
      "--clients",
      String(CLIENTS),
      "--json",
    ],
    stdout: "piped",
  });
  const output = lines(server.stdout);
  const first = await output.next();
  const name = first.done ? "" : first.value.replace(/^listening on /, "");
  const clients = Array.from({ length: CLIENTS }, () =>
    spawn(Deno.execPath(), {
      env: deno.env,
      args: [
        "run",
        ...deno.flags,
        CLIENT,
        name,
        "--json",
        "--messages",
        String(messages),
        "--size",
        String(SIZE),
        "--window",
        String(WINDOW),
      ],
      stdout: "piped",
    }));
  const spans = await Promise.all(clients.map((c) => jsonOf(c, "a client")));
  for await (const _ of output) { /* the server's events, to its exit */ }
  if (!(await server.status).success) throw new Error("the shm server failed");
  return perSecond(spans);
}

async function throughSockets(messages: number): Promise<number> {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/server.sock`;
  const rw = [`--allow-read=${dir}`, `--allow-write=${dir}`, "--allow-net"];
  try {
    await using server = spawn(Deno.execPath(), {
      args: ["run", ...rw, SOCKET, "server", path, String(CLIENTS)],
      stdout: "piped",
    });
    const output = lines(server.stdout);
    if ((await output.next()).value !== "ready") {
      throw new Error("the socket server did not start");
    }
    const clients = Array.from(
      { length: CLIENTS },
      () =>
        spawn(Deno.execPath(), {
          args: [
            "run",
            ...rw,
            SOCKET,
            "client",
            path,
            String(messages),
            String(SIZE),
            String(WINDOW),
          ],
          stdout: "piped",
        }),
    );
    const spans = await Promise.all(
      clients.map((c) => jsonOf(c, "a socket client")),
    );
    for await (const _ of output) { /* to its exit */ }
    if (!(await server.status).success) {
      throw new Error("the socket server failed");
    }
    return perSecond(spans);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function mutexCounting(total: number): Promise<number> {
  using mem = SharedMemory.create(4096);
  Mutex.create(mem, 0);
  Barrier.create(mem, 16, CLIENTS);
  const each = total / CLIENTS;
  const deno = childRun();
  const children = Array.from(
    { length: CLIENTS },
    () =>
      spawn(Deno.execPath(), {
        env: deno.env,
        args: ["run", ...deno.flags, CHILD, "mutex", String(each)],
        fds: [mem],
        stdout: "piped",
      }),
  );
  const spans = await Promise.all(
    children.map(async (c) => {
      const s = await jsonOf(c, "a mutex child") as unknown as {
        start: number;
        end: number;
      };
      return { startedAt: s.start, endedAt: s.end, messages: each };
    }),
  );
  const counted = new Int32Array(mem.buffer, 64, 1)[0];
  if (counted !== total) throw new Error(`counted ${counted} of ${total}`);
  return 1e6 / perSecond(spans);
}

async function forkCounting(total: number): Promise<number> {
  const each = total / CLIENTS;
  let counter = 0;
  const children = Array.from(
    { length: CLIENTS },
    () =>
      fork(FORK_COUNTER, [], {
        stdio: ["ignore", "inherit", "inherit", "ipc"],
      }),
  );
  const exits = children.map((child) =>
    new Promise<void>((resolve) => child.once("exit", () => resolve()))
  );
  try {
    await Promise.all(
      children.map((child) =>
        new Promise<void>((resolve) => child.once("message", () => resolve()))
      ),
    );
    const spans = await Promise.all(
      children.map((child) =>
        new Promise<Span>((resolve) => {
          child.on("message", (message: unknown) => {
            if (message === "inc") {
              child.send(++counter);
              return;
            }
            const { start, end } = message as { start: number; end: number };
            resolve({ startedAt: start, endedAt: end, messages: each });
          });
          child.send({ go: each });
        })
      ),
    );
    if (counter !== total) throw new Error(`counted ${counter} of ${total}`);
    return 1e6 / perSecond(spans);
  } finally {
    for (const child of children) if (child.connected) child.disconnect();
    await Promise.all(exits);
  }
}

/** The sync area: the shm server against sockets, the mutex against fork(). */
export const cases: BenchCase[] = [{
  id: "sync.server",
  area: "sync",
  async run(options) {
    const messages = options.quick ? 5_000 : 50_000;
    const mine: number[] = [];
    const theirs: number[] = [];
    await alternating(options, `shm server, ${CLIENTS} clients`, [
      async (measured) => {
        const rate = await throughShm(messages);
        if (measured) mine.push(rate);
      },
      async (measured) => {
        const rate = await throughSockets(messages);
        if (measured) theirs.push(rate);
      },
    ]);
    return [result({
      id: "sync.server",
      mechanism:
        `shm server (ShmReceiverSet), ${CLIENTS} client processes, requests up to 4 KiB, 32 ahead`,
      unit: "msg/s",
      higherIsBetter: true,
      samples: mine,
      baseline: {
        mechanism: "the same over Deno.listen unix stream sockets",
        samples: theirs,
      },
    })];
  },
}, {
  id: "sync.mutex",
  area: "sync",
  async run(options) {
    const total = options.quick ? 20_000 : 100_000;
    const mine: number[] = [];
    const theirs: number[] = [];
    await alternating(options, `counting to ${total}`, [
      async (measured) => {
        const us = await mutexCounting(total);
        if (measured) mine.push(us);
      },
      async (measured) => {
        const us = await forkCounting(total);
        if (measured) theirs.push(us);
      },
    ]);
    return [result({
      id: "sync.mutex",
      mechanism:
        `Mutex contended by ${CLIENTS} processes, µs per increment of a shared counter`,
      unit: "µs",
      higherIsBetter: false,
      samples: mine,
      baseline: {
        mechanism:
          `node:child_process fork(): ${CLIENTS} children ask the parent to increment`,
        samples: theirs,
      },
    })];
  },
}];

import assert from "node:assert/strict";
import {
  channel,
  connectOneShot,
  pipe,
  type ShmReceiver,
  type ShmSender,
} from "../mod.ts";
import { Child } from "./_shm_sync_util.ts";
import { fdTarget, procFds, procFdTarget, test, withTimeout } from "./_util.ts";

const SERVER = new URL("../examples/shm_server.ts", import.meta.url).pathname;
const CLIENT = new URL("../examples/shm_client.ts", import.meta.url).pathname;
const perms = { ffi: true, run: true, read: true } as const;

interface Finished {
  event: "finished";
  id: number;
  pid: number;
  requests: number;
  bytes: number;
  digest: string;
  outcome: string;
}

interface ClientSummary {
  pid: number;
  messages: number;
  bytes: number;
  digest: string;
}

/** A server process started with `--json`, and its events. */
class Server implements AsyncDisposable {
  readonly process: Child;
  name = "";
  readonly finished = new Map<number, Finished>();
  readonly events: Record<string, unknown>[] = [];

  constructor(args: string[]) {
    this.process = new Child([
      "run",
      "--allow-ffi",
      SERVER,
      "serve",
      "--json",
      ...args,
    ]);
  }

  async start(): Promise<void> {
    const first = await this.process.out.next("the server's name");
    assert.match(first ?? "", /^listening on conduit-oneshot\//);
    this.name = first!.slice("listening on ".length);
  }

  /** The next event, bounded. */
  async next(what: string, ms = 60_000): Promise<Record<string, unknown>> {
    const line = await this.process.out.next(what, ms);
    if (line === null) throw new Error(`The server ended before ${what}`);
    const event = JSON.parse(line);
    this.events.push(event);
    if (event.event === "finished") this.finished.set(event.pid, event);
    return event;
  }

  /** Reads events until the server exits; checks that it succeeded. */
  async exit(ms = 120_000): Promise<void> {
    for (;;) {
      const event = await this.next("the server's exit", ms);
      if (event.event === "exit") break;
    }
    const status = await withTimeout(this.process.child.status, ms, "exit");
    assert.equal(status.success, true, JSON.stringify(status));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.process[Symbol.asyncDispose]();
  }
}

function client(name: string, ...args: string[]): Child {
  return new Child(["run", "--allow-ffi", CLIENT, name, "--json", ...args]);
}

async function summaryOf(c: Child, what: string): Promise<ClientSummary> {
  const lines = await c.out.rest(what, 120_000);
  const status = await withTimeout(c.child.status, 120_000, what);
  assert.equal(status.success, true, `${what}: ${JSON.stringify(status)}`);
  assert.equal(lines.length, 1, `${what}: ${lines}`);
  return JSON.parse(lines[0]);
}

function assertServed(server: Server, summary: ClientSummary): void {
  const record = server.finished.get(summary.pid);
  assert.ok(record, `no server record for client ${summary.pid}`);
  assert.equal(record.outcome, "gone");
  assert.equal(record.requests, summary.messages);
  assert.equal(record.bytes, summary.bytes);
  assert.equal(record.digest, summary.digest);
}

test(
  "8 unrelated clients × 10,000 messages through one shm server: every reply's checksum matches, and the server saw exactly what each sent",
  async () => {
    await using server = new Server(["--clients", "8"]);
    await server.start();
    const clients = Array.from(
      { length: 8 },
      () => client(server.name, "--messages", "10000", "--size", "2048"),
    );
    try {
      const summaries = await Promise.all(
        clients.map((c, i) => summaryOf(c, `client ${i}`)),
      );
      await server.exit();
      for (const summary of summaries) {
        assert.equal(summary.messages, 10_000);
        assertServed(server, summary);
      }
      assert.equal(server.finished.size, 8);
    } finally {
      for (const c of clients) await c[Symbol.asyncDispose]();
    }
  },
  perms,
);

test(
  "clients SIGKILLed at random points disturb no other client, and the server serves new ones after",
  async () => {
    const seed = Math.floor(Math.random() * 2 ** 31);
    let state = seed;
    const random = () => (state = (state * 48271) % 0x7fff_ffff) / 0x7fff_ffff;
    await using server = new Server(["--clients", "6"]);
    await server.start();
    const steady = [
      client(server.name, "--messages", "3000", "--size", "8192"),
      client(server.name, "--messages", "3000", "--size", "100"),
    ];
    const doomed = Array.from(
      { length: 3 },
      () => client(server.name, "--messages", "100000000", "--size", "65536"),
    );
    const late: Child[] = [];
    try {
      const connected = new Set<number>();
      const doomedPids = new Set(doomed.map((c) => c.child.pid));
      while ([...doomedPids].some((pid) => !connected.has(pid))) {
        const event = await server.next("the doomed clients connecting");
        if (event.event === "connected") connected.add(event.pid as number);
      }
      // Killed somewhere in the middle of their traffic, whole messages or
      // half-written ones.
      await Promise.all(doomed.map(async (c) => {
        await new Promise((r) => setTimeout(r, random() * 300));
        c.child.kill("SIGKILL");
        await withTimeout(c.child.status, 20_000, "a killed client");
      }));
      late.push(client(server.name, "--messages", "2000", "--size", "4096"));
      const summaries = await Promise.all(
        [...steady, ...late].map((c, i) => summaryOf(c, `client ${i}`)),
      );
      await server.exit();
      for (const summary of summaries) assertServed(server, summary);
      for (const pid of doomedPids) {
        const record = server.finished.get(pid);
        assert.ok(record, `seed ${seed}: no record for killed client ${pid}`);
        assert.ok(record.requests < 100_000_000);
      }
      assert.equal(server.finished.size, 6, `seed ${seed}`);
    } finally {
      for (const c of [...steady, ...doomed, ...late]) {
        await c[Symbol.asyncDispose]();
      }
    }
  },
  perms,
);

test(
  "a client that stays silent, after connecting or in the handshake, is dropped after the server's idle time",
  async () => {
    await using server = new Server(["--clients", "1", "--idle", "300"]);
    await server.start();
    // Connects to the server's socket and never says hello.
    const mute = await connectOneShot(server.name);
    try {
      const dropped = await server.next("the mute connection dropped");
      assert.equal(dropped.event, "handshake-dropped");
    } finally {
      mute.close();
    }
    await using silent = client(server.name, "--silent");
    const lines = await silent.out.rest("the silent client", 30_000);
    assert.equal(
      (await withTimeout(silent.child.status, 30_000, "silent")).success,
      true,
    );
    assert.match(lines.join("\n"), /dropped by the server/);
    await server.exit();
    const record = [...server.finished.values()][0];
    assert.match(record.outcome, /silent for more than 300 ms/);
  },
  perms,
);

test(
  "endpoints a client sends along with its hello, at any depth, are closed by the server",
  async () => {
    await using server = new Server(["--clients", "1", "--idle", "30000"]);
    await server.start();
    const pid = server.process.child.pid;
    const pipes = Array.from({ length: 6 }, () => pipe());
    const inodes = pipes.map((p) => fdTarget(p.reader.rawFd)!);
    const held = () =>
      procFds(pid, 4096).map((fd) => procFdTarget(pid, fd))
        .filter((target) => target !== undefined && inodes.includes(target));
    try {
      // Not a hello: endpoints nested in an array and a map.
      const junk = await connectOneShot<unknown>(server.name);
      try {
        await junk.send({
          deep: [[pipes[0].reader]],
          map: new Map([[1, pipes[1].reader]]),
        }, {
          transfer: [pipes[0].reader, pipes[1].reader],
          signal: AbortSignal.timeout(30_000),
        });
      } finally {
        junk.close();
      }
      const dropped = await server.next("the junk connection dropped");
      assert.equal(dropped.event, "handshake-dropped");
      // A hello with extra endpoints in fields, arrays, sets and a cause.
      const [reply, grants] = channel<{
        toServer: ShmSender;
        fromServer: ShmReceiver;
      }>({ capacity: 1 });
      const extra = pipes.slice(2).map((p) => p.reader);
      const hello = await connectOneShot<unknown>(server.name);
      try {
        await hello.send({
          pid: Deno.pid,
          reply,
          more: [extra[0]],
          set: new Set([extra[1]]),
          error: new Error("x", { cause: { fd: extra[2] } }),
          direct: extra[3],
        }, {
          transfer: [reply, ...extra],
          signal: AbortSignal.timeout(30_000),
        });
      } finally {
        hello.close();
      }
      const grant = await grants.recv({ signal: AbortSignal.timeout(30_000) });
      grants.close();
      assert.ok(grant !== null);
      // The grant is sent after the extras were closed.
      assert.deepEqual(held(), []);
      grant.toServer.close();
      grant.fromServer.close();
      await server.exit();
    } finally {
      for (const p of pipes) p.writer.close();
    }
  },
  perms,
);

/**
 * A shared-memory server for many unrelated clients: seed 004's
 * `ipc-server`, which "gets stuck with a single client", done as the seed
 * says it should be. Run without arguments, it is the demo: it starts a
 * server and three clients (`shm_client.ts`) as separate processes, given
 * nothing but the server's name (no fds are handed down), and shows what
 * crossed.
 *
 * - The server listens on an unguessable name (a `ChannelServer`: abstract
 *   socket, no file, connections of other users dropped) and prints it.
 * - Each client that connects gets its own pair of shared-memory queues
 *   (`shmQueue`), sent to it over a channel as fds: requests go one way,
 *   replies the other, and no byte of either goes through a socket.
 * - One loop serves every client at once: a `ShmReceiverSet` selects over
 *   all the request queues. Replies are queued per client without waiting,
 *   so a slow client never holds up the others.
 * - A client killed mid-message disturbs no one: its half-written record is
 *   never published, its queue reports the end, and the server drops it.
 *   A client that stays silent (in the handshake or after) is dropped after
 *   `--idle` ms; one that does not read its replies, once it owes too many.
 *
 * Run:
 * ```sh
 * deno run --allow-ffi --allow-run examples/shm_server.ts   # the demo
 * deno run --allow-ffi examples/shm_server.ts serve [--clients N] [--idle MS] [--ring BYTES] [--json]
 * deno run --allow-ffi examples/shm_client.ts <name> [--messages N] [--size BYTES]
 * ```
 * `serve` prints `listening on <name>` first; with `--clients N` it exits
 * after N clients have come and gone. `--json` prints each event as a line
 * of JSON instead of text.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  ChannelServer,
  type Receiver,
  Sender,
  shmQueue,
  ShmReceiverSet,
  type ShmSender,
  spawn,
} from "../mod.ts";
import { lines } from "./_lines.ts";
import { answer, count, fnv1a, type Grant, type Hello } from "./_shm_wire.ts";

/** Replies a client may owe before it counts as not reading them. */
const MAX_BACKLOG = 4096;
const CLIENT = new URL("./shm_client.ts", import.meta.url).pathname;

interface Client {
  id: number;
  pid: number;
  tx: ShmSender;
  stop: AbortController;
  lastSeen: number;
  requests: number;
  bytes: number;
  digest: number;
  backlog: number;
  last: Promise<void>;
}

function isHello(value: unknown): value is Hello {
  const hello = value as Hello;
  return typeof value === "object" && value !== null &&
    hello.reply instanceof Sender && Number.isSafeInteger(hello.pid);
}

// A hostile client may send anything, endpoints included, at any depth (in
// arrays, maps, sets, errors' causes): close every one but `keep`, or each
// such hello would leave its fds open here.
function closeEndpoints(value: unknown, keep?: unknown): void {
  const seen = new Set<object>();
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const item = stack.pop();
    if (typeof item !== "object" || item === null || seen.has(item)) continue;
    seen.add(item);
    if (ArrayBuffer.isView(item) || item instanceof ArrayBuffer) continue;
    const close = (item as { close?: unknown }).close;
    if (typeof close === "function") {
      if (item !== keep) close.call(item);
      continue;
    }
    if (item instanceof Map) {
      for (const [k, v] of item) stack.push(k, v);
    } else if (item instanceof Set) {
      for (const v of item) stack.push(v);
    }
    if (item instanceof Error) stack.push(item.cause);
    for (const field of Object.values(item)) stack.push(field);
  }
}

async function serve(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      clients: { type: "string" },
      idle: { type: "string" },
      ring: { type: "string" },
      json: { type: "boolean" },
    },
  });
  const wanted = count(values.clients, "clients", 0);
  const idleMs = count(values.idle, "idle", 5000);
  const ring = count(values.ring, "ring", 1 << 20);
  const log = (line: string, event: Record<string, unknown>) => {
    console.log(values.json ? JSON.stringify(event) : `server: ${line}`);
  };

  using server = new ChannelServer<Hello>();
  console.log(`listening on ${server.name}`);
  using set = new ShmReceiverSet();
  const clients = new Map<number, Client>();
  const shutdown = new AbortController();
  let finished = 0;

  const finish = (client: Client, outcome: string) => {
    if (!clients.delete(client.id)) return;
    set.drop(client.id);
    if (outcome === "gone") {
      // Its last replies may still be on their way out.
      client.last.finally(() => client.tx.close());
    } else {
      client.stop.abort();
      client.tx.close();
    }
    const digest = client.digest.toString(16).padStart(8, "0");
    log(
      `client ${client.id} (pid ${client.pid}): ${client.requests} requests, ${client.bytes} bytes in, digest 0x${digest}: ${
        outcome === "gone"
          ? "its queue ended (closed, or its process did)"
          : outcome
      }`,
      {
        event: "finished",
        id: client.id,
        pid: client.pid,
        requests: client.requests,
        bytes: client.bytes,
        digest,
        outcome,
      },
    );
    finished++;
    if (wanted > 0 && finished >= wanted) shutdown.abort();
  };

  const handshake = async (rx: Receiver<Hello>) => {
    let hello: unknown;
    try {
      hello = await rx.recv({
        signal: AbortSignal.any([
          shutdown.signal,
          AbortSignal.timeout(idleMs),
        ]),
      });
    } finally {
      rx.close();
    }
    if (!isHello(hello)) {
      closeEndpoints(hello);
      throw new TypeError("its first message is not a hello");
    }
    // Anything else it sent along is not used.
    closeEndpoints(hello, hello.reply);
    const [toServer, requests] = shmQueue({ bytes: ring });
    const [replies, fromServer] = shmQueue({ bytes: ring });
    const id = set.add(requests);
    const client: Client = {
      id,
      pid: hello.pid,
      tx: replies,
      stop: new AbortController(),
      lastSeen: performance.now(),
      requests: 0,
      bytes: 0,
      digest: 0,
      backlog: 0,
      last: Promise.resolve(),
    };
    clients.set(id, client);
    try {
      const grant: Grant = { id, toServer, fromServer };
      await hello.reply.send(grant, {
        transfer: [toServer, fromServer],
        signal: AbortSignal.timeout(idleMs),
      });
    } catch (error) {
      toServer.close();
      fromServer.close();
      finish(client, `dropped: the grant did not reach it: ${error}`);
      return;
    } finally {
      hello.reply.close();
    }
    log(
      `client ${id} (pid ${hello.pid}) connected: sent it a ShmSender and a ShmReceiver (two ${ring}-byte rings) as fds`,
      { event: "connected", id, pid: hello.pid },
    );
  };

  const accepting = (async () => {
    for (;;) {
      let rx: Receiver<Hello>;
      try {
        rx = await server.accept({ signal: shutdown.signal });
      } catch (error) {
        if (shutdown.signal.aborted || server.closed) return;
        // Out of fds (clients that hold many connections open) or memory:
        // the connection stays queued; try again shortly.
        log(`accept failed: ${(error as Error).message}; trying again`, {
          event: "accept-failed",
          reason: String((error as Error).message),
        });
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      handshake(rx).catch((error) =>
        log(`a connection was dropped in the handshake: ${error.message}`, {
          event: "handshake-dropped",
          reason: String(error.message),
        })
      );
    }
  })();

  const sweep = setInterval(() => {
    const now = performance.now();
    for (const client of [...clients.values()]) {
      if (now - client.lastSeen > idleMs) {
        finish(client, `dropped: silent for more than ${idleMs} ms`);
      }
    }
  }, Math.max(10, Math.floor(idleMs / 4)));

  try {
    for (;;) {
      let event;
      try {
        event = await set.select({ signal: shutdown.signal });
      } catch {
        break;
      }
      const client = clients.get(event.id);
      if (client === undefined) continue;
      if (event.closed) {
        finish(
          client,
          event.error ? `dropped: ${event.error.message}` : "gone",
        );
        continue;
      }
      const reply = answer(event.value);
      if (reply === undefined) {
        finish(client, "dropped: a malformed request");
        continue;
      }
      if (client.backlog >= MAX_BACKLOG) {
        finish(client, "dropped: it does not read its replies");
        continue;
      }
      client.lastSeen = performance.now();
      client.requests++;
      client.bytes += event.value.length - 4;
      client.digest = (client.digest ^ fnv1a(event.value, 4)) >>> 0;
      client.backlog++;
      // Queued by the sender in order; the loop goes on at once.
      client.last = client.tx.send(reply, { signal: client.stop.signal })
        .then(
          () => {
            client.backlog--;
          },
          (error) => finish(client, `dropped: ${error.message}`),
        );
    }
  } finally {
    clearInterval(sweep);
    server.close();
    for (const client of [...clients.values()]) finish(client, "shut down");
    await accepting;
  }
  log(`served ${finished} client${finished === 1 ? "" : "s"}; exiting`, {
    event: "exit",
    finished,
  });
}

/** The demo: a server and three clients, each its own process. */
async function demo(): Promise<void> {
  const limit = AbortSignal.timeout(50_000);
  await using server = spawn(Deno.execPath(), {
    args: [
      "run",
      "--allow-ffi",
      import.meta.filename!,
      "serve",
      "--clients",
      "3",
    ],
    stdout: "piped",
    signal: limit,
  });
  const output = lines(server.stdout!);
  const first = await output.next();
  const name = first.done ? "" : first.value.replace(/^listening on /, "");
  if (!name.startsWith("conduit-oneshot/")) {
    throw new Error(`The server did not say its name: ${first.value}`);
  }
  console.log(`demo: server pid ${server.pid} listens on ${name}`);
  const relay = (async () => {
    for await (const line of output) console.log(line);
  })();
  // Unrelated processes: each gets the name as an argument and nothing else.
  const clients = [100, 1_000, 65_536].map((size) =>
    spawn(Deno.execPath(), {
      args: [
        "run",
        "--allow-ffi",
        CLIENT,
        name,
        "--messages",
        "500",
        "--size",
        String(size),
      ],
      signal: limit,
    })
  );
  console.log(`demo: clients ${clients.map((c) => c.pid).join(", ")} started`);
  const statuses = await Promise.all(clients.map((c) => c.status));
  const status = await server.status;
  await relay;
  if (!status.success || statuses.some((s) => !s.success)) {
    throw new Error(
      `The demo failed: server ${JSON.stringify(status)}, clients ${
        JSON.stringify(statuses)
      }`,
    );
  }
  console.log("demo: the server and all three clients exited cleanly");
}

if (import.meta.main) {
  if (Deno.args[0] === "serve") await serve(Deno.args.slice(1));
  else await demo();
}

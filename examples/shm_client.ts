/**
 * A client of `shm_server.ts` (seed 004's `ipc-client`): it knows nothing
 * but the server's name. It connects, receives its own pair of
 * shared-memory queues as fds, sends requests of random sizes through one
 * (up to `--window` of them ahead of the replies) and checks every reply's
 * checksum from the other. Run without a name, it starts a server of its
 * own (as a separate process) and connects to it.
 *
 * Run:
 * ```sh
 * deno run --allow-ffi examples/shm_client.ts <name> [--messages N] [--size BYTES] [--window N] [--json]
 * deno run --allow-ffi --allow-run examples/shm_client.ts   # starts a server, then connects
 * ```
 * `--silent` connects and then sends nothing (the server drops it after its
 * idle time); `--json` prints the summary as one JSON line.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  channel,
  connectOneShot,
  ShmReceiver,
  ShmSender,
  spawn,
} from "../mod.ts";
import { lines } from "./_lines.ts";
import { count, type Grant, type Hello, RequestWindow } from "./_shm_wire.ts";

const SERVER = new URL("./shm_server.ts", import.meta.url).pathname;

/** What a client run reports. */
interface Summary {
  pid: number;
  id: number;
  messages: number;
  bytes: number;
  digest: string;
  /** When the first request went and the last reply came, in ms since the epoch. */
  startedAt: number;
  endedAt: number;
}

const now = () => performance.timeOrigin + performance.now();

async function connectTo(name: string): Promise<Grant> {
  const [reply, grants] = channel<Grant>({ capacity: 1 });
  const hello = await connectOneShot<Hello>(name);
  try {
    await hello.send({ pid: Deno.pid, reply }, { transfer: [reply] });
  } finally {
    hello.close();
  }
  try {
    const grant = await grants.recv({ signal: AbortSignal.timeout(10_000) });
    if (
      !(grant?.toServer instanceof ShmSender) ||
      !(grant.fromServer instanceof ShmReceiver)
    ) {
      throw new TypeError("The server's grant holds no queues");
    }
    return grant;
  } finally {
    grants.close();
  }
}

async function run(name: string, args: string[]): Promise<Summary> {
  const { values } = parseArgs({
    args,
    options: {
      messages: { type: "string" },
      size: { type: "string" },
      window: { type: "string" },
      silent: { type: "boolean" },
      json: { type: "boolean" },
    },
  });
  const messages = count(values.messages, "messages", 1000);
  const size = Math.max(1, count(values.size, "size", 4096));
  const window = Math.max(1, count(values.window, "window", 32));
  const { id, toServer, fromServer } = await connectTo(name);
  if (!values.json) {
    console.log(
      `client ${Deno.pid}: connected as client ${id}; got a ${toServer.constructor.name} (fd ${toServer.rawFd}) and a ${fromServer.constructor.name} (fd ${fromServer.rawFd})`,
    );
  }
  if (values.silent) {
    // Say nothing: the server's idle timeout ends our queue.
    const reply = await fromServer.recv();
    console.log(
      `client ${Deno.pid}: ${
        reply === null ? "dropped by the server" : "got an unasked reply"
      }`,
    );
    toServer.close();
    fromServer.close();
    return {
      pid: Deno.pid,
      id,
      messages: 0,
      bytes: 0,
      digest: "0",
      startedAt: now(),
      endedAt: now(),
    };
  }

  const requests = new RequestWindow(Deno.pid, size, window);
  const startedAt = now();

  const sending = (async () => {
    for (let seq = 0; seq < messages; seq++) {
      await toServer.send(await requests.next(seq));
    }
  })();

  for (let seq = 0; seq < messages; seq++) {
    const message = await fromServer.recv();
    if (message === null) {
      throw new Error(`The server went away after ${seq} replies`);
    }
    requests.answered(seq, message);
  }
  await sending;
  const endedAt = now();
  toServer.close();
  fromServer.close();
  const summary = {
    pid: Deno.pid,
    id,
    messages,
    bytes: requests.bytes,
    digest: requests.digest,
    startedAt,
    endedAt,
  };
  console.log(
    values.json
      ? JSON.stringify(summary)
      : `client ${Deno.pid}: ${messages} requests (${summary.bytes} bytes) sent through shared memory, ${messages} replies, every checksum matched, digest 0x${summary.digest}`,
  );
  return summary;
}

/** Without a name: start a server of our own, then be its client. */
async function alone(): Promise<void> {
  await using server = spawn(Deno.execPath(), {
    args: ["run", "--allow-ffi", SERVER, "serve", "--clients", "1"],
    stdout: "piped",
    signal: AbortSignal.timeout(30_000),
  });
  const output = lines(server.stdout!);
  const first = await output.next();
  const name = first.done ? "" : first.value.replace(/^listening on /, "");
  console.log(
    `client ${Deno.pid}: started server ${server.pid}, named ${name}`,
  );
  const relay = (async () => {
    for await (const line of output) console.log(line);
  })();
  await run(name, ["--messages", "200", "--size", "8192"]);
  const status = await server.status;
  await relay;
  if (!status.success) throw new Error(`The server failed: ${status.code}`);
}

if (import.meta.main) {
  const name = Deno.args[0];
  if (name === undefined || name.startsWith("--")) await alone();
  else await run(name, Deno.args.slice(1));
}

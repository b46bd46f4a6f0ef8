/**
 * The socket side of the shm server benchmark (bench/sync_bench.ts): the
 * protocol of `examples/shm_server.ts` and `examples/shm_client.ts` over
 * Deno's own Unix stream sockets, as a user without this module would
 * write it. Needs read and write permission on the socket's directory, and
 * net permission (Deno asks for it for Unix sockets).
 *
 * - `server <path> <clients>`: `Deno.listen`, one task per connection;
 *   prints `ready`, serves `clients` connections, exits.
 * - `client <path> <messages> <size> <window>`: the shm client's traffic,
 *   each request framed by a u32 length; replies are 12 bytes; prints the
 *   same JSON summary as `examples/shm_client.ts --json`.
 *
 * @module
 */

import { answer, REPLY_BYTES, RequestWindow } from "../examples/_shm_wire.ts";

const now = () => performance.timeOrigin + performance.now();
const [mode, ...args] = Deno.args;

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await conn.write(bytes.subarray(done));
}

/** Serves one connection: frames of u32 length + request, 12-byte replies. */
async function serveConnection(conn: Deno.Conn): Promise<void> {
  let buffer = new Uint8Array(1 << 20);
  let have = 0;
  for (;;) {
    if (have === buffer.length) {
      const bigger = new Uint8Array(buffer.length * 2);
      bigger.set(buffer);
      buffer = bigger;
    }
    const n = await conn.read(buffer.subarray(have));
    if (n === null) break;
    have += n;
    const replies: Uint8Array[] = [];
    let at = 0;
    while (have - at >= 4) {
      const length = new DataView(buffer.buffer, at).getUint32(0, true);
      if (have - at < 4 + length) break;
      replies.push(answer(buffer.subarray(at + 4, at + 4 + length))!);
      at += 4 + length;
    }
    buffer.copyWithin(0, at, have);
    have -= at;
    if (replies.length > 0) {
      const out = new Uint8Array(replies.length * REPLY_BYTES);
      replies.forEach((reply, i) => out.set(reply, i * REPLY_BYTES));
      await writeAll(conn, out);
    }
  }
  conn.close();
}

if (mode === "server") {
  const [path, clients] = [args[0], Number(args[1])];
  const listener = Deno.listen({ transport: "unix", path });
  console.log("ready");
  const served: Promise<void>[] = [];
  for (let i = 0; i < clients; i++) {
    served.push(serveConnection(await listener.accept()));
  }
  listener.close();
  await Promise.all(served);
} else if (mode === "client") {
  const [path, messages, size, window] = [
    args[0],
    Number(args[1]),
    Number(args[2]),
    Number(args[3]),
  ];
  const conn = await Deno.connect({ transport: "unix", path });
  const requests = new RequestWindow(Deno.pid, size, window);
  const startedAt = now();
  const sending = (async () => {
    for (let seq = 0; seq < messages; seq++) {
      const body = await requests.next(seq);
      const frame = new Uint8Array(4 + body.length);
      new DataView(frame.buffer).setUint32(0, body.length, true);
      frame.set(body, 4);
      await writeAll(conn, frame);
    }
  })();
  const buffer = new Uint8Array(64 * 1024);
  let have = 0;
  let seq = 0;
  while (seq < messages) {
    const n = await conn.read(buffer.subarray(have));
    if (n === null) throw new Error(`The server went away after ${seq}`);
    have += n;
    let at = 0;
    for (; have - at >= REPLY_BYTES; at += REPLY_BYTES, seq++) {
      requests.answered(seq, buffer.subarray(at, at + REPLY_BYTES));
    }
    buffer.copyWithin(0, at, have);
    have -= at;
  }
  await sending;
  const endedAt = now();
  conn.close();
  console.log(JSON.stringify({
    pid: Deno.pid,
    messages,
    bytes: requests.bytes,
    digest: requests.digest,
    startedAt,
    endedAt,
  }));
} else {
  throw new Error(`Unknown mode ${mode}`);
}

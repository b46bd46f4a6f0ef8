/**
 * The child of the shared-memory benchmarks (bench/shm_bench.ts), with
 * default options everywhere. Its first argument says what to do; every
 * transfer moves `mib` MiB as 64 KiB messages or writes.
 *
 * Child to parent (the child writes a ready byte `r` on stdout, then waits
 * for a go byte on stdin, so the parent's clock leaves out start-up):
 *
 * - `send <mib>`: through the queue sender it inherited as fd 3, then closes it.
 * - `write-socket <mib>`: to the stream socket it inherited as fd 3.
 * - `write-stdout <mib>`: to stdout, after the ready byte.
 *
 * Parent to child (the child writes `r` on stdout when ready, reads to the
 * end, then writes the byte count and a newline on stdout):
 *
 * - `recv`: from the queue receiver it inherited as fd 3, a new buffer per
 *   message.
 * - `recv-into`: the same, each message into one buffer (`recv({ into })`).
 * - `read-socket`: from the stream socket it inherited as fd 3.
 * - `read-stdin`: from stdin.
 *
 * Round trips:
 *
 * - `echo`: sends back every message from the receiver on fd 3 through the
 *   sender on fd 4 until the receiver sees the end; a one-byte `?` message
 *   is answered with this process's CPU time (bench/_cpu.ts) instead.
 *
 * @module
 */

import { fromFd } from "../from_fd.ts";
import { shmQueueFromFd, ShmReceiver, ShmSender } from "../shm/mod.ts";
import { UnixSocket } from "../socketpair.ts";
import { readAllByob } from "./_baselines.ts";
import { CPU_QUERY, cpuUs, encodeCpu } from "./_cpu.ts";

/** The size of every message and write. */
const CHUNK = 64 * 1024;

const [mode, arg] = Deno.args;
const encoder = new TextEncoder();

function say(text: string): void {
  const bytes = encoder.encode(text);
  let done = 0;
  while (done < bytes.length) {
    done += Deno.stdout.writeSync(bytes.subarray(done));
  }
}

async function awaitGo(): Promise<void> {
  const one = new Uint8Array(1);
  const n = await Deno.stdin.read(one);
  if (n !== 1) throw new Error("The parent never said go");
}

function chunks(): number {
  const mib = Number(arg);
  if (!Number.isInteger(mib) || mib < 1) {
    throw new RangeError(`${mode}: expected a whole number of MiB, got ${arg}`);
  }
  return mib * 16;
}

function socketAt3(): UnixSocket {
  const socket = fromFd(3);
  if (!(socket instanceof UnixSocket)) {
    throw new TypeError("fd 3: not a UnixSocket");
  }
  return socket;
}

if (mode === "send") {
  const count = chunks();
  const tx = shmQueueFromFd(3);
  if (!(tx instanceof ShmSender)) throw new TypeError("fd 3: not a sender");
  const chunk = new Uint8Array(CHUNK);
  say("r");
  await awaitGo();
  for (let i = 0; i < count; i++) await tx.send(chunk);
  tx.close();
} else if (mode === "write-socket") {
  const count = chunks();
  const socket = socketAt3();
  const chunk = new Uint8Array(CHUNK);
  say("r");
  await awaitGo();
  for (let i = 0; i < count; i++) await socket.write(chunk);
  socket.close();
} else if (mode === "write-stdout") {
  const count = chunks();
  const chunk = new Uint8Array(CHUNK);
  say("r");
  await awaitGo();
  for (let i = 0; i < count; i++) {
    let done = 0;
    while (done < chunk.length) {
      done += await Deno.stdout.write(chunk.subarray(done));
    }
  }
} else if (mode === "recv") {
  const rx = shmQueueFromFd(3);
  if (!(rx instanceof ShmReceiver)) throw new TypeError("fd 3: not a receiver");
  say("r");
  let bytes = 0;
  for await (const message of rx) bytes += message.byteLength;
  rx.close();
  say(`${bytes}\n`);
} else if (mode === "recv-into") {
  const rx = shmQueueFromFd(3);
  if (!(rx instanceof ShmReceiver)) throw new TypeError("fd 3: not a receiver");
  say("r");
  let bytes = 0;
  const options = { into: new Uint8Array(CHUNK) };
  for (;;) {
    const message = await rx.recv(options);
    if (message === null) break;
    bytes += message.byteLength;
  }
  rx.close();
  say(`${bytes}\n`);
} else if (mode === "read-socket") {
  const socket = socketAt3();
  say("r");
  const bytes = await readAllByob(socket.readable);
  socket.close();
  say(`${bytes}\n`);
} else if (mode === "read-stdin") {
  say("r");
  const bytes = await readAllByob(Deno.stdin.readable);
  say(`${bytes}\n`);
} else if (mode === "echo") {
  const rx = shmQueueFromFd(3);
  const tx = shmQueueFromFd(4);
  if (!(rx instanceof ShmReceiver) || !(tx instanceof ShmSender)) {
    throw new TypeError("expected a receiver on fd 3 and a sender on fd 4");
  }
  for await (const message of rx) {
    const query = message.byteLength === 1 && message[0] === CPU_QUERY[0];
    await tx.send(query ? encodeCpu(cpuUs()) : message);
  }
  tx.close();
  rx.close();
} else {
  throw new Error(`Unknown mode ${mode}`);
}

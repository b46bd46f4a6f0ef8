/**
 * Messages of varied sizes from a parent to its child through a ring in
 * shared memory, with replies on a second ring (a port of seed 004, a Rust
 * shared-memory queue with fd passing).
 *
 * Where the original falls short, this version:
 * - takes messages of any size up to the ring (1 byte to 1 MiB here), not
 *   elements of one fixed size declared up front;
 * - waits in `recv()` without a polling loop: the child parks in the
 *   process's one poller until the parent rings its doorbell, and sees
 *   `null` once the parent's sender is closed and the ring is drained;
 * - fails cleanly instead of faulting: a queue end used after `close()`
 *   throws `BadResource`, a message larger than the ring is a `RangeError`
 *   at `send()`, and a corrupt ring is reported, never read out of bounds;
 * - hands each end over like any other endpoint: `spawn({ fds })` here, or
 *   `UnixSocket.send(bytes, { fds })` to any number of unrelated clients.
 *
 * Run: `deno run --allow-ffi --allow-run examples/shm_queue.ts`
 *
 * @module
 */

import { fromFd, shmQueue, ShmReceiver, ShmSender, spawn } from "../mod.ts";

const SIZES = [1, 100, 4096, 65_536, 1 << 20, 0, 333_333, 7];

function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum * 31 + b) >>> 0;
  return sum;
}

if (Deno.args[0] === "child") {
  const rx = fromFd(3);
  const tx = fromFd(4);
  if (!(rx instanceof ShmReceiver) || !(tx instanceof ShmSender)) {
    throw new TypeError(
      "expected a queue receiver on fd 3 and a sender on fd 4",
    );
  }
  // Parks between messages: no polling loop, no thread per wait.
  for await (const message of rx) {
    console.log(`child:  received ${message.length} bytes`);
    const reply = new DataView(new ArrayBuffer(8));
    reply.setUint32(0, message.length, true);
    reply.setUint32(4, checksum(message), true);
    await tx.send(new Uint8Array(reply.buffer));
  }
  tx.close(); // null from recv(): the parent closed its sender
  rx.close();
} else {
  const [toChild, childRx] = shmQueue({ bytes: 1 << 20 });
  const [childTx, fromChild] = shmQueue({ bytes: 4096 });
  const child = spawn(Deno.execPath(), {
    args: ["run", "--allow-ffi", import.meta.filename!, "child"],
    fds: [childRx, childTx], // fd 3 and fd 4 in the child
  });
  childRx.close(); // the child has its own copies
  childTx.close();

  for (const size of SIZES) {
    const message = new Uint8Array(size).map((_, i) => (i * 7 + size) & 0xff);
    await toChild.send(message);
    const reply = await fromChild.recv();
    if (reply === null) throw new Error("the child closed its queue early");
    const view = new DataView(reply.buffer, reply.byteOffset, reply.byteLength);
    const ok = view.getUint32(0, true) === size &&
      view.getUint32(4, true) === checksum(message);
    console.log(`parent: ${size} bytes echoed as length+checksum: ${ok}`);
  }

  // Larger than the ring: a RangeError, nothing written.
  await toChild.send(new Uint8Array((1 << 20) + 1)).catch((error) =>
    console.log(`parent: ${error.name}: ${error.message}`)
  );

  toChild.close(); // the child's recv() returns null and it exits
  // After close, a clean error instead of a segfault.
  await toChild.send(new Uint8Array(1)).catch((error) =>
    console.log(`parent: ${error.name}: ${error.message}`)
  );
  console.log(`parent: the child said goodbye: ${await fromChild.recv()}`);
  fromChild.close();
  const status = await child.status;
  console.log(`parent: child ${child.pid} exited with code ${status.code}`);
}

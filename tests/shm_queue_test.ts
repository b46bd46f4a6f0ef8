import assert from "node:assert/strict";
import {
  fromFd,
  listen,
  pipe,
  type ShmQueue,
  shmQueue,
  shmQueueFromFd,
  ShmReceiver,
  ShmSender,
  socketpair,
  spawn,
  UnixSocket,
  wakePath,
} from "../mod.ts";
import {
  delay,
  DENO,
  fixture,
  pollerWaits,
  stillPending,
  test,
  until,
  withTimeout,
  zombieChildren,
} from "./_util.ts";
import { message, messageSizes, mismatch } from "./fixtures/_shm_messages.ts";
import { libc } from "../ffi/libc.ts";
import { MMAP, O, SOCK } from "../ffi/layout.ts";
import { cstr } from "../ffi/mem.ts";
import {
  HELLO_MAGIC,
  HELLO_VERSION,
  peekHello,
  ROLE,
  sendHello,
} from "../shm/_carrier.ts";
import { createMemfd } from "../shm/_memfd.ts";
import { releaseFd } from "../_keys.ts";
import { parkedOn, ringViews } from "../shm/_keys.ts";

const PEER = fixture("shm_peer.ts");
const local = { ffi: true } as const;
const perms = { ffi: true, read: true, run: true, env: true } as const;
const decoder = new TextDecoder();

/** Starts the peer fixture with `fds`, closes this process's copies. */
function peer(args: string[], fds: { rawFd: number; close(): void }[]) {
  const child = spawn(DENO, {
    args: ["run", "--allow-ffi", "--allow-read", PEER, ...args],
    fds,
    stdout: "piped",
    stderr: "piped",
  });
  for (const end of fds) end.close();
  return child;
}

async function finish(
  child: ReturnType<typeof peer>,
  what: string,
): Promise<{ code: number; signal: string | null; out: string; err: string }> {
  try {
    const result = await withTimeout(child.output(), 20_000, what);
    return {
      code: result.code,
      signal: result.signal,
      out: decoder.decode(result.stdout),
      err: decoder.decode(result.stderr),
    };
  } catch (error) {
    await child[Symbol.asyncDispose]();
    throw error;
  }
}

test(
  "recv({ into }) copies each message into the caller's buffer, across the wrap, and returns a view of it",
  async () => {
    using q = shmQueue({ bytes: 4096 });
    const [tx, rx] = q;
    const buffer = new Uint8Array(4096);
    const sizes = [0, 1, 7, 4096, 3000, 2500, 4095, 100];
    for (let round = 0; round < 10; round++) {
      for (const [i, size] of sizes.entries()) {
        await tx.send(message(round * 100 + i, size));
        const got = await rx.recv({ into: buffer });
        assert.ok(got !== null);
        assert.equal(got.buffer, buffer.buffer, "a view of the buffer given");
        assert.equal(got.byteOffset, 0);
        assert.equal(mismatch(got, round * 100 + i, size), "");
      }
    }
    // A receive that waits fills the buffer too.
    const waiting = rx.recv({ into: buffer });
    await tx.send(message(7, 50));
    const late = await withTimeout(waiting, 5000, "a waiting recv({ into })");
    assert.equal(late?.buffer, buffer.buffer);
    assert.equal(mismatch(late!, 7, 50), "");
  },
  local,
);

test(
  "recv({ into }) with a buffer too small is a RangeError naming both sizes and leaves the message for a larger buffer; a bad into is a TypeError",
  async () => {
    using q = shmQueue({ bytes: 4096 });
    const [tx, rx] = q;
    await tx.send(message(1, 100));
    await assert.rejects(
      rx.recv({ into: new Uint8Array(99) }),
      (error: unknown) =>
        error instanceof RangeError && /100 bytes/.test(error.message) &&
        /99/.test(error.message),
    );
    const got = await rx.recv({ into: new Uint8Array(100) });
    assert.equal(mismatch(got!, 1, 100), "", "the message was kept whole");
    await assert.rejects(
      rx.recv({ into: "buffer" as unknown as Uint8Array }),
      TypeError,
    );
    const moved = new Uint8Array(64);
    structuredClone(moved.buffer, { transfer: [moved.buffer] });
    await assert.rejects(
      rx.recv({ into: moved }),
      (error: unknown) =>
        error instanceof TypeError && /transferred/.test(error.message),
    );
    // A buffer transferred while the receive waits: TypeError, message kept.
    const pending = new Uint8Array(64);
    const waiting = rx.recv({ into: pending });
    structuredClone(pending.buffer, { transfer: [pending.buffer] });
    await tx.send(message(3, 20));
    await assert.rejects(
      withTimeout(waiting, 5000, "a receive whose buffer was transferred"),
      (error: unknown) =>
        error instanceof TypeError && /transferred/.test(error.message),
    );
    assert.equal(mismatch((await rx.recv())!, 3, 20), "", "kept for later");
    // The end still works after the refusals.
    await tx.send(message(2, 10));
    assert.equal(mismatch((await rx.recv())!, 2, 10), "");
  },
  local,
);

test(
  "a queued send whose buffer is transferred, shrunk or grown past the ring while it waits never goes shorter and never hangs the sender",
  async () => {
    using q = shmQueue({ bytes: 4096 });
    const [tx, rx] = q;
    const fill = [];
    for (let i = 0; i < 4; i++) fill.push(tx.send(message(i, 1000)));
    const moved = message(10, 100);
    const shrinks = new ArrayBuffer(100, { maxByteLength: 8192 });
    const shrunk = new Uint8Array(shrinks); // tracks the buffer's length
    shrunk.set(message(11, 100));
    const grows = new ArrayBuffer(100, { maxByteLength: 1 << 20 });
    const grown = new Uint8Array(grows); // tracks the buffer's length
    grown.set(message(12, 100));
    const sends = [moved, shrunk, grown].map((bytes) => tx.send(bytes));
    const last = tx.send(message(13, 10));
    for (const send of sends) send.catch(() => {});
    assert.ok(await stillPending(sends[0], 20), "the ring was not full");
    structuredClone(moved.buffer, { transfer: [moved.buffer] });
    shrinks.resize(50);
    grows.resize(1 << 19); // far more than the ring holds
    for (let i = 0; i < 4; i++) {
      const got = await withTimeout(rx.recv(), 5000, "a filler");
      assert.equal(mismatch(got!, i, 1000), "");
    }
    await assert.rejects(
      withTimeout(sends[0], 5000, "the send of the transferred buffer"),
      (error: unknown) =>
        error instanceof TypeError &&
        error.message ===
          "Cannot send on shmQueue: the buffer was transferred (detached) while the send waited; none of it was sent",
    );
    await assert.rejects(
      withTimeout(sends[1], 5000, "the send of the shrunk buffer"),
      (error: unknown) =>
        error instanceof TypeError &&
        /resized below the bytes given/.test(error.message),
    );
    await withTimeout(sends[2], 5000, "the send of the grown buffer");
    const grownGot = await withTimeout(rx.recv(), 5000, "the grown message");
    assert.equal(mismatch(grownGot!, 12, 100), "", "sent as it was given");
    await withTimeout(Promise.all(fill), 5000, "the fillers");
    await withTimeout(last, 5000, "the last send");
    const lastGot = await withTimeout(rx.recv(), 5000, "the last message");
    assert.equal(mismatch(lastGot!, 13, 10), "");
  },
  local,
);

test(
  "ShmReceiver maxMessageBytes lowered: a larger message fails the receive with InvalidData, for good; smaller ones before it arrive",
  async () => {
    using q = shmQueue({ bytes: 1 << 16 });
    const [tx, rx] = q;
    assert.equal(rx.maxMessageBytes, 1 << 16);
    for (const bad of [-1, 1.5, NaN, (1 << 16) + 1]) {
      assert.throws(
        () => (rx.maxMessageBytes = bad),
        RangeError,
        `maxMessageBytes = ${bad}`,
      );
    }
    rx.maxMessageBytes = 100;
    assert.equal(rx.maxMessageBytes, 100);
    assert.match(Deno.inspect(rx), /maxMessageBytes: 100 \}/);
    assert.equal(tx.maxMessageBytes, 1 << 16, "the sender keeps the ring's");
    await tx.send(message(1, 100));
    await tx.send(message(2, 101));
    assert.equal(mismatch((await rx.recv())!, 1, 100), "");
    for (let i = 0; i < 2; i++) {
      await assert.rejects(
        withTimeout(rx.recv(), 5000, "the refused message"),
        (error: Error) =>
          error instanceof Deno.errors.InvalidData &&
          /101 bytes exceeds this receiver's maxMessageBytes 100/.test(
            error.message,
          ),
      );
    }
  },
  local,
);

test(
  "shmQueue() delivers whole messages of every size up to the ring, in order, across the wrap",
  async () => {
    using q = shmQueue({ bytes: 4096 });
    const [tx, rx] = q;
    assert.equal(tx.maxMessageBytes, 4096);
    assert.equal(rx.maxMessageBytes, 4096);
    // The deprecated name, kept until 0.2.0.
    assert.equal(tx.maxMessage, 4096);
    const sizes = [0, 1, 7, 8, 9, 4096, 3000, 2500, 4095, 100, 0, 4000];
    for (let round = 0; round < 20; round++) {
      for (const [i, size] of sizes.entries()) {
        await tx.send(message(round * 100 + i, size));
        const got = await rx.recv();
        assert.ok(got !== null);
        assert.equal(mismatch(got, round * 100 + i, size), "");
      }
    }
    // Several messages at once, filling the ring exactly.
    for (let i = 0; i < 4; i++) await tx.send(message(i, 1016));
    for (let i = 0; i < 4; i++) {
      assert.equal(mismatch((await rx.recv())!, i, 1016), "");
    }
  },
  local,
);

test(
  "send() rejects a message larger than the ring with a RangeError that says both sizes",
  async () => {
    using q = shmQueue({ bytes: 4 << 20 });
    await assert.rejects(
      q[0].send(new Uint8Array(5_000_000)),
      (error: Error) =>
        error instanceof RangeError &&
        error.message ===
          "Cannot send on shmQueue: message of 5000000 bytes exceeds the ring's 4194304",
    );
    await q[0].send(new Uint8Array(4 << 20));
    assert.equal((await q[1].recv())?.length, 4 << 20);
    assert.throws(() => shmQueue({ bytes: 0 }), RangeError);
    assert.throws(() => shmQueue({ bytes: 2 ** 31 }), RangeError);
  },
  local,
);

test(
  "recv() parks without a polling loop (on the event loop's read of the doorbell on the aio path, in the poller on ffi) and wakes when a message is sent; send() waits for room the same way",
  async () => {
    using q = shmQueue({ bytes: 1024 });
    const [tx, rx] = q;
    const aio = wakePath().path !== "ffi";
    const pending = rx.recv();
    assert.ok(await stillPending(pending, 50));
    // One wait, nothing else running: no timer, no loop. On the aio path
    // Deno's event loop reads the doorbell and the poller has no wait.
    assert.equal(rx[parkedOn](), aio ? "bell" : "poller");
    assert.equal(pollerWaits(), aio ? 0 : 1);
    await tx.send(new Uint8Array([42]));
    assert.deepEqual(
      await withTimeout(pending, 2000, "recv"),
      new Uint8Array([42]),
    );
    // Fill the ring, then a send waits until the receiver makes room.
    await tx.send(new Uint8Array(1024));
    const blocked = tx.send(new Uint8Array(512));
    assert.ok(await stillPending(blocked, 50));
    assert.equal(tx[parkedOn](), aio ? "bell" : "poller");
    assert.equal(rx[parkedOn](), undefined);
    assert.equal((await rx.recv())?.length, 1024);
    await withTimeout(blocked, 2000, "send after room");
    assert.equal((await rx.recv())?.length, 512);
  },
  local,
);

test(
  "recv() returns null once the sender is closed and the ring is drained; a pending recv() wakes with null",
  async () => {
    const [tx, rx] = shmQueue({ bytes: 256 });
    await tx.send(new Uint8Array([1]));
    await tx.send(new Uint8Array([2]));
    tx.close();
    assert.deepEqual(await rx.recv(), new Uint8Array([1]));
    assert.deepEqual(await rx.recv(), new Uint8Array([2]));
    assert.equal(await rx.recv(), null);
    assert.equal(await rx.recv(), null);
    rx.close();

    const [tx2, rx2] = shmQueue({ bytes: 256 });
    const pending = rx2.recv();
    assert.ok(await stillPending(pending, 20));
    tx2.close();
    assert.equal(await withTimeout(pending, 2000, "recv"), null);
    rx2.close();
  },
  local,
);

test(
  "queue ends close idempotently, reject pending and later calls with BadResource naming the end",
  async () => {
    const [tx, rx] = shmQueue({ bytes: 256 });
    const pending = rx.recv();
    rx.close();
    rx.close();
    rx[Symbol.dispose]();
    await assert.rejects(pending, Deno.errors.BadResource);
    await assert.rejects(rx.recv(), /Cannot use ShmReceiver: it is closed/);
    assert.throws(() => rx.rawFd, Deno.errors.BadResource);
    assert.equal(rx.closed, true);
    // The receiver is gone: the sender finds out when it must wait.
    await tx.send(new Uint8Array(200));
    await assert.rejects(
      withTimeout(tx.send(new Uint8Array(200)), 2000, "send"),
      (e: Error) =>
        e instanceof Deno.errors.BrokenPipe &&
        /receiver is gone/.test(e.message),
    );
    tx.close();
    await assert.rejects(
      tx.send(new Uint8Array(1)),
      /Cannot use ShmSender: it is closed/,
    );
  },
  local,
);

test(
  "a corrupt ring fails with InvalidData and never reads out of bounds: long record, bad position, bad sequence",
  async () => {
    const cases: [string, (h: Int32Array, d: DataView) => void][] = [
      ["runs past", (_h, d) => d.setUint32(0, 200, true)],
      ["exceeds the largest", (_h, d) => d.setUint32(0, 0xffff_fff0, true)],
      ["outside the ring", (h) => Atomics.store(h, 16, 1 << 30)],
      ["sequence number", (_h, d) => d.setInt32(4, 77, true)],
      ["bytes in use", (h) => Atomics.store(h, 32, 256)],
    ];
    for (const [expected, corrupt] of cases) {
      using q = shmQueue({ bytes: 256 });
      const [tx, rx] = q;
      await tx.send(new Uint8Array(10));
      const { header, data } = tx[ringViews]();
      corrupt(header, new DataView(data.buffer, data.byteOffset));
      await assert.rejects(
        rx.recv(),
        (e: Error) =>
          e instanceof Deno.errors.InvalidData &&
          e.message.startsWith("Cannot receive on shmQueue: corrupt ring") &&
          e.message.includes(expected),
        expected,
      );
      // It stays failed rather than reading on.
      await assert.rejects(rx.recv(), Deno.errors.InvalidData);
    }
  },
  local,
);

test(
  "fromFd() leaves a plain seqpacket socket a UnixSocket and shmQueueFromFd() refuses it",
  async () => {
    using pair = socketpair({ type: "seqpacket" });
    await pair[1].send(new Uint8Array([1, 2, 3]));
    assert.throws(
      () => shmQueueFromFd(pair[0].rawFd),
      /is not a shmQueue end/,
    );
    const again = fromFd(pair[0][releaseFd](), { allowCloexec: true });
    assert.ok(again instanceof UnixSocket);
    // The peek left the message in place.
    assert.deepEqual((await again.recv())?.data, new Uint8Array([1, 2, 3]));
    again.close();
  },
  local,
);

test(
  "1000 messages of random sizes up to half the ring reach a child intact, and 1000 come back from another",
  async () => {
    const bytes = 256 * 1024;
    const [tx, rx] = shmQueue({ bytes });
    const child = peer(["verify", "1000", String(bytes / 2)], [rx]);
    const sizes = messageSizes(1000, bytes / 2);
    try {
      for (let i = 0; i < 1000; i++) await tx.send(message(i, sizes[i]));
    } finally {
      tx.close();
    }
    const result = await finish(child, "verifying child");
    assert.equal(result.err, "");
    assert.equal(result.out, "verified 1000\n");
    assert.equal(result.code, 0);

    const [tx2, rx2] = shmQueue({ bytes });
    const sender = peer(["send", "1000", String(bytes / 2)], [tx2]);
    try {
      for (let i = 0; i < 1000; i++) {
        const got = await withTimeout(rx2.recv(), 10_000, `message ${i}`);
        assert.ok(got !== null, `null at ${i}`);
        assert.equal(mismatch(got, i, sizes[i]), "");
      }
      assert.equal(await withTimeout(rx2.recv(), 10_000, "end"), null);
    } finally {
      rx2.close();
    }
    assert.equal((await finish(sender, "sending child")).out, "sent 1000\n");
    assert.deepEqual(zombieChildren(), []);
  },
  perms,
);

test(
  "a sender killed in the middle of a message: the receiver gets the whole messages, then null, never the partial one",
  async () => {
    const [tx, rx] = shmQueue({ bytes: 64 * 1024 });
    const child = peer(["die-mid-message", "3"], [tx]);
    try {
      for (let i = 0; i < 3; i++) {
        const got = await withTimeout(rx.recv(), 10_000, `message ${i}`);
        assert.equal(mismatch(got!, i, 1000), "");
      }
      assert.equal(await withTimeout(rx.recv(), 10_000, "end"), null);
    } finally {
      rx.close();
    }
    const result = await finish(child, "child");
    assert.equal(result.signal, "SIGKILL");
  },
  perms,
);

test(
  "a sender killed by SIGKILL while copying large messages: every message received is whole, then null",
  async () => {
    const size = 8 << 20;
    const [tx, rx] = shmQueue({ bytes: 2 * size });
    const child = peer(["send-forever", String(size)], [tx]);
    try {
      for (let i = 0;; i++) {
        const got = await withTimeout(rx.recv(), 10_000, `message ${i}`);
        if (got === null) {
          assert.ok(i >= 3, `null after ${i} messages`);
          break;
        }
        assert.equal(mismatch(got, i, size), "");
        if (i === 2) child.kill("SIGKILL");
      }
    } finally {
      rx.close();
    }
    assert.equal((await finish(child, "child")).signal, "SIGKILL");
  },
  perms,
);

test(
  "a receiver killed by SIGKILL: sends succeed while there is room, then reject with BrokenPipe (bounded, no hang)",
  async () => {
    const [tx, rx] = shmQueue({ bytes: 16 * 1024 });
    const child = peer(["recv-then-die", "2"], [rx]);
    try {
      await tx.send(new Uint8Array(100));
      await tx.send(new Uint8Array(100));
      assert.equal((await finish(child, "child")).signal, "SIGKILL");
      let sent = 0;
      await assert.rejects(
        withTimeout(
          (async () => {
            for (;;) {
              await tx.send(new Uint8Array(1000));
              sent++;
            }
          })(),
          5000,
          "sends to a dead receiver",
        ),
        Deno.errors.BrokenPipe,
      );
      assert.ok(sent <= 16, `${sent} sends went through`);
    } finally {
      tx.close();
    }
  },
  perms,
);

test(
  "queue ends travel over a UnixSocket (SCM_RIGHTS) and through spawn() and come back as live ends",
  async () => {
    // Over a socket: the receiver is rebuilt by the child's recv().
    const [mine, theirs] = socketpair({ type: "seqpacket" });
    const child = peer(["via-socket", "50", "3000"], [theirs]);
    const [tx, rx] = shmQueue({ bytes: 8192 });
    await mine.send(new Uint8Array([1]), { fds: [rx], closeSent: true });
    mine.close();
    const sizes = messageSizes(50, 3000);
    for (let i = 0; i < 50; i++) await tx.send(message(i, sizes[i]));
    tx.close();
    assert.equal((await finish(child, "child")).out, "verified 50\n");

    // Both ends of two queues to an echoing child.
    const there = shmQueue({ bytes: 70_000 });
    const back = shmQueue({ bytes: 70_000 });
    const echo = peer(["echo"], [there[1], back[0]]);
    for (const size of [0, 1, 65536, 70_000, 12345]) {
      await there[0].send(message(size, size));
      const got = await withTimeout(back[1].recv(), 10_000, `echo ${size}`);
      assert.equal(mismatch(got!, size, size), "");
    }
    there[0].close();
    assert.equal(await withTimeout(back[1].recv(), 10_000, "end"), null);
    back[1].close();
    assert.equal((await finish(echo, "echo")).code, 0);
  },
  perms,
);

test(
  "an end handed over and rebuilt in this process (shmQueueFromFd) keeps the ring's position",
  async () => {
    const q: ShmQueue = shmQueue({ bytes: 512 });
    await q[0].send(new Uint8Array([1]));
    assert.deepEqual(await q[1].recv(), new Uint8Array([1]));
    await q[0].send(new Uint8Array([2]));
    const tx = shmQueueFromFd(q[0][releaseFd]());
    const rx = fromFd(q[1][releaseFd](), { allowCloexec: true });
    assert.ok(tx instanceof ShmSender);
    assert.ok(rx instanceof ShmReceiver);
    await tx.send(new Uint8Array([3]));
    assert.deepEqual(await rx.recv(), new Uint8Array([2]));
    assert.deepEqual(await rx.recv(), new Uint8Array([3]));
    tx.close();
    assert.equal(await rx.recv(), null);
    rx.close();
  },
  local,
);

test(
  "a carrier whose shared memory is not sealed against shrinking is refused (a peer could make this process fault)",
  () => {
    const lib = libc();
    const memfd = lib.memfd_create(cstr("unsealed"), MMAP.MFD_CLOEXEC);
    assert.ok(memfd >= 0);
    assert.equal(lib.ftruncate(memfd, 4096n), 0);
    using bells = socketpair({ type: "seqpacket" });
    using carrier = socketpair({ type: "seqpacket" });
    sendHello(carrier[1].rawFd, ROLE.receiver, [memfd, bells[0].rawFd]);
    lib.close(memfd);
    assert.throws(
      () => shmQueueFromFd(carrier[0].rawFd),
      (e: Error) => e instanceof TypeError && /not sealed/.test(e.message),
    );
  },
  local,
);

/**
 * A seqpacket socket whose queue holds a forged hello for `role` with
 * `fds` (this process keeps its copies); returns the carrier's fd.
 */
function forgedCarrier(role: number, fds: (carrier: number) => number[]) {
  const [keep, put] = socketpair({ type: "seqpacket" });
  sendHello(put.rawFd, role, fds(keep.rawFd));
  put.close();
  return keep[releaseFd]();
}

test(
  "a queue end whose doorbell is not a unix seqpacket socket (regular file, eventfd, pipe, other sockets, its own carrier) is refused at adoption, by fromFd() and by recv() of a socket, leaking nothing",
  async () => {
    const lib = libc();
    using q = shmQueue({ bytes: 256 });
    // The real ring memory, as a hostile peer could pass it along.
    const real = peekHello(q[1].rawFd)!;
    const [ringFd] = real.fds;
    lib.close(real.fds[1]);
    const opened: number[] = [ringFd];
    const keep = (fd: number) => {
      assert.ok(fd >= 0);
      opened.push(fd);
      return fd;
    };
    try {
      const file = keep(
        lib.open(
          cstr(new URL("../deno.json", import.meta.url).pathname),
          O.RDONLY | O.CLOEXEC,
          0,
        ),
      );
      const eventfd = keep(lib.eventfd(0, 0o2000000));
      const { reader, writer } = pipe();
      const pipeFd = keep(reader[releaseFd]());
      writer.close();
      const [stream, streamPeer] = socketpair({ type: "stream" });
      streamPeer.close();
      const streamFd = keep(stream[releaseFd]());
      const [dgram, dgramPeer] = socketpair({ type: "dgram" });
      dgramPeer.close();
      const dgramFd = keep(dgram[releaseFd]());
      const name = `conduit-test-bell-${crypto.randomUUID()}`;
      using listener = listen({ abstract: name, type: "seqpacket" });
      const bells: [string, (carrier: number) => number, RegExp][] = [
        ["a regular file", () => file, /doorbell is a regular file/],
        ["an eventfd", () => eventfd, /not a socket/],
        ["a pipe", () => pipeFd, /doorbell is a pipe/],
        ["a stream socket", () => streamFd, /socket of another kind/],
        ["a dgram socket", () => dgramFd, /socket of another kind/],
        [
          "a listening socket",
          () => listener.rawFd,
          /socket of another kind/,
        ],
        ["its own carrier", (carrier) => carrier, /its own carrier/],
      ];
      for (const [what, bell, expected] of bells) {
        for (const role of [ROLE.sender, ROLE.receiver]) {
          const carrier = forgedCarrier(role, (c) => [ringFd, bell(c)]);
          try {
            assert.throws(
              () => shmQueueFromFd(carrier),
              (e: Error) =>
                e instanceof TypeError &&
                e.message.startsWith(
                  `Cannot adopt ${
                    role === ROLE.sender ? "ShmSender" : "ShmReceiver"
                  } from fd ${carrier}: `,
                ) && expected.test(e.message),
              what,
            );
            assert.throws(
              () => fromFd(carrier, { allowCloexec: true }),
              expected,
              what,
            );
          } finally {
            lib.close(carrier);
          }
        }
      }
      // The same end received in a message: recv() refuses it and closes
      // every fd that came with it.
      const [a, b] = socketpair({ type: "seqpacket" });
      try {
        const carrier = forgedCarrier(ROLE.receiver, () => [ringFd, file]);
        try {
          await a.send(new Uint8Array([1]), { fds: [carrier] });
        } finally {
          lib.close(carrier);
        }
        await assert.rejects(
          withTimeout(b.recv(), 2000, "recv"),
          (e: Error) =>
            e instanceof TypeError &&
            /fits no endpoint/.test(e.message) &&
            /doorbell is a regular file/.test((e.cause as Error).message),
        );
      } finally {
        a.close();
        b.close();
      }
    } finally {
      for (const fd of opened) lib.close(fd);
    }
  },
);

test(
  "a queue end whose memory is not a sealed ring (an eventfd, too small, no ring in it) is refused at adoption, leaking nothing",
  () => {
    const lib = libc();
    using bells = socketpair({ type: "seqpacket" });
    const cases: [string, () => number, RegExp][] = [
      ["an eventfd", () => lib.eventfd(0, 0o2000000), /not sealed/],
      ["too small", () => createMemfd(100, "small"), /no shmQueue ring/],
      ["no ring", () => createMemfd(4096, "empty"), /bad magic/],
    ];
    for (const [what, make, expected] of cases) {
      const memory = make();
      assert.ok(memory >= 0);
      const carrier = forgedCarrier(
        ROLE.receiver,
        () => [memory, bells[0].rawFd],
      );
      lib.close(memory);
      try {
        assert.throws(
          () => shmQueueFromFd(carrier),
          (e: Error) => e instanceof TypeError && expected.test(e.message),
          what,
        );
      } finally {
        lib.close(carrier);
      }
    }
  },
);

test(
  "a queue end whose doorbell was never connected ends its waits (recv() returns null, send() rejects with BrokenPipe) instead of hanging or throwing from the poller",
  async () => {
    const lib = libc();
    for (const role of [ROLE.receiver, ROLE.sender]) {
      using q = shmQueue({ bytes: 64 });
      const real = peekHello(q[1].rawFd)!;
      lib.close(real.fds[1]);
      const lone = lib.socket(SOCK.AF_UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC, 0);
      assert.ok(lone >= 0);
      const carrier = forgedCarrier(role, () => [real.fds[0], lone]);
      lib.close(real.fds[0]);
      lib.close(lone);
      using end = shmQueueFromFd(carrier, { spin: 0 });
      if (end instanceof ShmReceiver) {
        assert.equal(await withTimeout(end.recv(), 2000, "recv"), null);
      } else {
        await end.send(new Uint8Array(64));
        await assert.rejects(
          withTimeout(end.send(new Uint8Array(64)), 2000, "send"),
          Deno.errors.BrokenPipe,
        );
      }
    }
  },
);

/** Work that takes a while without reading any clock: a few hashes. */
function busyWork(message: Uint8Array): number {
  let h = 2166136261;
  for (let round = 0; round < 40; round++) {
    for (let i = 0; i < message.length; i++) {
      h = Math.imul(h ^ message[i], 16777619);
    }
  }
  return h;
}

test(
  "a for await over a queue that a child floods lets a setInterval of this process tick (a macrotask turn after each slice of continuous delivery)",
  async () => {
    const [tx, rx] = shmQueue({ bytes: 1 << 20 });
    const child = peer(["flood", "64"], [tx]);
    let ticks = 0;
    const interval = setInterval(() => ticks++, 1);
    try {
      // The child fills the ring before the loop starts, and refills it
      // faster than the loop empties it: the loop never has to wait.
      const { header, data } = rx[ringViews]();
      const span = 2 * data.length;
      const used = () =>
        (Atomics.load(header, 16) - Atomics.load(header, 32) + span) % span;
      await until(
        () => used() > data.length / 2,
        10_000,
        "the child to fill half the ring",
      );
      ticks = 0;
      let received = 0;
      // No timer can bound this loop (a starved event loop never fires
      // one): it gives up after far more messages than a few slices take.
      for await (const message of rx) {
        busyWork(message);
        received++;
        if (ticks >= 3) break;
        if (received === 300_000) {
          throw new Error(
            `${received} messages received and the interval ticked ${ticks} times`,
          );
        }
      }
      assert.ok(ticks >= 3, `the queue ended after ${received} messages`);
    } finally {
      clearInterval(interval);
      rx.close();
    }
    const result = await finish(child, "flooding child");
    assert.equal(result.err, "");
    assert.equal(result.out, "flooded some\n");
  },
  perms,
);

test(
  "a send loop that never waits for room lets a setInterval tick (a macrotask turn after each slice of continuous delivery)",
  async () => {
    using q = shmQueue({ bytes: 16 << 20 });
    const [tx] = q;
    let ticks = 0;
    const interval = setInterval(() => ticks++, 1);
    try {
      const message = new Uint8Array(64);
      // The ring takes ~233,000 of these: no send waits before that.
      let sent = 0;
      while (ticks < 3) {
        if (++sent === 200_000) {
          throw new Error(
            `${sent} sends and the interval ticked ${ticks} times`,
          );
        }
        await tx.send(message);
        busyWork(message);
      }
    } finally {
      clearInterval(interval);
    }
  },
  local,
);

test(
  "spin is checked like every wait's: a number of µs from 0 to one second, or absent for the adaptive default",
  () => {
    assert.throws(() => shmQueue({ spin: -1 }), RangeError);
    assert.throws(() => shmQueue({ spin: Infinity }), RangeError);
    assert.throws(
      () => shmQueue({ spin: "10" as unknown as number }),
      TypeError,
    );
    using q = shmQueue({ spin: 0 });
    assert.throws(
      () => shmQueueFromFd(q[0].rawFd, { spin: NaN }),
      (e: Error) =>
        e instanceof RangeError &&
        e.message.startsWith(`Cannot adopt fd ${q[0].rawFd}: spin`),
    );
    shmQueue({ spin: 50 })[Symbol.dispose]();
    shmQueue()[Symbol.dispose]();
  },
  local,
);

/** Whether a ring is pending on the doorbell of the end behind `carrier`. */
function rungDoorbell(carrier: number): boolean {
  const lib = libc();
  const hello = peekHello(carrier)!;
  try {
    const byte = new Uint8Array(8);
    return Number(lib.recv(hello.fds[1], byte, 8n, 0x02 | 0x40)) > 0;
  } finally {
    for (const fd of hello.fds) lib.close(fd);
  }
}

test(
  "the sender rings the doorbell only while the receiver is parked; a busy queue makes no system call",
  async () => {
    using q = shmQueue({ bytes: 4096, spin: 0 });
    const [tx, rx] = q;
    for (let i = 0; i < 20; i++) await tx.send(new Uint8Array(100));
    for (let i = 0; i < 20; i++) await rx.recv();
    assert.equal(rungDoorbell(rx.rawFd), false);
    const pending = rx.recv();
    assert.ok(await stillPending(pending, 20));
    await tx.send(new Uint8Array([9]));
    assert.deepEqual(
      await withTimeout(pending, 2000, "recv"),
      new Uint8Array([9]),
    );
    // The one ring was taken off by the receiver it woke.
    assert.equal(rungDoorbell(rx.rawFd), false);
  },
  local,
);

test(
  "a sender parked on a full ring is rung at once when half the ring is free, and only after a macrotask turn when just its record fits",
  async () => {
    using q = shmQueue({ bytes: 1024, spin: 0 });
    const [tx, rx] = q;
    const { header } = tx[ringViews]();
    const SENDER_WAITING = 34;
    // Eight records of 128 bytes fill the ring of 1032 but 8 bytes.
    for (let i = 0; i < 8; i++) await tx.send(message(i, 120));
    const blocked = tx.send(message(8, 120));
    assert.ok(await stillPending(blocked, 20));
    assert.equal(Atomics.load(header, SENDER_WAITING), 1);
    // One record out: the next fits, but a ring now would wake the sender
    // for every record. (A message already in the ring is taken within the
    // call, so the flag is looked at before anything else runs.)
    const first = rx.recv();
    assert.equal(Atomics.load(header, SENDER_WAITING), 1);
    assert.equal(mismatch((await first)!, 0, 120), "");
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.equal(Atomics.load(header, SENDER_WAITING), 0);
    await withTimeout(blocked, 2000, "send after a turn");

    // Full again (records 1 to 8): three records out leave less than half
    // the ring free, the fourth frees more than half and rings at once.
    const again = tx.send(message(9, 120));
    assert.ok(await stillPending(again, 20));
    assert.equal(Atomics.load(header, SENDER_WAITING), 1);
    const taken = [];
    for (let i = 1; i < 4; i++) {
      taken.push(rx.recv());
      assert.equal(Atomics.load(header, SENDER_WAITING), 1);
    }
    taken.push(rx.recv());
    assert.equal(Atomics.load(header, SENDER_WAITING), 0);
    for (const [i, got] of taken.entries()) {
      assert.equal(mismatch((await got)!, i + 1, 120), "");
    }
    await withTimeout(again, 2000, "send after half the ring");
    for (let i = 5; i <= 9; i++) {
      assert.equal(mismatch((await rx.recv())!, i, 120), "");
    }
  },
  local,
);

test(
  "20,000 messages through a 256-byte ring to a child and back, this side never spinning: no wake-up is lost",
  async () => {
    const there = shmQueue({ bytes: 256, spin: 0 });
    const back = shmQueue({ bytes: 256, spin: 0 });
    const echo = peer(["echo"], [there[1], back[0]]);
    const sizes = messageSizes(20_000, 256, 7);
    const sending = (async () => {
      try {
        for (let i = 0; i < sizes.length; i++) {
          await there[0].send(message(i, sizes[i]));
        }
      } finally {
        there[0].close();
      }
    })();
    try {
      for (let i = 0; i < sizes.length; i++) {
        const got = await withTimeout(back[1].recv(), 10_000, `echo ${i}`);
        assert.ok(got !== null, `null at ${i}`);
        assert.equal(mismatch(got, i, sizes[i]), "");
      }
      assert.equal(await withTimeout(back[1].recv(), 10_000, "end"), null);
      await sending;
    } finally {
      there[0].close();
      back[1].close();
    }
    assert.equal((await finish(echo, "echo")).code, 0);
  },
  perms,
);

test(
  "receives and sends called together settle in call order, also when the first gives the event loop its turn",
  async () => {
    using q = shmQueue({ bytes: 4096 });
    const [tx, rx] = q;
    for (const round of [0, 1]) {
      // A pause without waiting on the queue: the slice of continuous
      // delivery is over, so the first call below yields a turn.
      await delay(10);
      const sent: number[] = [];
      await Promise.all(
        [0, 1, 2, 3, 4].map((i) =>
          tx.send(new Uint8Array([i])).then(() => sent.push(i))
        ),
      );
      assert.deepEqual(sent, [0, 1, 2, 3, 4], `round ${round}`);
      await delay(10);
      const received: number[] = [];
      await Promise.all(
        [0, 1, 2, 3, 4].map(() =>
          rx.recv().then((message) => received.push(message![0]))
        ),
      );
      assert.deepEqual(received, [0, 1, 2, 3, 4], `round ${round}`);
    }
  },
  local,
);

test("for await over a ShmReceiver takes messages that are there without a recv(), waits through recv() for the rest, and ends at the sender's close", async () => {
  const [tx, rx] = shmQueue({ bytes: 1 << 16 });
  let recvs = 0;
  const recv = rx.recv.bind(rx);
  rx.recv = (options) => {
    recvs++;
    return recv(options);
  };
  try {
    for (let i = 0; i < 5; i++) await tx.send(new Uint8Array([i]));
    const seen: number[] = [];
    const iterator = rx[Symbol.asyncIterator]();
    assert.equal(
      Object.prototype.toString.call(iterator),
      "[object AsyncGenerator]",
    );
    for (let i = 0; i < 5; i++) {
      const { value, done } = await iterator.next();
      assert.equal(done, false);
      seen.push(value![0]);
    }
    assert.equal(recvs, 0, "messages that were there went through recv()");
    // Nothing there: the next call waits in a recv(); the close ends it.
    const waiting = iterator.next();
    await delay(20);
    await tx.send(new Uint8Array([5]));
    const sixth = await withTimeout(waiting, 2000, "the sixth message");
    seen.push(sixth.value![0]);
    assert.equal(recvs, 1);
    tx.close();
    const end = await withTimeout(iterator.next(), 2000, "the end");
    assert.equal(end.done, true);
    assert.deepEqual(seen, [0, 1, 2, 3, 4, 5]);
    assert.equal((await iterator.next()).done, true, "ended for good");
  } finally {
    tx.close();
    rx.close();
  }
});

test(
  "a queue end whose hello carries more fds than a hello has room for is refused as malformed, not as a shortage of fds",
  () => {
    const lib = libc();
    const extra: number[] = [];
    try {
      for (let i = 0; i < 9; i++) extra.push(lib.eventfd(0, 0o2000000));
      // A hello as sendHello() writes one, with nine fds.
      const [keep, put] = socketpair({ type: "seqpacket" });
      const hello = new DataView(new ArrayBuffer(16));
      hello.setUint32(0, HELLO_MAGIC, true);
      hello.setUint32(4, HELLO_VERSION, true);
      hello.setUint32(8, ROLE.receiver, true);
      put.sendSync(new Uint8Array(hello.buffer), { fds: extra });
      put.close();
      const carrier = keep[releaseFd]();
      try {
        assert.throws(
          () => fromFd(carrier, { allowCloexec: true }),
          (e: Error) =>
            e instanceof TypeError &&
            e.message ===
              `Cannot adopt fd ${carrier}: a shmQueue end whose hello carries more than 8 fds`,
        );
      } finally {
        lib.close(carrier);
      }
    } finally {
      for (const fd of extra) lib.close(fd);
    }
  },
  local,
);

import assert from "node:assert/strict";
import { pipe, socketpair, type SocketType, UnixSocket } from "../mod.ts";
import { peekSize, receiveWholly, sendNoWait, wholeReserve } from "../_scm.ts";
import { libc } from "../ffi/libc.ts";
import { poller } from "../ffi/poller.ts";
import { F, O, SOCK } from "../ffi/layout.ts";
import { getIntOption } from "../_socket_options.ts";
import {
  lineOf,
  readExactly,
  SOCKET_CHILD,
  socketChild,
} from "./_socket_util.ts";
import {
  assertPattern,
  DENO,
  pattern,
  pollerIdle,
  readProcText,
  stillPending,
  test,
  withTimeout,
} from "./_util.ts";

const TYPES: SocketType[] = ["stream", "dgram", "seqpacket"];
const MESSAGE_TYPES: SocketType[] = ["dgram", "seqpacket"];
const perms = { ffi: true, read: true } as const;

/**
 * How many of the first `bytes` of the whole-packet reserve are resident
 * (mincore: one byte a page, bit 0 resident).
 */
function residentReservePages(bytes: number): number {
  const reserve = wholeReserve();
  assert.ok(reserve !== undefined, "the reserve was never made");
  const pages = Math.ceil(bytes / 4096);
  const residency = new Uint8Array(pages);
  const mincore = Deno.dlopen("libc.so.6", {
    mincore: { parameters: ["pointer", "usize", "buffer"], result: "i32" },
  });
  try {
    const rc = mincore.symbols.mincore(
      Deno.UnsafePointer.create(reserve),
      BigInt(pages * 4096),
      residency,
    );
    assert.equal(rc, 0);
  } finally {
    mincore.close();
  }
  return residency.filter((page) => (page & 1) !== 0).length;
}
const childPerms = { ffi: true, read: true, run: true } as const;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

test(
  "socketpair() stream sockets carry bytes both ways, like pipes",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    assert.equal(a.type, "stream");
    const data = pattern(300_000);
    const [, got] = await Promise.all([
      a.write(data),
      readExactly(b, data.length),
    ]);
    assertPattern(got, 0);
    await b.write(encoder.encode("back"));
    assert.equal(decoder.decode(await readExactly(a, 4)), "back");
  },
  perms,
);

test(
  "stream socket readable and writable move bytes with backpressure",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    const total = 4 << 20;
    const chunk = 64 * 1024;
    const writer = a.writable.getWriter();
    // Nothing reads yet: the writes must stall once the socket is full.
    const writes: Promise<void>[] = [];
    for (let at = 0; at < total; at += chunk) {
      writes.push(writer.write(pattern(chunk, at)));
    }
    const allWritten = Promise.all(writes);
    assert.equal(await stillPending(allWritten, 50), true);
    let received = 0;
    const reading = (async () => {
      for await (const part of b.readable) {
        assertPattern(part, received);
        received += part.length;
      }
    })();
    await withTimeout(allWritten, 10_000, "writes");
    // Closing the writable shuts down writing: the reader sees EOF.
    await writer.close();
    await withTimeout(reading, 10_000, "reading to EOF");
    assert.equal(received, total);
  },
  perms,
);

test(
  "a stream socket's writable whose write fails errors and shuts down writing; the socket stays open for reading",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    b.shutdown("read");
    const writer = a.writable.getWriter();
    await assert.rejects(
      writer.write(new Uint8Array(8)),
      Deno.errors.BrokenPipe,
    );
    await assert.rejects(writer.close(), TypeError);
    assert.equal(a.closed, false);
    await b.write(encoder.encode("still here"));
    b.shutdown("write");
    assert.equal(
      decoder.decode(await readExactly(a, 10)),
      "still here",
    );

    // A chunk that is no view errors the stream before anything is
    // written: the socket's writing goes on; any view goes byte for byte.
    using second = socketpair({ type: "stream" });
    const [c, d] = second;
    const w = c.writable.getWriter();
    await w.write(new Uint16Array([0x4241]) as unknown as Uint8Array);
    await assert.rejects(
      w.write("text" as unknown as Uint8Array),
      (error: Error) =>
        error instanceof TypeError &&
        error.message.includes(
          "Cannot write to UnixSocket through its writable",
        ),
    );
    await c.write(encoder.encode("C"));
    c.shutdown("write");
    assert.equal(decoder.decode(await readExactly(d, 3)), "ABC");
    assert.equal(
      await withTimeout(d.read(new Uint8Array(8)), 5000, "end of stream"),
      null,
    );
    assert.equal(c.closed, false);
  },
  perms,
);

/** Reads `socket` to end of stream; the byte count. */
async function drainCount(socket: UnixSocket): Promise<number> {
  const buffer = new Uint8Array(64 * 1024);
  let total = 0;
  for (;;) {
    const n = await socket.read(buffer);
    if (n === null) return total;
    total += n;
  }
}

test(
  "shutdown('write') lets queued writes out first; later writes name the shutdown, not the peer",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    const size = 4 << 20; // far more than the socket holds: it queues
    const written = a.write(new Uint8Array(size).fill(7));
    a.shutdown("write");
    const reading = drainCount(b);
    await withTimeout(written, 10_000, "the queued write");
    assert.equal(await withTimeout(reading, 10_000, "end of stream"), size);
    const shut = (error: Error, call: string) =>
      error instanceof Deno.errors.BrokenPipe &&
      error.message.startsWith(call) &&
      error.message.includes('writing was shut down (shutdown("write"))');
    await assert.rejects(
      a.write(Uint8Array.of(1)),
      (error: Error) => shut(error, "Cannot write to UnixSocket"),
    );
    await assert.rejects(
      a.send(Uint8Array.of(1)),
      (error: Error) => shut(error, "Cannot send on UnixSocket"),
    );
    assert.throws(
      () => a.writeSync(Uint8Array.of(1)),
      (error: Error) => shut(error, "Cannot write to UnixSocket"),
    );
    // Reading goes on.
    await b.write(encoder.encode("ok"));
    assert.equal(decoder.decode(await readExactly(a, 2)), "ok");

    // The writable's close waits for direct writes queued before it.
    using second = socketpair({ type: "stream" });
    const [c, d] = second;
    const direct = c.write(new Uint8Array(size));
    const closing = c.writable.close();
    const drained = drainCount(d);
    await withTimeout(direct, 10_000, "the queued write");
    await withTimeout(closing, 10_000, "the writable's close");
    assert.equal(await withTimeout(drained, 10_000, "end of stream"), size);
  },
  perms,
);

test(
  "a write queued before shutdown('write') or the writable's close that fails because the peer left says the peer is gone, not that writing was shut",
  async () => {
    for (const how of ["shutdown", "writable.close"] as const) {
      using pair = socketpair({ type: "stream" });
      const [a, b] = pair;
      const queued = a.write(new Uint8Array(8 << 20));
      const closing = how === "shutdown"
        ? a.shutdown("write")
        : a.writable.close();
      Promise.resolve(closing).catch(() => {});
      await stillPending(queued, 10);
      b.close();
      await assert.rejects(
        withTimeout(queued, 10_000, "the queued write"),
        (error: Error) =>
          error instanceof Deno.errors.BrokenPipe &&
          /the peer is gone or no longer reads \(EPIPE\)/.test(
            error.message,
          ),
        how,
      );
    }
  },
  perms,
);

test(
  "after shutdown('write'), a write refused through the writable does not cut off the writes queued before the shutdown",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    const size = 4 << 20;
    const queued = a.write(new Uint8Array(size));
    a.shutdown("write");
    const writer = a.writable.getWriter();
    await assert.rejects(
      writer.write(Uint8Array.of(1)),
      Deno.errors.BrokenPipe,
    );
    const reading = drainCount(b);
    await withTimeout(queued, 10_000, "the queued write");
    assert.equal(await withTimeout(reading, 10_000, "end of stream"), size);

    // An abort of the writable still discards at once, as documented: the
    // write queued before it is cut off.
    using second = socketpair({ type: "stream" });
    const [c, d] = second;
    const cut = c.write(new Uint8Array(size));
    const behind = c.send(Uint8Array.of(1));
    c.shutdown("write");
    await c.writable.abort(new Error("stop"));
    // Each in its own words: the write, and the send queued behind it.
    const [wrote, sent] = await withTimeout(
      Promise.allSettled([cut, behind]),
      10_000,
      "the cut calls",
    );
    for (
      const [result, call] of [[wrote, "write to"], [sent, "send on"]] as const
    ) {
      assert.equal(result.status, "rejected");
      const e = (result as PromiseRejectedResult).reason as Error;
      assert.ok(e instanceof Deno.errors.BrokenPipe, `${e}`);
      assert.ok(
        e.message.startsWith(
          `Cannot ${call} UnixSocket: this socket's writing was shut down`,
        ),
        e.message,
      );
    }
    const got = await withTimeout(drainCount(d), 10_000, "end of stream");
    assert.ok(got < size, `${got} of ${size} bytes`);
  },
  perms,
);

test(
  "shutdown('write') on seqpacket: queued messages arrive before end of messages",
  async () => {
    using pair = socketpair({ type: "seqpacket" });
    const [a, b] = pair;
    const sends: Promise<void>[] = [];
    // Enough messages that some wait for room.
    for (let i = 0; i < 600; i++) {
      sends.push(a.send(new Uint8Array(1024).fill(i & 0xff)));
    }
    a.shutdown("write");
    let count = 0;
    for (;;) {
      const message = await withTimeout(b.recv(), 10_000, "a message");
      if (message === null) break;
      assert.equal(message.data[0], count & 0xff);
      count++;
    }
    await withTimeout(Promise.all(sends), 10_000, "the sends");
    assert.equal(count, 600);
    await assert.rejects(a.send(Uint8Array.of(1)), Deno.errors.BrokenPipe);
  },
  perms,
);

test(
  "shutdown('write') gives the peer end of stream while it can still answer",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    await a.write(encoder.encode("question"));
    a.shutdown("write");
    const text = await withTimeout(
      new Response(b.readable).text(),
      5_000,
      "read to EOF",
    );
    assert.equal(text, "question");
    await b.write(encoder.encode("answer"));
    assert.equal(decoder.decode(await readExactly(a, 6)), "answer");
    await assert.rejects(
      a.write(encoder.encode("more")),
      Deno.errors.BrokenPipe,
    );
  },
  perms,
);

for (const whole of [true, false]) {
  test(
    `seqpacket: an empty packet queued when the peer closes is a message, not the end: those behind it still arrive${
      whole ? "" : " (measured first)"
    }`,
    async () => {
      receiveWholly(whole);
      try {
        const [a, b] = socketpair({ type: "seqpacket", bufferBytes: 1 << 20 });
        try {
          const sizes = [100_000, 0, 65_536, 3];
          for (const size of sizes) await a.send(pattern(size, size));
          a.close();
          for (const size of sizes) {
            const message = await withTimeout(b.recv(), 5_000, "recv");
            assert.ok(message !== null, `${size} B arrived as the end`);
            assert.equal(message.data.length, size);
            assertPattern(message.data, size);
          }
          assert.equal(await withTimeout(b.recv(), 5_000, "end"), null);
          assert.equal(b.recvSync(), null);
        } finally {
          b.close();
        }
      } finally {
        receiveWholly(true);
      }
    },
    perms,
  );
}

for (const type of MESSAGE_TYPES) {
  // Received whole in one call (a 64 KiB scratch, then the reserve behind
  // it), or measured first where the reserve cannot be made.
  for (const whole of [true, false]) {
    test(
      `${type} sockets keep message boundaries, from 0 bytes to 150 KB${
        whole ? "" : ", each message measured first"
      }`,
      async () => {
        receiveWholly(whole);
        try {
          using pair = socketpair({ type });
          const [a, b] = pair;
          const sizes = [0, 1, 63, 64, 65, 1000, 65_535, 65_536, 65_537];
          sizes.push(150_000, 5, 100_000, 7);
          // Queued back to back before any is read (the later ones wait for
          // room): none may merge, split or overtake another.
          const sends = Promise.all(
            sizes.map((size) => a.send(pattern(size, size))),
          );
          for (const size of sizes) {
            const message = await withTimeout(b.recv(), 5_000, "recv");
            assert.ok(message !== null);
            assert.equal(message.data.length, size);
            assertPattern(message.data, size);
            assert.deepEqual(message.fds, []);
          }
          await withTimeout(sends, 5_000, "sends");
        } finally {
          receiveWholly(true);
        }
      },
      perms,
    );
  }

  test(
    `${type}: a message larger than the socket can carry fails at send with a RangeError`,
    async () => {
      using pair = socketpair({ type });
      const [a, b] = pair;
      await assert.rejects(
        a.send(new Uint8Array(300_000)),
        (error: Error) =>
          error instanceof RangeError &&
          /message of 300000 bytes exceeds the socket's limit/.test(
            error.message,
          ),
      );
      assert.throws(() => a.sendSync(new Uint8Array(300_000)), RangeError);
      // Nothing half-sent: the next message is the next one received.
      await a.send(encoder.encode("small"));
      const message = await b.recv();
      assert.equal(decoder.decode(message!.data), "small");
    },
    perms,
  );

  test(
    `${type}: read(), write() and the streams refuse a message socket`,
    async () => {
      using pair = socketpair({ type });
      const [a] = pair;
      await assert.rejects(a.read(new Uint8Array(8)), TypeError);
      await assert.rejects(a.write(new Uint8Array(8)), TypeError);
      assert.throws(() => a.readSync(new Uint8Array(8)), TypeError);
      assert.throws(() => a.readable, /carries messages; use send\(\)/);
      assert.throws(() => a.writable, TypeError);
    },
    perms,
  );
}

test(
  "dgram send() waits while the send buffer is full and resumes, in order, as the peer reads",
  async () => {
    using pair = socketpair({ type: "dgram" });
    const [a, b] = pair;
    const count = 200;
    // 800 KB in all: far more than the send buffer holds unread, so the
    // last sends must still be waiting.
    const sends = Array.from(
      { length: count },
      (_, i) => a.send(pattern(4000, i)),
    );
    assert.equal(await stillPending(sends[count - 1], 20), true);
    for (let i = 0; i < count; i++) {
      const message = await withTimeout(b.recv(), 5_000, `message ${i}`);
      assert.equal(message!.data.length, 4000);
      assertPattern(message!.data, i);
    }
    await withTimeout(Promise.all(sends), 5_000, "sends");
  },
  perms,
);

test(
  "a packet past the 64 KiB scratch lands in the reserve with its fds, and the reserve's pages are given back",
  async () => {
    using pair = socketpair({ type: "seqpacket", bufferBytes: 1 << 20 });
    const [a, b] = pair;
    const p = pipe();
    const big = pattern(400_000, 3);
    await a.send(big, { fds: [p.reader] });
    const message = await withTimeout(b.recv(), 5_000, "recv");
    assert.equal(message!.data.length, big.length);
    assertPattern(message!.data, 3);
    assert.equal(message!.fds.length, 1);
    // The pipe arrived live: what is written at one end is read at the other.
    await p.writer.write(new Uint8Array([42]));
    const got = new Uint8Array(1);
    const reader = message!.fds[0] as typeof p.reader;
    assert.equal(await withTimeout(reader.read(got), 5_000, "read"), 1);
    assert.equal(got[0], 42);
    for (const end of [p.reader, p.writer, reader]) end.close();
    // Once the packet is copied out, none of the pages it took in the
    // reserve stay resident.
    assert.equal(residentReservePages(big.length), 0);
  },
  perms,
);

test(
  "a packet refused for carrying more fds than allowed gives the reserve's pages back",
  async () => {
    using pair = socketpair({ type: "seqpacket", bufferBytes: 1 << 20 });
    const [a, b] = pair;
    // Makes the reserve, so that its pages can be counted before the refusal.
    await a.send(new Uint8Array(1));
    assert.equal((await withTimeout(b.recv(), 5_000, "recv"))!.data.length, 1);
    const p = pipe();
    const big = pattern(400_000, 5);
    await a.send(big, { fds: [p.reader, p.writer] });
    p.reader.close();
    p.writer.close();
    await assert.rejects(
      withTimeout(b.recv({ maxFds: 1 }), 5_000, "recv"),
      RangeError,
    );
    // The packet was taken into the reserve before its fds were counted:
    // refusing it must give its pages back as a delivered one does.
    assert.equal(residentReservePages(big.length), 0);
    // The socket goes on: the next packet arrives whole and clean.
    await a.send(pattern(70_000, 6));
    const next = await withTimeout(b.recv(), 5_000, "recv");
    assert.equal(next!.data.length, 70_000);
    assertPattern(next!.data, 6);
  },
  perms,
);

test(
  "a larger bufferBytes lets a datagram pair carry larger messages",
  async () => {
    using pair = socketpair({ type: "dgram", bufferBytes: 1 << 20 });
    const [a, b] = pair;
    const big = pattern(400_000);
    await a.send(big);
    const message = await withTimeout(b.recv(), 5_000, "recv");
    assert.equal(message!.data.length, big.length);
    assertPattern(message!.data, 0);
  },
  perms,
);

test(
  "seqpacket and stream recv() return null once the peer is gone",
  async () => {
    for (const type of ["stream", "seqpacket"] as const) {
      const [a, b] = socketpair({ type });
      await a.send(encoder.encode("last"));
      a.close();
      const last = await b.recv();
      assert.equal(decoder.decode(last!.data), "last");
      assert.equal(await withTimeout(b.recv(), 5_000, "recv"), null);
      assert.equal(b.recvSync(), null);
      b.close();
    }
    // A pending recv is woken by the peer's close, too.
    const [a, b] = socketpair({ type: "seqpacket" });
    const pending = b.recv();
    assert.equal(await stillPending(pending, 20), true);
    a.close();
    assert.equal(await withTimeout(pending, 5_000, "recv"), null);
    b.close();
  },
  perms,
);

test(
  "a peer that closes with our messages unread still delivers what it sent, then end of stream",
  async () => {
    // Linux reports ECONNRESET once to the survivor, ahead of the queued
    // messages; it must not be taken for the end.
    for (const type of ["stream", "seqpacket"] as const) {
      const [a, b] = socketpair({ type });
      await a.send(encoder.encode("one"));
      await a.send(encoder.encode("two"));
      await b.send(encoder.encode("never read by a"));
      a.close();
      const got: string[] = [];
      for (;;) {
        const message = await withTimeout(b.recv(), 5_000, `${type} recv`);
        if (message === null) break;
        got.push(decoder.decode(message.data));
      }
      assert.equal(got.join(""), "onetwo", type);
      if (type === "seqpacket") assert.deepEqual(got, ["one", "two"]);
      b.close();
    }
    // The sync form reads on as well.
    const [a, b] = socketpair({ type: "seqpacket" });
    a.sendSync(encoder.encode("sync"));
    b.sendSync(encoder.encode("unread"));
    a.close();
    assert.equal(decoder.decode(b.recvSync()!.data), "sync");
    assert.equal(b.recvSync(), null);
    b.close();
  },
  perms,
);

test(
  "a peer that closes with our messages unread still delivers what it sent, each message measured first",
  async () => {
    receiveWholly(false);
    try {
      const [a, b] = socketpair({ type: "seqpacket" });
      await a.send(encoder.encode("one"));
      await a.send(new Uint8Array(0));
      await a.send(encoder.encode("two"));
      await b.send(encoder.encode("never read by a"));
      a.close();
      const got: string[] = [];
      for (;;) {
        const message = await withTimeout(b.recv(), 5_000, "recv");
        if (message === null) break;
        got.push(decoder.decode(message.data));
      }
      assert.deepEqual(got, ["one", "", "two"]);
      b.close();
    } finally {
      receiveWholly(true);
    }
  },
  perms,
);

test(
  "sending to a peer that is gone rejects with BrokenPipe, every type",
  async () => {
    for (const type of TYPES) {
      const [a, b] = socketpair({ type });
      b.close();
      await assert.rejects(
        a.send(encoder.encode("x")),
        (error: Error) =>
          error instanceof Deno.errors.BrokenPipe &&
          /Cannot send on UnixSocket: the peer is gone/.test(error.message),
        type,
      );
      assert.throws(
        () => a.sendSync(encoder.encode("x")),
        Deno.errors.BrokenPipe,
      );
      a.close();
    }
  },
  perms,
);

test(
  "an empty seqpacket message is a message; end of stream is told apart",
  async () => {
    const [a, b] = socketpair({ type: "seqpacket" });
    await a.send(new Uint8Array(0));
    const empty = await b.recv();
    assert.ok(empty !== null);
    assert.equal(empty.data.length, 0);
    a.shutdown("write");
    assert.equal(await b.recv(), null);
    a.close();
    b.close();
  },
  perms,
);

test("sync forms read, write, send and receive without the poller", () => {
  const [a, b] = socketpair({ type: "stream" });
  a.writeSync(encoder.encode("sync bytes"));
  const buf = new Uint8Array(32);
  const n = b.readSync(buf);
  assert.equal(decoder.decode(buf.subarray(0, n!)), "sync bytes");
  b.sendSync(encoder.encode("reply"));
  const message = a.recvSync();
  assert.equal(decoder.decode(message!.data), "reply");
  a.close();
  assert.equal(b.readSync(buf), null);
  b.close();
  const [c, d] = socketpair({ type: "dgram" });
  c.sendSync(pattern(1000));
  c.sendSync(pattern(10));
  assert.equal(d.recvSync()!.data.length, 1000);
  assert.equal(d.recvSync()!.data.length, 10);
  c.close();
  d.close();
}, perms);

test(
  "a UnixSocket used after close throws BadResource naming it",
  async () => {
    const [a, b] = socketpair({ type: "seqpacket" });
    const pending = a.recv();
    a.close();
    a.close(); // idempotent
    await assert.rejects(pending, Deno.errors.BadResource);
    assert.equal(a.closed, true);
    assert.throws(() => a.rawFd, /Cannot use UnixSocket: it is closed/);
    await assert.rejects(a.send(new Uint8Array(1)), Deno.errors.BadResource);
    await assert.rejects(a.recv(), Deno.errors.BadResource);
    assert.throws(() => a.sendSync(new Uint8Array(1)), Deno.errors.BadResource);
    assert.throws(() => a.peerCredentials(), Deno.errors.BadResource);
    assert.throws(() => a.shutdown(), Deno.errors.BadResource);
    {
      using c = b;
      assert.equal(c.closed, false);
    }
    assert.equal(b.closed, true);
    await pollerIdle();
  },
  perms,
);

test(
  "socket pairs are CLOEXEC and blocking at the open file description, every type",
  () => {
    const lib = libc();
    for (const type of TYPES) {
      using pair = socketpair({ type });
      for (const end of pair) {
        assert.equal(end.type, type);
        const fdFlags = lib.fcntl(end.rawFd, F.GETFD, 0);
        assert.equal(fdFlags & F.FD_CLOEXEC, F.FD_CLOEXEC);
        const flFlags = lib.fcntl(end.rawFd, F.GETFL, 0);
        assert.equal(flFlags & O.NONBLOCK, 0);
      }
    }
  },
  perms,
);

test(
  "peerCredentials() of a socket pair names this process",
  () => {
    using pair = socketpair({ type: "dgram" });
    const creds = pair[1].peerCredentials();
    assert.equal(creds.pid, Deno.pid);
    assert.equal(creds.uid, libc().getuid());
    const gid = readProcText("/proc/self/status")!.match(
      /^Gid:\s+(\d+)/m,
    );
    assert.equal(creds.gid, Number(gid![1]));
  },
  perms,
);

test(
  "recv({ spin }) receives a message that comes while it spins",
  async () => {
    using pair = socketpair({ type: "seqpacket" });
    const [a, b] = pair;
    const waiting = b.recv({ spin: 2000 });
    a.sendSync(encoder.encode("spun"));
    const message = await withTimeout(waiting, 5_000, "recv");
    assert.equal(decoder.decode(message!.data), "spun");
  },
  perms,
);

test(
  "socketpair(), send() and recv() refuse a bad type, buffer size, empty stream message with fds, too many fds or non-bytes with TypeError or RangeError",
  async () => {
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => socketpair({ type: "raw" as any }),
      /type must be "stream", "dgram" or "seqpacket"/,
    );
    assert.throws(() => socketpair({ bufferBytes: -1 }), RangeError);
    using pair = socketpair({ type: "stream" });
    const [a] = pair;
    await assert.rejects(
      a.send(new Uint8Array(0), { fds: [a] }),
      /need at least one byte/,
    );
    await assert.rejects(
      a.send(new Uint8Array(1), { fds: new Array(254).fill(a) }),
      RangeError,
    );
    await assert.rejects(a.recv({ maxFds: 300 }), RangeError);
    // deno-lint-ignore no-explicit-any
    await assert.rejects(a.send("text" as any), TypeError);
    // An fd that is not open is named, whether the send leaves at once or
    // blocks.
    using seq = socketpair({ type: "seqpacket" });
    const closed = libc().fcntl(0, F.DUPFD_CLOEXEC, 0);
    libc().close(closed);
    const notOpen = (i: number) => (e: Error) =>
      e instanceof Deno.errors.BadResource &&
      e.message ===
        `Cannot send on UnixSocket: fds[${i}] (fd ${closed}) is not an open fd`;
    await assert.rejects(
      seq[0].send(new Uint8Array(1), { fds: [closed] }),
      notOpen(0),
    );
    assert.throws(
      () => seq[0].sendSync(new Uint8Array(1), { fds: [0, closed] }),
      notOpen(1),
    );
    await seq[0].send(encoder.encode("after"));
    const after = await withTimeout(seq[1].recv(), 5_000, "recv");
    assert.equal(decoder.decode(after!.data), "after", "nothing else was sent");
    assert.equal(after!.fds.length, 0);
  },
  perms,
);

for (const type of TYPES) {
  test(
    `${type}: a child echoes what this process sends over the pair, and the pair ends cleanly`,
    async () => {
      const [mine, theirs] = socketpair({ type });
      await using child = socketChild(["echo"], theirs);
      assert.equal(await lineOf(child.stdout), `type ${type}`);
      if (type === "stream") {
        const data = pattern(1 << 20);
        const [, echoed] = await Promise.all([
          mine.write(data),
          readExactly(mine, data.length),
        ]);
        assertPattern(echoed, 0);
        mine.shutdown("write");
        assert.equal(
          await withTimeout(mine.read(new Uint8Array(8)), 10_000, "EOF"),
          null,
        );
      } else {
        for (const word of ["Heavy lifting", "Feather lifting", ""]) {
          await mine.send(encoder.encode(word));
          const reply = await withTimeout(mine.recv(), 10_000, "reply");
          assert.equal(decoder.decode(reply!.data), `${word} received!`);
        }
        await mine.send(encoder.encode("bye"));
      }
      const status = await withTimeout(child.status, 10_000, "child exit");
      assert.equal(status.success, true);
      mine.close();
    },
    childPerms,
  );
}

for (const type of ["stream", "seqpacket"] as const) {
  test(
    `${type}: a peer killed mid-send leaves data then end of stream, and a killed reader gives BrokenPipe`,
    async () => {
      // The child floods us; we read some, kill it, and drain to the end.
      {
        const [mine, theirs] = socketpair({ type });
        await using child = socketChild(["flood"], theirs);
        assert.equal(await lineOf(child.stdout), "sending");
        const first = await withTimeout(mine.recv(), 10_000, "first");
        assert.ok(first !== null && first.data.length > 0);
        child.kill("SIGKILL");
        const status = await withTimeout(child.status, 10_000, "exit");
        assert.equal(status.signal, "SIGKILL");
        for (;;) {
          const message = await withTimeout(mine.recv(), 10_000, "drain");
          if (message === null) break;
          if (type === "seqpacket") {
            // Whole messages only, even when the sender died.
            assert.equal(message.data.length, 32 * 1024);
          }
        }
        mine.close();
      }
      // We flood a child that never reads; it dies while we wait.
      {
        const [mine, theirs] = socketpair({ type });
        await using child = socketChild(["hold"], theirs);
        assert.equal(await lineOf(child.stdout), "holding");
        const chunk = new Uint8Array(32 * 1024);
        let sending: Promise<void> = Promise.resolve();
        for (let i = 0; i < 1000; i++) {
          sending = mine.send(chunk);
          if (await stillPending(sending)) break;
        }
        assert.equal(await stillPending(sending, 20), true);
        child.kill("SIGKILL");
        await assert.rejects(
          withTimeout(sending, 10_000, "send to a dead peer"),
          Deno.errors.BrokenPipe,
        );
        await child.status;
        mine.close();
      }
    },
    childPerms,
  );
}

test(
  "an unref'd pending recv() does not keep a process alive",
  async () => {
    const [mine, theirs] = socketpair({ type: "seqpacket" });
    await using child = socketChild(["unref-recv"], theirs);
    const output = withTimeout(
      new Response(child.stdout).text(),
      10_000,
      "child output",
    );
    const status = await withTimeout(child.status, 10_000, "child exit");
    assert.equal(status.success, true);
    assert.equal(await output, "waiting\n");
    mine.close();
  },
  childPerms,
);

test(
  "stream sockets: write() and writeSync() send any ArrayBufferView byte for byte, and refuse anything else with TypeError, sending nothing",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    const backing = pattern(128, 900).buffer;
    const words = new Uint16Array(backing, 2, 4);
    const view = new DataView(backing, 5, 70);
    await a.write(words);
    a.writeSync(view);
    const got = await readExactly(b, 8 + 70);
    assertPattern(got.subarray(0, 8), 902);
    assertPattern(got.subarray(8), 905);
    for (const value of ["text", 7, null, [1, 2], new ArrayBuffer(4)]) {
      const bytes = value as unknown as Uint8Array;
      const named = (e: unknown) =>
        e instanceof TypeError &&
        /^Cannot write to UnixSocket: expected a Uint8Array/.test(e.message);
      assert.throws(() => a.writeSync(bytes), named, String(value));
      await assert.rejects(a.write(bytes), named, String(value));
    }
    a.writeSync(encoder.encode("end"));
    assert.equal(decoder.decode(await readExactly(b, 3)), "end");
  },
  perms,
);

for (const type of MESSAGE_TYPES) {
  test(
    `${type}: sends of one turn keep their order, and each failure goes to its own caller`,
    async () => {
      using pair = socketpair({ type, bufferBytes: 16 * 1024 });
      const [a, b] = pair;
      const big = new Uint8Array(64 * 1024);
      const results = await Promise.allSettled([
        a.send(encoder.encode("one")),
        a.send(encoder.encode("two"), { fds: [b] }),
        a.send(big),
        a.send(encoder.encode("three")),
      ]);
      assert.deepEqual(
        results.map((r) => r.status),
        ["fulfilled", "fulfilled", "rejected", "fulfilled"],
      );
      assert.ok(
        (results[2] as PromiseRejectedResult).reason instanceof RangeError,
      );
      const got: string[] = [];
      for (let i = 0; i < 3; i++) {
        const message = await withTimeout(b.recv(), 5_000, "recv");
        got.push(decoder.decode(message!.data));
        for (const fd of message!.fds) fd.close();
      }
      assert.deepEqual(got, ["one", "two", "three"]);
    },
    perms,
  );
}

test(
  "sendSync() and writeSync() go after the sends still queued, in call order",
  async () => {
    for (const type of TYPES) {
      using pair = socketpair({ type });
      const [a, b] = pair;
      const queued = [a.send(encoder.encode("A")), a.send(encoder.encode("B"))];
      if (type === "stream") a.writeSync(encoder.encode("C"));
      else a.sendSync(encoder.encode("C"));
      await Promise.all(queued);
      let text = "";
      while (text.length < 3) {
        const message = await withTimeout(b.recv(), 5_000, "recv");
        text += decoder.decode(message!.data);
      }
      assert.equal(text, "ABC", type);
    }
  },
  perms,
);

test(
  "close() right after sends of the same turn still lets out those that fit",
  async () => {
    using pair = socketpair({ type: "seqpacket" });
    const [a, b] = pair;
    const sends = ["x", "y", "z"].map((t) => a.send(encoder.encode(t)));
    a.close();
    await Promise.all(sends);
    const got: string[] = [];
    for (;;) {
      const message = await withTimeout(b.recv(), 5_000, "recv");
      if (message === null) break;
      got.push(decoder.decode(message.data));
    }
    assert.deepEqual(got, ["x", "y", "z"]);
  },
  perms,
);

/** Runs a command to its end (killed after 60 s); its code and output. */
async function runCommand(
  command: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 60_000);
  try {
    const out = await new Deno.Command(command, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: controller.signal,
    }).output();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}

const STRACE = ["/usr/bin/strace", "/bin/strace"].find((path) => {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
});

test(
  "seqpacket: 100 sends issued in one turn leave in a few sendmmsg calls, not one syscall each",
  async () => {
    const dir = Deno.makeTempDirSync({ prefix: "conduit-strace-" });
    try {
      const log = `${dir}/trace`;
      const run = await runCommand(STRACE!, [
        "-f",
        "-e",
        "trace=sendto,sendmsg,sendmmsg",
        "-o",
        log,
        DENO,
        "run",
        "--allow-ffi",
        SOCKET_CHILD,
        "batch",
        "100",
      ]);
      assert.equal(run.code, 0, run.stderr);
      const fd = Number(run.stdout.match(/^fd (\d+)$/m)?.[1]);
      assert.ok(fd > 0, run.stdout);
      assert.match(run.stdout, /^received 100$/m);
      const calls = Deno.readTextFileSync(log).split("\n")
        .map((line) => line.match(/\b(sendto|sendmsg|sendmmsg)\((\d+),/))
        .filter((m) => m !== null && Number(m[2]) === fd)
        .map((m) => m![1]);
      // The first send goes at once; the other 99 are gathered (at most
      // 64 to a call).
      assert.ok(calls.length <= 4, calls.join(" "));
      assert.ok(calls.includes("sendmmsg"), calls.join(" "));
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
  { ...childPerms, write: true },
  { ignore: STRACE === undefined },
);

test(
  "a receive loop fed by a child that keeps a seqpacket socket full still lets timers and other tasks run",
  async () => {
    const [mine, theirs] = socketpair({ type: "seqpacket" });
    await using child = socketChild(["packets"], theirs);
    try {
      const full = await lineOf(child.stdout!);
      const queued = Number(full.match(/^full (\d+)$/)?.[1]);
      assert.ok(queued >= 128, full);
      // Every one of the first `queued` receives finds its message ready:
      // a task scheduled now runs among them only if the loop yields.
      let taskRanAt = -1;
      let received = 0;
      setImmediate(() => taskRanAt = received);
      while (received < queued) {
        const message = await withTimeout(mine.recv(), 10_000, "recv");
        assert.notEqual(message, null);
        received++;
      }
      assert.ok(
        taskRanAt >= 0 && taskRanAt < queued,
        `the task ran after ${taskRanAt} of ${queued} ready messages`,
      );
      // And while the child keeps it full, an interval keeps ticking.
      let ticks = 0;
      const interval = setInterval(() => ticks++, 1);
      try {
        const loop = (async () => {
          for await (const _ of mine) {
            received++;
            if (ticks >= 3) return;
          }
        })();
        await withTimeout(loop, 15_000, "three ticks while receiving");
      } finally {
        clearInterval(interval);
      }
      assert.ok(ticks >= 3);
    } finally {
      mine.close();
    }
    const status = await withTimeout(child.status, 10_000, "child exits");
    assert.equal(status.success, true);
  },
  childPerms,
);

test(
  "recv() refuses a negative, infinite or non-number spin option, and the refused recv settles",
  async () => {
    using pair = socketpair({ type: "seqpacket" });
    const [a] = pair;
    const bounded = (recv: Promise<unknown>) =>
      withTimeout(recv, 5_000, "a refused recv settles");
    await assert.rejects(bounded(a.recv({ spin: -1 })), RangeError);
    await assert.rejects(bounded(a.recv({ spin: Infinity })), RangeError);
    // deno-lint-ignore no-explicit-any
    await assert.rejects(bounded(a.recv({ spin: "10" as any })), TypeError);
  },
  perms,
);

// Cancellation: every wait takes a signal, and giving up loses no data.

const isTimeout = (error: unknown) =>
  error instanceof DOMException && error.name === "TimeoutError";

function transfer(buffer: ArrayBufferLike): void {
  structuredClone(buffer, { transfer: [buffer as ArrayBuffer] });
}

/** Fills `socket`'s peer with `size`-byte messages until nothing fits. */
function fillUp(socket: { rawFd: number }, size: number): number {
  const chunk = new Uint8Array(size);
  let sent = 0;
  while (sendNoWait(socket.rawFd, chunk) >= 0) sent++;
  return sent;
}

for (const type of TYPES) {
  test(
    `${type}: recv({ signal: AbortSignal.timeout(100) }) rejects with the TimeoutError instead of staying pending, and the next message still arrives`,
    async () => {
      using pair = socketpair({ type });
      const [a, b] = pair;
      await assert.rejects(
        withTimeout(
          b.recv({ signal: AbortSignal.timeout(100) }),
          5_000,
          "the aborted recv",
        ),
        isTimeout,
      );
      await a.send(encoder.encode("next"));
      const message = await withTimeout(b.recv(), 5_000, "the next recv");
      assert.equal(decoder.decode(message!.data), "next");
    },
    perms,
  );

  test(
    `${type}: recv() with an aborted signal rejects at once and takes nothing, even with a message waiting`,
    async () => {
      using pair = socketpair({ type });
      const [a, b] = pair;
      await a.send(encoder.encode("kept"));
      const reason = new Error("not now");
      await assert.rejects(
        b.recv({ signal: AbortSignal.abort(reason) }),
        (error) => error === reason,
      );
      const message = await withTimeout(b.recv(), 5_000, "recv");
      assert.equal(decoder.decode(message!.data), "kept");
    },
    perms,
  );
}

test(
  "a recv() aborted by AbortSignal.timeout leaves a socket to a child usable: the child's answer arrives whole",
  async () => {
    const [mine, theirs] = socketpair({ type: "dgram" });
    try {
      await using child = socketChild(["echo"], theirs);
      assert.equal(await lineOf(child.stdout!), "type dgram");
      // The child answers only what it gets: nothing yet.
      await assert.rejects(
        withTimeout(
          mine.recv({ signal: AbortSignal.timeout(100) }),
          5_000,
          "the aborted recv",
        ),
        isTimeout,
      );
      await mine.send(encoder.encode("hello"));
      const answer = await withTimeout(mine.recv(), 10_000, "the answer");
      assert.equal(decoder.decode(answer!.data), "hello received!");
      await mine.send(encoder.encode("bye"));
      assert.equal(
        (await withTimeout(child.status, 10_000, "the child's exit")).code,
        0,
      );
    } finally {
      mine.close();
      await pollerIdle();
    }
  },
  childPerms,
);

test(
  "stream read({ signal }) rejects once it aborts and loses nothing; a read whose buffer is transferred while it waits is a TypeError, the data kept",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    const buffer = new Uint8Array(64);
    await assert.rejects(
      withTimeout(
        b.read(buffer, { signal: AbortSignal.timeout(50) }),
        5_000,
        "the aborted read",
      ),
      isTimeout,
    );
    const read = b.read(buffer);
    read.catch(() => {});
    assert.ok(await stillPending(read, 20));
    transfer(buffer.buffer);
    await a.write(encoder.encode("still here"));
    await assert.rejects(
      withTimeout(read, 2_000, "the read"),
      (error: Error) =>
        error instanceof TypeError &&
        error.message ===
          "Cannot read from UnixSocket: the buffer was transferred (detached) while the read waited; the data stays for the next read",
    );
    assert.equal(decoder.decode(await readExactly(b, 10)), "still here");
  },
  perms,
);

test(
  "read, write, send and their sync forms refuse a buffer already transferred with TypeError, sending nothing",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    const view = new Uint8Array(8);
    transfer(view.buffer);
    const named = (doing: string) => (error: unknown) =>
      error instanceof TypeError &&
      error.message === `${doing}: the buffer was transferred (detached)`;
    await assert.rejects(b.read(view), named("Cannot read from UnixSocket"));
    assert.throws(() => b.readSync(view), named("Cannot read from UnixSocket"));
    await assert.rejects(a.write(view), named("Cannot write to UnixSocket"));
    assert.throws(() => a.writeSync(view), named("Cannot write to UnixSocket"));
    await assert.rejects(a.send(view), named("Cannot send on UnixSocket"));
    assert.throws(() => a.sendSync(view), named("Cannot send on UnixSocket"));
    a.shutdown("write");
    assert.equal(
      await withTimeout(b.read(new Uint8Array(8)), 2_000, "EOF"),
      null,
    );
  },
  perms,
);

for (const type of MESSAGE_TYPES) {
  test(
    `${type}: a send({ signal }) waiting for room is withdrawn when it aborts: the peer never gets it or its fds, and later sends go on`,
    async () => {
      using pair = socketpair({ type });
      const [a, b] = pair;
      const filled = fillUp(a, 1000);
      using p = pipe();
      const withdrawn = a.send(encoder.encode("withdrawn"), {
        fds: [p.reader],
        signal: AbortSignal.timeout(50),
      });
      const after = a.send(encoder.encode("after"));
      await assert.rejects(
        withTimeout(withdrawn, 5_000, "the aborted send"),
        isTimeout,
      );
      for (let i = 0; i < filled; i++) {
        const message = await withTimeout(b.recv(), 5_000, "a filler");
        assert.equal(message!.data.length, 1000);
      }
      const next = await withTimeout(b.recv(), 5_000, "the later message");
      assert.equal(decoder.decode(next!.data), "after");
      assert.deepEqual(next!.fds, []);
      await withTimeout(after, 2_000, "the later send");
      // Nothing else is queued: the withdrawn message never went.
      a.close();
      if (type === "seqpacket") {
        assert.equal(await withTimeout(b.recv(), 2_000, "EOF"), null);
      } else {
        assert.equal(peekSize(b.rawFd, false), -1);
      }
    },
    perms,
  );

  test(
    `${type}: a message whose buffer is transferred while it waits fails with TypeError and is never sent as an empty message`,
    async () => {
      using pair = socketpair({ type });
      const [a, b] = pair;
      const filled = fillUp(a, 1000);
      const data = encoder.encode("moved away");
      const first = a.send(encoder.encode("first"));
      const moved = a.send(data);
      const last = a.send(encoder.encode("last"));
      moved.catch(() => {});
      transfer(data.buffer);
      for (let i = 0; i < filled; i++) {
        await withTimeout(b.recv(), 5_000, "a filler");
      }
      await assert.rejects(
        withTimeout(moved, 5_000, "the moved send"),
        (error: Error) =>
          error instanceof TypeError &&
          error.message ===
            "Cannot send on UnixSocket: the buffer was transferred (detached) while the send waited; none of it was sent",
      );
      const got = [];
      for (let i = 0; i < 2; i++) {
        const message = await withTimeout(b.recv(), 5_000, "a message");
        got.push(decoder.decode(message!.data));
      }
      assert.deepEqual(got, ["first", "last"]);
      await withTimeout(Promise.all([first, last]), 2_000, "the other sends");
    },
    perms,
  );
  test(
    `${type}: a message whose resizable buffer shrinks while it waits fails with TypeError and is never sent shorter; one that grows goes as given`,
    async () => {
      using pair = socketpair({ type });
      const [a, b] = pair;
      const filled = fillUp(a, 1000);
      const shrinks = new ArrayBuffer(100, { maxByteLength: 1000 });
      const shrunk = new Uint8Array(shrinks).fill(7); // tracks the length
      const grows = new ArrayBuffer(5, { maxByteLength: 1000 });
      const grown = new Uint8Array(grows);
      grown.set(encoder.encode("grown"));
      const first = a.send(encoder.encode("first"));
      const lost = a.send(shrunk);
      const kept = a.send(grown);
      const last = a.send(encoder.encode("last"));
      lost.catch(() => {});
      shrinks.resize(0);
      grows.resize(500);
      for (let i = 0; i < filled; i++) {
        await withTimeout(b.recv(), 5_000, "a filler");
      }
      await assert.rejects(
        withTimeout(lost, 5_000, "the send of the shrunk buffer"),
        (error: Error) =>
          error instanceof TypeError &&
          error.message ===
            "Cannot send on UnixSocket: the buffer was resized below the bytes given while the send waited; none of it was sent",
      );
      const got = [];
      for (let i = 0; i < 3; i++) {
        const message = await withTimeout(b.recv(), 5_000, "a message");
        got.push(decoder.decode(message!.data));
      }
      assert.deepEqual(got, ["first", "grown", "last"]);
      await withTimeout(Promise.all([first, kept, last]), 2_000, "the sends");
    },
    perms,
  );
}

test(
  "a stream write whose resizable buffer shrinks while it waits rejects with TypeError instead of hanging the socket; later writes go on",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    let filled = 0;
    const chunk = new Uint8Array(4096);
    for (;;) {
      const n = sendNoWait(a.rawFd, chunk);
      if (n < 0) break;
      filled += n;
    }
    const buffer = new ArrayBuffer(1 << 20, { maxByteLength: 2 << 20 });
    const shrunk = new Uint8Array(buffer, 0, 1 << 20).fill(0xee);
    const lost = a.write(shrunk);
    const after = a.write(new Uint8Array(100).fill(1));
    lost.catch(() => {});
    assert.ok(await stillPending(lost, 20));
    buffer.resize(0);
    assert.equal((await readExactly(b, filled)).length, filled);
    await assert.rejects(
      withTimeout(lost, 5_000, "the write of the shrunk buffer"),
      (error: Error) =>
        error instanceof TypeError &&
        /^Cannot send on UnixSocket: the buffer was resized below the bytes given while the send waited/
          .test(error.message),
    );
    await withTimeout(after, 5_000, "the later write");
    const rest = await readExactly(b, 100);
    assert.ok(rest.every((byte) => byte === 1));
  },
  perms,
);

test(
  "stream write({ signal }) partly out when it aborts rejects at once; the rest still arrives, from a copy, ahead of later writes",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    const size = 4 << 20; // far more than the socket holds
    const bytes = pattern(size, 0);
    const partly = a.write(bytes, { signal: AbortSignal.timeout(50) });
    const after = a.send(pattern(1000, size));
    await assert.rejects(
      withTimeout(partly, 5_000, "the aborted write"),
      isTimeout,
    );
    bytes.fill(0); // the caller may reuse its buffer now
    assertPattern(await readExactly(b, size + 1000), 0);
    await withTimeout(after, 2_000, "the later send");
    a.shutdown("write");
    assert.equal(
      await withTimeout(b.read(new Uint8Array(8)), 2_000, "EOF"),
      null,
      "no byte repeated",
    );
  },
  perms,
);

test(
  "stream write({ signal }) that has not started when it aborts is withdrawn: none of it is written",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    let filled = 0;
    const chunk = new Uint8Array(4096);
    for (;;) {
      const n = sendNoWait(a.rawFd, chunk);
      if (n < 0) break;
      filled += n;
    }
    const withdrawn = a.write(new Uint8Array(100).fill(0xee), {
      signal: AbortSignal.timeout(50),
    });
    await assert.rejects(
      withTimeout(withdrawn, 5_000, "the aborted write"),
      isTimeout,
    );
    a.shutdown("write");
    const all = await withTimeout(
      new Response(b.readable).arrayBuffer(),
      5_000,
      "reading to EOF",
    );
    assert.equal(all.byteLength, filled);
    assert.ok(!new Uint8Array(all).includes(0xee));
  },
  perms,
);

test(
  "aborting a stream socket's writable while a chunk waits settles promptly and shuts down writing, cutting that chunk off",
  async () => {
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    const writer = a.writable.getWriter();
    const size = 4 << 20;
    const chunk = writer.write(pattern(size, 0));
    chunk.catch(() => {});
    assert.ok(await stillPending(chunk, 20), "4 MiB fit in the socket");
    const reason = new Error("stop");
    await withTimeout(writer.abort(reason), 2_000, "abort()");
    await assert.rejects(chunk, (error) => error === reason);
    // Abort discards: what was out arrives, then end of stream.
    const all = new Uint8Array(
      await withTimeout(
        new Response(b.readable).arrayBuffer(),
        10_000,
        "reading to EOF",
      ),
    );
    assert.ok(all.length > 0 && all.length < size, `${all.length} bytes`);
    assertPattern(all, 0);
  },
  perms,
);

test(
  "socketpair()'s deprecated bufferSize still sets the buffer size; disagreeing with bufferBytes is a TypeError",
  () => {
    // The kernel doubles what it is asked for, for its own bookkeeping.
    for (const options of [{ bufferBytes: 1 << 16 }, { bufferSize: 1 << 16 }]) {
      using pair = socketpair(options);
      for (const end of pair) {
        assert.equal(
          getIntOption(end.rawFd, SOCK.SO_SNDBUF, "SO_SNDBUF"),
          1 << 17,
        );
        assert.equal(
          getIntOption(end.rawFd, SOCK.SO_RCVBUF, "SO_RCVBUF"),
          1 << 17,
        );
      }
    }
    using same = socketpair({ bufferBytes: 1 << 16, bufferSize: 1 << 16 });
    void same;
    assert.throws(
      () => socketpair({ bufferBytes: 1 << 16, bufferSize: 1 << 17 }),
      (error: Error) =>
        error instanceof TypeError &&
        error.message ===
          "Cannot create socket pair: bufferBytes (65536) and its deprecated name bufferSize (131072) disagree; pass bufferBytes only",
    );
  },
  perms,
);

test(
  "options of the wrong type are TypeErrors naming the option, out of range ones RangeErrors",
  async () => {
    const typeError = (pattern: RegExp) => (error: unknown) =>
      error instanceof TypeError && pattern.test((error as Error).message);
    // deno-lint-ignore no-explicit-any
    const any = (value: unknown) => value as any;
    assert.throws(
      () => socketpair({ bufferBytes: any("1024") }),
      typeError(
        /^Cannot create socket pair: bufferBytes must be a number, got string$/,
      ),
    );
    assert.throws(
      () => socketpair({ bufferSize: any("1024") }),
      typeError(
        /^Cannot create socket pair: bufferSize must be a number, got string$/,
      ),
    );
    assert.throws(
      () => socketpair({ bufferBytes: 2 ** 31 }),
      (error: Error) =>
        error instanceof RangeError &&
        /bufferBytes must be a positive integer/.test(error.message),
    );
    assert.throws(
      () => socketpair(any(null)),
      typeError(
        /^Cannot create socket pair: expected an options object, got null$/,
      ),
    );
    using pair = socketpair({ type: "stream" });
    const [a, b] = pair;
    await assert.rejects(
      b.recv({ maxFds: any("3") }),
      typeError(
        /^Cannot receive on UnixSocket: maxFds must be a number, got string$/,
      ),
    );
    await assert.rejects(
      b.recv({ maxBytes: any(null) }),
      typeError(
        /^Cannot receive on UnixSocket: maxBytes must be a number, got null$/,
      ),
    );
    await assert.rejects(
      a.send(new Uint8Array(1), { fds: any(5) }),
      typeError(
        /^Cannot send on UnixSocket: fds must be an array of endpoints or fds, got number$/,
      ),
    );
    await assert.rejects(
      b.recv({ signal: any("soon") }),
      typeError(
        /^Cannot receive on UnixSocket: signal must be an AbortSignal, got string$/,
      ),
    );
    await assert.rejects(
      b.read(new Uint8Array(4), { signal: any({ aborted: false }) }),
      typeError(
        /^Cannot read from UnixSocket: signal must be an AbortSignal, got Object$/,
      ),
    );
    await assert.rejects(
      a.write(new Uint8Array(4), { signal: any(1) }),
      typeError(
        /^Cannot write to UnixSocket: signal must be an AbortSignal, got number$/,
      ),
    );
    await assert.rejects(
      a.send(new Uint8Array(4), { signal: any(1) }),
      typeError(
        /^Cannot send on UnixSocket: signal must be an AbortSignal, got number$/,
      ),
    );
    // Nothing was sent by the refused calls.
    assert.equal(peekSize(b.rawFd, false), -1);
  },
  perms,
);

test(
  "new UnixSocket() names why an fd cannot be adopted: not open, or not a socket",
  () => {
    using p = pipe();
    assert.throws(
      () => new UnixSocket(p.reader.rawFd),
      (error: Error) =>
        error instanceof TypeError &&
        error.message ===
          `Cannot adopt fd ${p.reader.rawFd} as UnixSocket: it is not a socket`,
    );
    const closed = p.writer.rawFd;
    p.writer.close();
    assert.throws(
      () => new UnixSocket(closed),
      (error: Error) =>
        error instanceof Deno.errors.BadResource &&
        error.message ===
          `Cannot adopt fd ${closed} as UnixSocket: it is not open`,
    );
  },
  perms,
);

test("after a wait that went unanswered, recv() arms its wait first, and messages already there still arrive in order without a turn of the event loop", async () => {
  const [a, b] = socketpair({ type: "seqpacket" });
  try {
    // A reply that comes long after the spin gave up: the receiver's
    // spinner rests for the next waits.
    const late = setTimeout(() => a.sendSync(new Uint8Array([0])), 30);
    const first = await withTimeout(b.recv(), 5000, "the late message");
    clearTimeout(late);
    assert.deepEqual([...first!.data], [0]);

    for (const n of [1, 2, 3]) await a.send(new Uint8Array([n]));
    let turned = false;
    setImmediate(() => turned = true);
    const receiving = b.recv();
    if (poller().canPollDirect) {
      // The look was skipped: the wait is armed already, on the socket.
      assert.deepEqual(
        poller().directPolls.map((poll) => poll.fd),
        [b.rawFd],
        "recv() looked before it armed its wait",
      );
    }
    const got = await withTimeout(receiving, 5000, "a message already there");
    assert.deepEqual([...got!.data], [1]);
    assert.equal(
      turned,
      false,
      "the event loop turned before a message that was there was delivered",
    );
    const rest = [await b.recv(), await b.recv()].map((m) => m!.data[0]);
    assert.deepEqual(rest, [2, 3]);
  } finally {
    a.close();
    b.close();
  }
});

test("receives called together after a wait that went unanswered take messages already there in call order", async () => {
  const [a, b] = socketpair({ type: "seqpacket" });
  try {
    // A reply long after the spin gave up: the next waits rest.
    const late = setTimeout(() => a.sendSync(new Uint8Array([0])), 30);
    await withTimeout(b.recv(), 5000, "the late message");
    clearTimeout(late);

    for (const n of [1, 2, 3]) a.sendSync(new Uint8Array([n]));
    const calls = [b.recv(), b.recv(), b.recv(), b.recv(), b.recv()];
    for (const n of [4, 5]) a.sendSync(new Uint8Array([n]));
    const got = await withTimeout(Promise.all(calls), 5000, "five receives");
    assert.deepEqual(got.map((m) => m!.data[0]), [1, 2, 3, 4, 5]);
  } finally {
    a.close();
    b.close();
  }
});

test("a wait armed on a message already there, cut short by closing every endpoint, leaves the completions of the next wake path to it", async () => {
  const [a, b] = socketpair({ type: "seqpacket" });
  const late = setTimeout(() => a.sendSync(new Uint8Array([0])), 30);
  await withTimeout(b.recv(), 5000, "the late message");
  clearTimeout(late);
  // Armed at once (the spinner rests) on a message that is there: where
  // fds are polled directly, its poll completes at the submit, to be taken
  // in a microtask. Closing every endpoint first ends this wake path.
  a.sendSync(new Uint8Array([1]));
  // (Elsewhere it takes the message with its look, at once.)
  const cut = b.recv().then((message) => message!.data[0], (error) => error);
  a.close();
  b.close();
  // The next one shares the AIO context: a wait armed before its message
  // comes, completed before that microtask runs, is still woken.
  const [c, d] = socketpair({ type: "seqpacket" });
  try {
    const waiting = d.recv();
    c.sendSync(new Uint8Array([2]));
    const outcome = await cut;
    assert.ok(
      outcome === 1 || outcome instanceof Deno.errors.BadResource,
      `the receive cut short ended with ${outcome}`,
    );
    const got = await withTimeout(waiting, 5000, "the message after");
    assert.deepEqual([...got!.data], [2]);
  } finally {
    c.close();
    d.close();
  }
});

import assert from "node:assert/strict";
import {
  duplex,
  pipe,
  type PipeOptions,
  PipeReader,
  PipeWriter,
} from "../pipe.ts";
import { spawn } from "../spawn.ts";
import { socketpair } from "../socketpair.ts";
import type { UnixSocket } from "../unix_socket.ts";
import { libc } from "../ffi/libc.ts";
import { F, O } from "../ffi/layout.ts";
import { dupCloexec, readNoWait } from "../ffi/fd.ts";
import { Spinner } from "../ffi/spin.ts";
import { poller, PollHandle } from "../ffi/poller.ts";
import {
  assertPattern,
  delay,
  DENO,
  fdInode,
  fdTarget,
  fixture,
  pattern,
  pollerIdle,
  pollerInterest,
  pollerWaitReturned,
  pollerWaits,
  runDeno,
  stillPending,
  test,
  until,
  withTimeout,
} from "./_util.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const MiB = 1 << 20;

function fcntl(fd: number, cmd: number): number {
  const result = libc().fcntl(fd, cmd, 0);
  assert.notEqual(result, -1, `fcntl(${fd}, ${cmd}) failed`);
  return result;
}

function isBadResource(what: string): (error: unknown) => boolean {
  return (error) => {
    assert.ok(
      error instanceof Deno.errors.BadResource,
      `expected BadResource, got ${error}`,
    );
    assert.match((error as Error).message, new RegExp(what));
    return true;
  };
}

/** Reads until EOF, returning everything. */
async function readAll(
  reader: { read(buffer: Uint8Array): Promise<number | null> },
  size = 64 * 1024,
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const buffer = new Uint8Array(size);
    const n = await reader.read(buffer);
    if (n === null) break;
    chunks.push(buffer.subarray(0, n));
    total += n;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

test("write() then read() round-trips bytes through a pipe", async () => {
  using p = pipe();
  await p.writer.write(encoder.encode("hello pipe"));
  const buffer = new Uint8Array(1024);
  const n = await p.reader.read(buffer);
  assert.equal(n, 10);
  assert.equal(decoder.decode(buffer.subarray(0, n!)), "hello pipe");
});

test("a pending read() resolves when a write arrives later", async () => {
  using p = pipe();
  const buffer = new Uint8Array(1024);
  const read = p.reader.read(buffer);
  assert.ok(await stillPending(read, 30), "read resolved with no data");
  await p.writer.write(encoder.encode("later"));
  const n = await withTimeout(read, 2000, "the pending read");
  assert.equal(decoder.decode(buffer.subarray(0, n!)), "later");
});

test("pipe() returns null at EOF once every writer is closed", async () => {
  using p = pipe();
  await p.writer.write(new Uint8Array([1, 2, 3]));
  p.writer.close();
  const buffer = new Uint8Array(16);
  assert.equal(await p.reader.read(buffer), 3);
  assert.deepEqual([...buffer.subarray(0, 3)], [1, 2, 3]);
  assert.equal(await p.reader.read(buffer), null);
  assert.equal(await p.reader.read(buffer), null, "EOF is not sticky");
});

test("a pending read() resolves with null when the last writer closes", async () => {
  using p = pipe();
  const read = p.reader.read(new Uint8Array(16));
  assert.ok(await stillPending(read, 30));
  p.writer.close();
  assert.equal(await withTimeout(read, 2000, "the pending read"), null);
});

test("write() rejects with BrokenPipe once the reader is closed, and says so", async () => {
  using p = pipe();
  p.reader.close();
  const said = (error: unknown) =>
    error instanceof Deno.errors.BrokenPipe &&
    error.message ===
      "Cannot write to PipeWriter: every read end of the pipe is closed (EPIPE)";
  await assert.rejects(p.writer.write(new Uint8Array([1])), said);
  assert.throws(() => p.writer.writeSync(new Uint8Array([1])), said);
  const writer = p.writer.writable.getWriter();
  await assert.rejects(writer.write(new Uint8Array([1])), said);
});

test("a write() waiting on a full pipe rejects with BrokenPipe when the reader closes", async () => {
  using p = pipe({ bytes: 4096 });
  const write = p.writer.write(new Uint8Array(3 * 4096));
  write.catch(() => {});
  assert.ok(await stillPending(write, 30), "write finished on a full pipe");
  p.reader.close();
  await assert.rejects(
    withTimeout(write, 2000, "the waiting write"),
    Deno.errors.BrokenPipe,
  );
});

test("readSync() and writeSync() move bytes with blocking calls", () => {
  using p = pipe();
  const data = pattern(1000);
  p.writer.writeSync(data);
  const buffer = new Uint8Array(4096);
  assert.equal(p.reader.readSync(buffer), 1000);
  assertPattern(buffer.subarray(0, 1000), 0);
  assert.equal(p.reader.readSync(new Uint8Array(0)), 0);
  p.writer.writeSync(encoder.encode("end"));
  p.writer.close();
  assert.equal(p.reader.readSync(buffer), 3);
  assert.equal(decoder.decode(buffer.subarray(0, 3)), "end");
  assert.equal(p.reader.readSync(buffer), null);
});

test("16 MiB arrive intact through readable with a default reader", async () => {
  using p = pipe();
  const total = 16 * MiB;
  const writing = (async () => {
    for (let at = 0; at < total; at += MiB) {
      await p.writer.write(pattern(MiB, at));
    }
    p.writer.close();
  })();
  let received = 0;
  let chunks = 0;
  const reading = (async () => {
    for await (const chunk of p.reader.readable) {
      assertPattern(chunk, received);
      received += chunk.byteLength;
      chunks++;
    }
  })();
  await withTimeout(
    Promise.all([writing, reading]),
    30_000,
    "16 MiB through readable",
  );
  assert.equal(received, total);
  assert.ok(chunks >= total / (64 * 1024), `only ${chunks} chunks`);
});

test("16 MiB arrive intact through readable with a BYOB reader, in the caller's buffer", async () => {
  using p = pipe({ bytes: MiB });
  const total = 16 * MiB;
  const writing = (async () => {
    for (let at = 0; at < total; at += MiB) {
      await p.writer.write(pattern(MiB, at));
    }
    p.writer.close();
  })();
  const reading = (async () => {
    const reader = p.reader.readable.getReader({ mode: "byob" });
    let buffer = new ArrayBuffer(100_003);
    let received = 0;
    for (;;) {
      // An odd offset checks that the view's offset is honoured.
      const offset = received % 7;
      const { value, done } = await reader.read(
        new Uint8Array(buffer, offset, buffer.byteLength - offset),
      );
      if (done) break;
      assert.equal(value.byteOffset, offset);
      assert.equal(value.buffer.byteLength, 100_003);
      assert.ok(value.byteLength > 0);
      assertPattern(value, received);
      received += value.byteLength;
      buffer = value.buffer as ArrayBuffer;
    }
    reader.releaseLock();
    return received;
  })();
  const [, received] = await withTimeout(
    Promise.all([writing, reading]),
    30_000,
    "16 MiB through a BYOB reader",
  );
  assert.equal(received, total);
});

test("readable is one stream per reader and ends when the writer closes", async () => {
  using p = pipe();
  assert.equal(p.reader.readable, p.reader.readable);
  await p.writer.write(encoder.encode("abc"));
  p.writer.close();
  const text = await withTimeout(
    new Response(p.reader.readable).text(),
    2000,
    "reading to EOF",
  );
  assert.equal(text, "abc");
});

test("cancelling readable closes the reader", async () => {
  const p = pipe();
  await p.reader.readable.cancel();
  assert.equal(p.reader.closed, true);
  await assert.rejects(
    p.writer.write(new Uint8Array(1)),
    Deno.errors.BrokenPipe,
  );
  p.writer.close();
});

test("a writable whose write fails with BrokenPipe closes the writer, as Deno's streams close theirs", async () => {
  const p = pipe();
  p.reader.close();
  const w = p.writer.writable.getWriter();
  await assert.rejects(w.write(new Uint8Array(1)), Deno.errors.BrokenPipe);
  assert.equal(p.writer.closed, true);
  // The stream is errored: closing it fails, and there is nothing left to
  // close by hand.
  await assert.rejects(w.close(), TypeError);

  // Any view is written byte for byte; a chunk that is none errors the
  // stream before anything is written, and the writer stays usable.
  using q = pipe();
  const v = q.writer.writable.getWriter();
  await v.write(new Uint16Array([0x4241]) as unknown as Uint8Array);
  await v.write(new DataView(Uint8Array.of(0x43).buffer) as never);
  await assert.rejects(
    v.write("text" as unknown as Uint8Array),
    (error: Error) =>
      error instanceof TypeError &&
      error.message.includes(
        "Cannot write to PipeWriter through its writable",
      ) &&
      error.message.includes("got string"),
  );
  assert.equal(q.writer.closed, false);
  await q.writer.write(Uint8Array.of(0x44));
  q.writer.close();
  assert.equal(
    new TextDecoder().decode(await readAll(q.reader)),
    "ABCD",
  );
});

test("writable applies backpressure: a write larger than the pipe finishes only as the reader drains", async () => {
  const capacity = 64 * 1024;
  const chunk = 256 * 1024;
  using p = pipe({ bytes: capacity });
  const writer = p.writer.writable.getWriter();
  assert.equal(writer.desiredSize, 1);

  let read = 0;
  const events: string[] = [];
  const readAtFinish: number[] = [];
  const first = writer.write(pattern(chunk, 0)).then(() => {
    events.push("first written");
    readAtFinish.push(read);
  });
  assert.equal(writer.desiredSize, 0, "one queued chunk fills the queue");
  const second = writer.write(pattern(chunk, chunk)).then(() => {
    events.push("second written");
    readAtFinish.push(read);
  });
  assert.equal(writer.desiredSize, -1);
  assert.ok(
    await stillPending(first, 100),
    "a write larger than the pipe finished with nobody reading",
  );
  assert.equal(writer.desiredSize, -1, "the queue drained with nobody reading");

  const buffer = new Uint8Array(16 * 1024);
  while (read < 2 * chunk) {
    const n = await withTimeout(p.reader.read(buffer), 2000, "a read");
    assert.ok(n !== null && n > 0);
    assertPattern(buffer.subarray(0, n), read);
    read += n;
    events.push("read");
  }
  await withTimeout(Promise.all([first, second]), 2000, "both writes");
  assert.deepEqual(
    events.filter((e) => e !== "read"),
    ["first written", "second written"],
  );
  assert.ok(
    readAtFinish[0] >= chunk - capacity,
    `first write finished after only ${readAtFinish[0]} bytes were read`,
  );
  assert.ok(
    readAtFinish[1] >= 2 * chunk - capacity,
    `second write finished after only ${readAtFinish[1]} bytes were read`,
  );
  await writer.ready;
  assert.equal(writer.desiredSize, 1);
  await writer.close();
  assert.equal(p.writer.closed, true, "closing the stream closes the writer");
  assert.equal(await p.reader.read(buffer), null);
});

test("writable rejects chunks that are not Uint8Array with TypeError", async () => {
  using p = pipe();
  const writer = p.writer.writable.getWriter();
  await assert.rejects(
    writer.write("text" as unknown as Uint8Array),
    TypeError,
  );
});

test("bytes sets the pipe buffer (F_GETPIPE_SZ), rounded up to a power of two pages", () => {
  {
    using p = pipe();
    assert.equal(fcntl(p.writer.rawFd, F.GETPIPE_SZ), 65536, "default");
  }
  const cases: [number, number][] = [
    [1, 4096],
    [4096, 4096],
    [5000, 8192],
    [65536, 65536],
    [100_000, 131072],
    [MiB, MiB],
  ];
  for (const [capacity, expected] of cases) {
    using p = pipe({ bytes: capacity });
    assert.equal(fcntl(p.writer.rawFd, F.GETPIPE_SZ), expected, `${capacity}`);
    assert.equal(fcntl(p.reader.rawFd, F.GETPIPE_SZ), expected, `${capacity}`);
  }
});

test("a pipe's capacity is what a non-waiting write can fill", async () => {
  using p = pipe({ bytes: 8192 });
  const write = p.writer.write(new Uint8Array(8192));
  await withTimeout(write, 2000, "a write of exactly the capacity");
  const more = p.writer.write(new Uint8Array(1));
  assert.ok(await stillPending(more, 30), "a full pipe took another byte");
  const buffer = new Uint8Array(16384);
  assert.equal(await p.reader.read(buffer), 8192);
  await withTimeout(more, 2000, "the write after draining");
  assert.equal(await p.reader.read(buffer), 1);
});

test("pipe() rejects a size that is not a positive integer with RangeError, under either name", () => {
  for (const bytes of [0, -1, 1.5, NaN, Infinity, -Infinity, 2 ** 31]) {
    for (const name of ["bytes", "capacity"] as const) {
      assert.throws(
        () => pipe({ [name]: bytes }),
        (error: unknown) =>
          error instanceof RangeError &&
          error.message.includes(`${name} must be a positive integer`) &&
          error.message.includes(String(bytes)),
        `${name} ${bytes}`,
      );
    }
  }
});

test("pipe() rejects options that are not an object with a TypeError saying so", () => {
  for (const options of [null, 5, "x"]) {
    assert.throws(
      () => pipe(options as unknown as PipeOptions),
      (error: unknown) =>
        error instanceof TypeError &&
        /Cannot create pipe: options must be an object/.test(error.message),
      String(options),
    );
  }
});

test("pipe() rejects a size of the wrong type with TypeError naming the option", () => {
  for (const bytes of ["1024", 1024n, {}, null]) {
    assert.throws(
      () => pipe({ bytes: bytes as unknown as number }),
      (error: unknown) =>
        error instanceof TypeError &&
        error.message.includes("bytes must be a number"),
      String(bytes),
    );
  }
  assert.throws(
    () => pipe({ capacity: "1024" as unknown as number }),
    (error: unknown) =>
      error instanceof TypeError &&
      error.message.includes("capacity must be a number"),
  );
});

test("pipe()'s deprecated capacity still sets the buffer size; disagreeing with bytes is a TypeError", () => {
  {
    using p = pipe({ capacity: 8192 });
    assert.equal(fcntl(p.writer.rawFd, F.GETPIPE_SZ), 8192);
  }
  {
    using p = pipe({ bytes: 8192, capacity: 8192 });
    assert.equal(fcntl(p.writer.rawFd, F.GETPIPE_SZ), 8192);
  }
  assert.throws(
    () => pipe({ bytes: 8192, capacity: 4096 }),
    (error: unknown) =>
      error instanceof TypeError && /disagree/.test(error.message),
  );
});

test("reads into buffers of 64 bytes or less and into offset views land in the right place", async () => {
  using p = pipe();
  // Small buffers live on V8's heap and go through the bounce buffer.
  for (const size of [1, 7, 63, 64]) {
    const data = pattern(size, size * 1000);
    await p.writer.write(data);
    const buffer = new Uint8Array(size);
    assert.equal(await p.reader.read(buffer), size);
    assert.deepEqual(buffer, data, `buffer of ${size}`);
  }

  // A view into a small buffer: only the view's bytes change.
  const small = new Uint8Array(32).fill(0xee);
  await p.writer.write(pattern(8, 77));
  assert.equal(await p.reader.read(small.subarray(5, 13)), 8);
  assertPattern(small.subarray(5, 13), 77);
  assert.ok(small.subarray(0, 5).every((b) => b === 0xee), "bytes before");
  assert.ok(small.subarray(13).every((b) => b === 0xee), "bytes after");

  // A view at an offset into a large buffer.
  const big = new Uint8Array(4096).fill(0xee);
  await p.writer.write(pattern(50, 5000));
  assert.equal(await p.reader.read(big.subarray(100, 150)), 50);
  assertPattern(big.subarray(100, 150), 5000);
  assert.ok(big.subarray(0, 100).every((b) => b === 0xee), "bytes before");
  assert.ok(big.subarray(150).every((b) => b === 0xee), "bytes after");

  // A view larger than the data: only the first bytes change.
  big.fill(0xee);
  await p.writer.write(pattern(10, 9000));
  assert.equal(await p.reader.read(big.subarray(1000, 2000)), 10);
  assertPattern(big.subarray(1000, 1010), 9000);
  assert.equal(big[1010], 0xee);
  assert.equal(big[999], 0xee);

  // A small read that has to wait first.
  const waiting = new Uint8Array(16).fill(0xee);
  const read = p.reader.read(waiting.subarray(2, 10));
  assert.ok(await stillPending(read, 20));
  await p.writer.write(pattern(8, 123));
  assert.equal(await withTimeout(read, 2000, "a small waiting read"), 8);
  assertPattern(waiting.subarray(2, 10), 123);
  assert.equal(waiting[1], 0xee);
  assert.equal(waiting[10], 0xee);
});

test("writes from buffers of 64 bytes or less and from offset views send exactly the view", async () => {
  using p = pipe();
  const buffer = new Uint8Array(4096);
  const small = pattern(40, 300);
  await p.writer.write(small.subarray(3, 9));
  assert.equal(await p.reader.read(buffer), 6);
  assertPattern(buffer.subarray(0, 6), 303);

  const big = pattern(4096, 0);
  await p.writer.write(big.subarray(1000, 3000));
  let got = 0;
  while (got < 2000) {
    const n = await p.reader.read(buffer.subarray(got));
    assert.ok(n !== null);
    got += n;
  }
  assert.equal(got, 2000);
  assertPattern(buffer.subarray(0, 2000), 1000);

  p.writer.writeSync(small.subarray(10, 20));
  assert.equal(p.reader.readSync(buffer.subarray(500, 600)), 10);
  assertPattern(buffer.subarray(500, 510), 310);
});

test("readSync() and writeSync() honour the view's offset", () => {
  using p = pipe();
  const big = pattern(4096, 0);
  p.writer.writeSync(big.subarray(2000, 2100));
  const into = new Uint8Array(1024).fill(0xee);
  assert.equal(p.reader.readSync(into.subarray(300, 400)), 100);
  assertPattern(into.subarray(300, 400), 2000);
  assert.equal(into[299], 0xee);
  assert.equal(into[400], 0xee);
});

test("concurrent write() calls are queued whole, never interleaved", async () => {
  using p = pipe({ bytes: 4096 });
  const a = new Uint8Array(MiB).fill(0xaa);
  const b = new Uint8Array(MiB).fill(0xbb);
  const c = new Uint8Array(10).fill(0xcc);
  const order: string[] = [];
  const writes = [p.writer.write(a).then(() => order.push("a"))];
  assert.ok(await stillPending(writes[0], 10), "the pipe took 1 MiB");
  // Make room, then queue more writes before the first one has noticed:
  // they must not take the room ahead of the first write's remaining bytes.
  const head = new Uint8Array(4096);
  assert.equal(p.reader.readSync(head), 4096);
  writes.push(p.writer.write(b).then(() => order.push("b")));
  writes.push(p.writer.write(c).then(() => order.push("c")));
  const all = Promise.all(writes).then(() => p.writer.close());
  const rest = await withTimeout(readAll(p.reader), 10_000, "reading 2 MiB");
  await withTimeout(all, 2000, "the writes");
  const data = new Uint8Array(head.length + rest.length);
  data.set(head);
  data.set(rest, head.length);
  assert.equal(data.length, 2 * MiB + 10);
  const firstNot = (from: number, to: number, value: number) => {
    for (let i = from; i < to; i++) if (data[i] !== value) return i;
    return -1;
  };
  assert.equal(firstNot(0, MiB, 0xaa), -1, "first write interleaved");
  assert.equal(firstNot(MiB, 2 * MiB, 0xbb), -1, "second write interleaved");
  assert.equal(firstNot(2 * MiB, 2 * MiB + 10, 0xcc), -1);
  assert.deepEqual(order, ["a", "b", "c"]);
});

test("a failed write() does not stop the writes queued after it", async () => {
  using p = pipe({ bytes: 4096 });
  // The first write fails (no reader); the queue must still run the second,
  // which fails the same way instead of hanging.
  p.reader.close();
  const first = p.writer.write(new Uint8Array(10));
  const second = p.writer.write(new Uint8Array(10));
  await assert.rejects(first, Deno.errors.BrokenPipe);
  await assert.rejects(
    withTimeout(second, 2000, "the second write"),
    Deno.errors.BrokenPipe,
  );
});

test("close() while a read is pending rejects it promptly with BadResource naming PipeReader", async () => {
  using p = pipe();
  const read = p.reader.read(new Uint8Array(16));
  read.catch(() => {});
  assert.ok(await stillPending(read, 30));
  assert.equal(poller().busy, true, "a ref'd pending read keeps a wait");
  p.reader.close();
  // Settled by close() itself, not by a later poller event or timer.
  assert.equal(await stillPending(read, 0), false, "the read is still pending");
  await assert.rejects(read, isBadResource("PipeReader"));
});

test("close() while a write is pending rejects it promptly with BadResource naming PipeWriter", async () => {
  using p = pipe({ bytes: 4096 });
  const write = p.writer.write(new Uint8Array(8192));
  write.catch(() => {});
  assert.ok(await stillPending(write, 30));
  p.writer.close();
  // Settled by close() itself, not by a later poller event or timer.
  assert.equal(
    await stillPending(write, 0),
    false,
    "the write is still pending",
  );
  await assert.rejects(write, isBadResource("PipeWriter"));
});

test("close() is idempotent, and using/dispose close both ends", () => {
  let fds: number[];
  {
    using p = pipe();
    fds = [p.reader.rawFd, p.writer.rawFd];
    p.reader.close();
    p.reader.close();
    assert.equal(p.reader.closed, true);
    assert.equal(p.writer.closed, false);
    assert.equal(fdTarget(fds[0]), undefined, "the read end's fd is closed");
  }
  assert.equal(fdTarget(fds[1]), undefined, "dispose closed the write end");
  const q = pipe();
  q.writer[Symbol.dispose]();
  q.writer[Symbol.dispose]();
  q.writer.close();
  assert.equal(q.writer.closed, true);
  q.reader[Symbol.dispose]();
  assert.equal(q.reader.closed, true);
});

test("every use after close() throws BadResource naming the endpoint", async () => {
  const p = pipe();
  p.reader.close();
  p.writer.close();
  const buffer = new Uint8Array(16);
  await assert.rejects(p.reader.read(buffer), isBadResource("PipeReader"));
  await assert.rejects(
    p.reader.read(new Uint8Array(0)),
    isBadResource("PipeReader"),
  );
  assert.throws(() => p.reader.readSync(buffer), isBadResource("PipeReader"));
  assert.throws(
    () => p.reader.readSync(new Uint8Array(0)),
    isBadResource("PipeReader"),
  );
  assert.throws(() => p.reader.rawFd, isBadResource("PipeReader"));
  await assert.rejects(
    p.reader.readable.getReader().read(),
    isBadResource("PipeReader"),
  );
  await assert.rejects(p.writer.write(buffer), isBadResource("PipeWriter"));
  await assert.rejects(
    p.writer.write(new Uint8Array(0)),
    isBadResource("PipeWriter"),
  );
  assert.throws(() => p.writer.writeSync(buffer), isBadResource("PipeWriter"));
  assert.throws(() => p.writer.rawFd, isBadResource("PipeWriter"));
  await assert.rejects(
    p.writer.writable.getWriter().write(buffer),
    isBadResource("PipeWriter"),
  );
});

test("a new pipe that reuses a closed reader's fd number is not woken by the old pipe", async () => {
  const old = pipe();
  const oldFd = old.reader.rawFd;
  const oldIno = fdInode(oldFd);
  // Keep the old pipe's read side open under another number, so the old
  // pipe still becomes readable after its reader is closed: an interest left
  // behind in epoll for it would fire.
  const keep = dupCloexec(oldFd);
  const dispatched: number[] = [];
  const dispatch = PollHandle.prototype.dispatch;
  PollHandle.prototype.dispatch = function (events) {
    dispatched.push(this.fd);
    return dispatch.call(this, events);
  };
  try {
    const staleBuffer = new Uint8Array(16);
    const stale = old.reader.read(staleBuffer);
    stale.catch(() => {});
    assert.ok(await stillPending(stale, 20));
    assert.deepEqual(pollerInterest().map((e) => e.ino), [oldIno]);
    old.reader.close();
    await assert.rejects(stale, isBadResource("PipeReader"));
    assert.deepEqual(
      pollerInterest(),
      [],
      "the closed reader is still in epoll",
    );

    using fresh = pipe();
    assert.equal(fresh.reader.rawFd, oldFd, "the fd number was not reused");
    const freshBuffer = new Uint8Array(16);
    const read = fresh.reader.read(freshBuffer);
    read.catch(() => {});
    assert.deepEqual(
      pollerInterest().map((e) => [e.fd, e.ino]),
      [[oldFd, fdInode(oldFd)]],
    );

    dispatched.length = 0;
    await old.writer.write(encoder.encode("old"));
    assert.ok(
      await stillPending(read, 100),
      "the new pipe's read was woken by the old pipe",
    );
    assert.deepEqual(
      dispatched,
      [],
      "an event for the old pipe was dispatched",
    );
    const viaKeep = new Uint8Array(16);
    const n = Number(libc().read(keep, viaKeep, 16n));
    assert.equal(decoder.decode(viaKeep.subarray(0, n)), "old");
    assert.ok(staleBuffer.every((b) => b === 0), "the stale read got data");

    await fresh.writer.write(encoder.encode("new"));
    assert.equal(await withTimeout(read, 2000, "the new pipe's read"), 3);
    assert.equal(decoder.decode(freshBuffer.subarray(0, 3)), "new");
    assert.deepEqual(dispatched, [oldFd], "one event, for the new pipe");
  } finally {
    PollHandle.prototype.dispatch = dispatch;
    libc().close(keep);
    old.writer.close();
  }
});

test("an event already collected for a closed reader is not delivered to a new pipe with the same fd number", async () => {
  const dispatched: number[] = [];
  const dispatch = PollHandle.prototype.dispatch;
  PollHandle.prototype.dispatch = function (events) {
    dispatched.push(this.fd);
    return dispatch.call(this, events);
  };
  const old = pipe();
  let fresh: ReturnType<typeof pipe> | undefined;
  try {
    const oldFd = old.reader.rawFd;
    const stale = old.reader.read(new Uint8Array(16));
    stale.catch(() => {});
    await until(() => pollerWaits() === 1, 2000, "the poller to wait");
    // Everything below up to the next await runs without yielding: the
    // poller's wait returns with the old pipe's event, and before the event
    // is dispatched the reader closes and a new pipe takes its fd number.
    old.writer.writeSync(encoder.encode("old"));
    const deadline = performance.now() + 2000;
    while (!pollerWaitReturned()) {
      assert.ok(performance.now() < deadline, "the wait did not return");
    }
    old.reader.close();
    fresh = pipe();
    assert.equal(fresh.reader.rawFd, oldFd, "the fd number was not reused");
    const buffer = new Uint8Array(16);
    const read = fresh.reader.read(buffer);
    read.catch(() => {});
    assert.deepEqual(dispatched, []);

    await assert.rejects(stale, isBadResource("PipeReader"));
    assert.ok(await stillPending(read, 50), "the new read resolved");
    assert.deepEqual(
      dispatched,
      [],
      "the old pipe's event reached the new pipe's handle",
    );
    fresh.writer.writeSync(encoder.encode("new"));
    assert.equal(await withTimeout(read, 2000, "the new pipe's read"), 3);
    assert.equal(decoder.decode(buffer.subarray(0, 3)), "new");
  } finally {
    PollHandle.prototype.dispatch = dispatch;
    old.reader.close();
    old.writer.close();
    fresh?.reader.close();
    fresh?.writer.close();
  }
});

test("pipe ends are CLOEXEC and stay blocking at the description after reads and writes", async () => {
  using p = pipe({ bytes: 4096 });
  const check = (when: string) => {
    for (
      const [fd, mode] of [[p.reader.rawFd, O.RDONLY], [
        p.writer.rawFd,
        O.WRONLY,
      ]]
    ) {
      assert.equal(fcntl(fd, F.GETFD) & F.FD_CLOEXEC, F.FD_CLOEXEC, when);
      const flags = fcntl(fd, F.GETFL);
      assert.equal(flags & O.NONBLOCK, 0, `O_NONBLOCK set ${when}`);
      assert.equal(flags & O.ACCMODE, mode, when);
    }
  };
  check("after pipe()");
  // A read that has to wait, a write that has to wait, streams, sync calls.
  const buffer = new Uint8Array(8192);
  const read = p.reader.read(buffer);
  await delay(10);
  await p.writer.write(new Uint8Array(10));
  assert.equal(await read, 10);
  const write = p.writer.write(new Uint8Array(6000));
  await delay(10);
  assert.equal(await p.reader.read(buffer), 4096);
  await write;
  assert.equal(await p.reader.read(buffer), 6000 - 4096);
  p.writer.writeSync(new Uint8Array(5));
  assert.equal(p.reader.readSync(buffer), 5);
  check("after reads and writes");
});

test("duplex() carries bytes both ways over two pipes", async () => {
  const [a, b] = duplex();
  try {
    assert.equal(fdTarget(a.writer.rawFd), fdTarget(b.reader.rawFd));
    assert.equal(fdTarget(b.writer.rawFd), fdTarget(a.reader.rawFd));
    assert.notEqual(fdTarget(a.writer.rawFd), fdTarget(a.reader.rawFd));
    const buffer = new Uint8Array(64 * 1024);
    await a.writer.write(encoder.encode("ping"));
    let n = await b.reader.read(buffer);
    assert.equal(decoder.decode(buffer.subarray(0, n!)), "ping");
    await b.writer.write(encoder.encode("pong!"));
    n = await a.reader.read(buffer);
    assert.equal(decoder.decode(buffer.subarray(0, n!)), "pong!");
    // Both directions at once, more than a pipe holds.
    const ab = pattern(300_000, 0);
    const ba = pattern(300_000, 7);
    const [, , gotB, gotA] = await withTimeout(
      Promise.all([
        a.writer.write(ab).then(() => a.writer.close()),
        b.writer.write(ba).then(() => b.writer.close()),
        readAll(b.reader),
        readAll(a.reader),
      ]),
      5000,
      "both directions",
    );
    assert.deepEqual(gotB, ab);
    assert.deepEqual(gotA, ba);
  } finally {
    a[Symbol.dispose]();
    b[Symbol.dispose]();
  }
});

test("using duplex() closes both sides, as using pipe() or socketpair() closes theirs", () => {
  let ends: (PipeReader | PipeWriter)[];
  {
    using pipes = duplex();
    const [a, b] = pipes;
    ends = [a.reader, a.writer, b.reader, b.writer];
    assert.ok(ends.every((end) => !end.closed));
  }
  assert.ok(ends.every((end) => end.closed));
});

test("duplex() applies the capacity option to both pipes", () => {
  const [a, b] = duplex({ bytes: 8192 });
  try {
    assert.equal(fcntl(a.reader.rawFd, F.GETPIPE_SZ), 8192);
    assert.equal(fcntl(b.reader.rawFd, F.GETPIPE_SZ), 8192);
  } finally {
    a[Symbol.dispose]();
    b[Symbol.dispose]();
  }
  assert.throws(() => duplex({ bytes: 0 }), RangeError);
});

test("read() with spin returns data that arrives during the spin or after it", async () => {
  using p = pipe();
  const buffer = new Uint8Array(16);
  await p.writer.write(encoder.encode("now"));
  assert.equal(await p.reader.read(buffer, { spin: 1000 }), 3);
  const read = p.reader.read(buffer, { spin: 1000 });
  await delay(20);
  await p.writer.write(encoder.encode("later"));
  assert.equal(await withTimeout(read, 2000, "a spinning read"), 5);
});

test("an unref'd pending read leaves the poller idle; ref() makes it wait again", async () => {
  using p = pipe();
  await pollerIdle();
  p.reader.unref();
  const buffer = new Uint8Array(16);
  const read = p.reader.read(buffer);
  assert.ok(await stillPending(read, 30));
  assert.equal(poller().busy, false, "an unref'd read keeps a wait in flight");
  p.reader.ref();
  assert.equal(poller().busy, true, "a ref'd read has no wait in flight");
  p.reader.unref();
  await pollerIdle();
  // Still served while the process is alive for other reasons.
  await p.writer.write(encoder.encode("data"));
  assert.equal(await withTimeout(read, 2000, "the unref'd read"), 4);
  assert.equal(decoder.decode(buffer.subarray(0, 4)), "data");
});

test("ref() before the first read makes that read keep a wait in flight", async () => {
  using p = pipe();
  p.reader.unref();
  p.reader.ref();
  const read = p.reader.read(new Uint8Array(16));
  read.catch(() => {});
  assert.ok(await stillPending(read, 20));
  assert.equal(poller().busy, true);
  p.reader.close();
  await assert.rejects(read, Deno.errors.BadResource);
});

test(
  "a script whose only pending read is unref'd exits by itself",
  async () => {
    const run = await runDeno(
      ["run", "--allow-ffi", fixture("pending_read.ts"), "unref"],
      10_000,
      "the script with an unref'd read",
    );
    assert.equal(run.code, 0, run.stderr);
    // Exiting at all is the check: runDeno fails if it is still running
    // when its bound runs out.
    assert.equal(run.stdout, "waiting\n");
  },
  { run: true },
);

test(
  "a ref'd pending read keeps a script alive until data arrives",
  async () => {
    const run = await runDeno(
      ["run", "--allow-ffi", fixture("pending_read.ts"), "ref"],
      10_000,
      "the script with a ref'd read",
    );
    assert.equal(run.code, 0, run.stderr);
    // The data comes from an unref'd timer: the line shows the read kept
    // the script alive until then.
    assert.match(run.stdout, /^waiting\ngot 4 after \d+\n$/);
  },
  { run: true },
);

test("a read() into a zero-length buffer returns 0 without waiting", async () => {
  using p = pipe();
  assert.equal(
    await withTimeout(p.reader.read(new Uint8Array(0)), 1000, "empty read"),
    0,
  );
  await p.writer.write(new Uint8Array(0));
  assert.equal(poller().size, 0, "an empty read or write registered an fd");
});

test("300 writes of 0 to 96 bytes read back as one stream, every byte in order", async () => {
  using p = pipe();
  let offset = 0;
  for (let i = 1; i <= 300; i++) {
    await p.writer.write(pattern(i % 97, offset));
    offset += i % 97;
  }
  p.writer.close();
  const data = await withTimeout(readAll(p.reader, 50), 5000, "reading");
  assert.equal(data.length, offset);
  assertPattern(data, 0);
  await until(() => !poller().busy, 1000, "the poller to go idle");
});

// Across processes, through the module's own spawn().

const PEER = fixture("pipe_peer.ts");
const SPAWN = { run: true, env: true } as const;

async function echoThroughChild(mode: string, total: number): Promise<void> {
  const down = pipe(); // this process -> the child's fd 3
  const up = pipe(); // the child's fd 4 -> this process
  try {
    await using child = spawn(DENO, {
      args: ["run", "--allow-ffi", PEER, mode],
      fds: [down.reader, up.writer],
      stdin: "null",
    });
    down.reader.close();
    up.writer.close();
    const writing = (async () => {
      for (let at = 0; at < total; at += MiB) {
        await down.writer.write(pattern(Math.min(MiB, total - at), at));
      }
      down.writer.close();
    })();
    const reading = (async () => {
      const buffer = new Uint8Array(64 * 1024 + 3);
      let received = 0;
      for (;;) {
        const n = await up.reader.read(buffer);
        if (n === null) return received;
        assertPattern(buffer.subarray(0, n), received);
        received += n;
      }
    })();
    const [, received] = await withTimeout(
      Promise.all([writing, reading]),
      60_000,
      `${total} bytes through the ${mode} child`,
    );
    assert.equal(received, total);
    assert.deepEqual(
      await withTimeout(child.status, 10_000, "the child's exit"),
      { success: true, code: 0, signal: null },
    );
  } finally {
    down.reader.close();
    down.writer.close();
    up.reader.close();
    up.writer.close();
  }
}

test(
  "16 MiB through a child that echoes them with async reads and writes arrive intact, both ways at once",
  () => echoThroughChild("echo", 16 * MiB),
  SPAWN,
);

test(
  "a child using only blocking reads and writes on inherited pipe ends works while this side waits in the poller",
  () => echoThroughChild("sync-echo", 4 * MiB),
  SPAWN,
);

test(
  "head writing to a PipeWriter as its stdout never gets EAGAIN while this side reads slowly",
  async () => {
    const total = 4 * MiB;
    using p = pipe();
    await using child = spawn("head", {
      args: ["-c", String(total), "/dev/zero"],
      stdin: "null",
      stdout: p.writer,
    });
    p.writer.close();
    const buffer = new Uint8Array(64 * 1024);
    let received = 0;
    const reading = (async () => {
      for (;;) {
        // Slower than head, so head keeps finding the pipe full.
        await delay(1);
        const n = await p.reader.read(buffer);
        if (n === null) return;
        assert.ok(buffer.subarray(0, n).every((b) => b === 0));
        received += n;
      }
    })();
    await withTimeout(reading, 30_000, "reading head's output");
    assert.equal(received, total);
    assert.deepEqual(
      await withTimeout(child.status, 10_000, "head's exit"),
      { success: true, code: 0, signal: null },
    );
  },
  SPAWN,
);

test(
  "wc reading a PipeReader as its stdin never gets EAGAIN while this side writes slowly",
  async () => {
    const total = 4 * MiB;
    using p = pipe();
    await using child = spawn("wc", {
      args: ["-c"],
      stdin: p.reader,
      stdout: "piped",
    });
    p.reader.close();
    const output = new Response(child.stdout).text();
    const chunk = pattern(64 * 1024);
    const writing = (async () => {
      for (let at = 0; at < total; at += chunk.length) {
        // Slower than wc, so wc keeps finding the pipe empty.
        await delay(1);
        await p.writer.write(chunk);
      }
      p.writer.close();
    })();
    await withTimeout(writing, 30_000, "writing to wc");
    assert.equal(
      (await withTimeout(output, 10_000, "wc's output")).trim(),
      String(total),
    );
    assert.deepEqual(
      await withTimeout(child.status, 10_000, "wc's exit"),
      { success: true, code: 0, signal: null },
    );
  },
  SPAWN,
);

// Spin-then-park: every wait goes through the shared Spinner.

/** Records which spinner each spin-then-park used, in order. */
function recordSpins(): { spinners: Spinner[]; [Symbol.dispose](): void } {
  const spinners: Spinner[] = [];
  const spin = Spinner.prototype.spin;
  Spinner.prototype.spin = function <T>(
    this: Spinner,
    attempt: () => T | undefined,
  ): T | undefined {
    spinners.push(this);
    return spin.call(this, attempt) as T | undefined;
  };
  return {
    spinners,
    [Symbol.dispose]() {
      Spinner.prototype.spin = spin;
    },
  };
}

test("a read or write that has to wait spins first with its end's own adaptive spinner, readable included", async () => {
  using p = pipe({ bytes: 4096 });
  using q = pipe();
  using spins = recordSpins();
  const buffer = new Uint8Array(16);

  // Reads left pending by a failed assertion are rejected by close().
  const first = p.reader.read(buffer);
  first.catch(() => {});
  assert.equal(spins.spinners.length, 1, "a waiting read did not spin");
  const readSpinner = spins.spinners[0];
  assert.equal(readSpinner.off, false, "the default spinner is off");
  p.writer.writeSync(new Uint8Array([1]));
  assert.equal(await withTimeout(first, 2000, "the first read"), 1);

  const second = p.reader.read(buffer);
  const other = q.reader.read(buffer);
  const stream = p.reader.readable.getReader();
  const third = stream.read();
  for (const pending of [second, other, third]) pending.catch(() => {});
  assert.equal(spins.spinners[1], readSpinner, "a second read");
  assert.notEqual(spins.spinners[2], readSpinner, "another pipe's read");
  await until(() => spins.spinners.length >= 4, 2000, "readable to read");
  assert.equal(spins.spinners[3], readSpinner, "readable");
  p.writer.writeSync(new Uint8Array([2, 3]));
  assert.equal(await withTimeout(second, 2000, "the second read"), 2);
  p.writer.writeSync(new Uint8Array([4]));
  const chunk = await withTimeout(third, 2000, "the stream's read");
  assert.deepEqual([...chunk.value!], [4]);
  stream.releaseLock();

  // A write that finds the pipe full waits with the writer's spinner.
  const count = spins.spinners.length;
  const write = p.writer.write(new Uint8Array(8192));
  write.catch(() => {});
  await until(() => spins.spinners.length > count, 2000, "the write to spin");
  const writeSpinner = spins.spinners[count];
  assert.notEqual(writeSpinner, readSpinner);
  assert.equal(writeSpinner.off, false);
  const drain = new Uint8Array(8192);
  let drained = 0;
  while (drained < 8192) {
    drained += (await withTimeout(p.reader.read(drain), 2000, "drain"))!;
  }
  await withTimeout(write, 2000, "the write");
  q.reader.close();
  await assert.rejects(other, Deno.errors.BadResource);
});

test("spin: 0 turns the spin off and spin: n spins a fixed budget, per read or for a whole pipe", async () => {
  using spins = recordSpins();
  const buffer = new Uint8Array(8);
  {
    using p = pipe();
    for (const options of [undefined, { spin: 0 }, { spin: 5 }]) {
      const read = p.reader.read(buffer, options);
      p.writer.writeSync(buffer);
      assert.equal(await withTimeout(read, 2000, "a read"), 8);
    }
    const [own, off, fixed] = spins.spinners;
    assert.equal(own.off, false);
    assert.equal(off.off, true, "spin: 0");
    assert.equal(fixed.off, false, "spin: 5");
    assert.notEqual(fixed, own);
  }
  spins.spinners.length = 0;
  {
    using p = pipe({ bytes: 4096, spin: 0 });
    const read = p.reader.read(buffer);
    assert.equal(
      spins.spinners[0].off,
      true,
      "the reader of pipe({ spin: 0 })",
    );
    p.writer.writeSync(buffer);
    await withTimeout(read, 2000, "the read");
    const write = p.writer.write(new Uint8Array(8192));
    await until(() => spins.spinners.length > 1, 2000, "the write to spin");
    assert.equal(
      spins.spinners[1].off,
      true,
      "the writer of pipe({ spin: 0 })",
    );
    const drain = new Uint8Array(8192);
    let drained = 0;
    while (drained < 8192) {
      drained += (await withTimeout(p.reader.read(drain), 2000, "drain"))!;
    }
    await withTimeout(write, 2000, "the write");
  }
});

test("spin options are checked: a negative, non-finite or too large spin is a RangeError, a non-number a TypeError", async () => {
  using p = pipe();
  await p.writer.write(new Uint8Array(64));
  const buffer = new Uint8Array(1);
  const bad: [unknown, typeof RangeError | typeof TypeError][] = [
    [-1, RangeError],
    [NaN, RangeError],
    [Infinity, RangeError],
    [1_000_001, RangeError],
    ["5", TypeError],
    [null, TypeError],
  ];
  for (const [spin, Class] of bad) {
    const options = { spin } as { spin: number };
    await assert.rejects(
      p.reader.read(buffer, options),
      (e: unknown) =>
        e instanceof Class && /PipeReader: spin must/.test(String(e)),
      `read() with spin ${String(spin)}`,
    );
    assert.throws(() => pipe(options), Class, `pipe() with ${String(spin)}`);
    assert.throws(() => new PipeReader(-1, options), Class);
    assert.throws(() => new PipeWriter(-1, options), Class);
  }
  // Nothing was read by the refused calls.
  assert.equal(await p.reader.read(new Uint8Array(100), { spin: 0 }), 64);
});

// Writes and reads of any ArrayBufferView, and nothing else.

test("write() of a Uint16Array sends exactly its bytes, never bytes left by an earlier write to another pipe", async () => {
  using a = pipe();
  using b = pipe();
  // Small buffers go through a shared bounce buffer: fill it with 0xaa.
  await a.writer.write(new Uint8Array(64).fill(0xaa));
  const words = new Uint16Array([0x0102, 0x0304, 0x0506, 0x0708]);
  await b.writer.write(words);
  const got = new Uint8Array(64);
  assert.equal(await b.reader.read(got), 8);
  assert.deepEqual(got.subarray(0, 8), new Uint8Array(words.buffer));
  assert.equal(readNoWait(b.reader.rawFd, got), -1, "more bytes were sent");
});

test("write() and writeSync() send any typed array or DataView byte for byte, honouring its offset", async () => {
  using p = pipe();
  const backing = pattern(256, 40).buffer;
  const views: ArrayBufferView[] = [
    new Uint16Array(backing, 2, 5),
    new Int32Array(backing, 8, 30),
    new Float64Array(backing, 16, 3),
    new DataView(backing, 3, 61),
    new DataView(backing, 100, 120),
    new Uint8ClampedArray(backing, 7, 9),
    new BigInt64Array(backing, 24, 2),
  ];
  const got = new Uint8Array(256);
  for (const [i, view] of views.entries()) {
    for (const how of ["write", "writeSync"]) {
      if (how === "write") {
        await p.writer.write(view);
      } else {
        p.writer.writeSync(view);
      }
      const n = await withTimeout(p.reader.read(got), 2000, "a read");
      assert.equal(n, view.byteLength, `view ${i} by ${how}: length`);
      assertPattern(got.subarray(0, n!), 40 + view.byteOffset);
    }
  }
});

test("write() rejects and writeSync() throws a TypeError for anything but an ArrayBufferView, and write nothing", async () => {
  using p = pipe();
  const values = [
    "text",
    42,
    null,
    undefined,
    [1, 2, 3],
    new ArrayBuffer(4),
    { byteLength: 4 },
  ];
  for (const value of values) {
    const bytes = value as Uint8Array;
    const named = (e: unknown) =>
      e instanceof TypeError &&
      /^Cannot write to PipeWriter: expected a Uint8Array/.test(e.message);
    await assert.rejects(p.writer.write(bytes), named, String(value));
    assert.throws(() => p.writer.writeSync(bytes), named, String(value));
  }
  assert.equal(readNoWait(p.reader.rawFd, new Uint8Array(16)), -1);
});

test("read() and readSync() fill any typed array or DataView byte for byte, and refuse anything else with TypeError", async () => {
  using p = pipe();
  const words = new Uint16Array(4);
  await p.writer.write(pattern(8, 500));
  assert.equal(await p.reader.read(words), 8);
  assertPattern(new Uint8Array(words.buffer), 500);

  const backing = new ArrayBuffer(300);
  const view = new DataView(backing, 10, 200);
  await p.writer.write(pattern(200, 600));
  assert.equal(await p.reader.read(view), 200);
  assertPattern(new Uint8Array(backing, 10, 200), 600);

  const floats = new Float32Array(3);
  p.writer.writeSync(pattern(12, 700));
  assert.equal(p.reader.readSync(floats), 12);
  assertPattern(new Uint8Array(floats.buffer), 700);

  for (const value of ["x", 1, null, new ArrayBuffer(8)]) {
    const into = value as unknown as Uint8Array;
    await assert.rejects(p.reader.read(into), TypeError, String(value));
    assert.throws(() => p.reader.readSync(into), TypeError, String(value));
  }
});

// writeSync() and pending write() calls stay in call order.

test(
  "writeSync() while a write() is pending writes the pending bytes first, resolves that write, then its own bytes",
  async () => {
    using input = pipe({ bytes: 4096 });
    using output = pipe({ bytes: MiB });
    using go = pipe();
    // cat starts reading only once `go` says so: until then the first write
    // stays pending.
    await using child = spawn("sh", {
      args: ["-c", "head -c 1 <&3 >/dev/null && exec cat"],
      stdin: input.reader,
      stdout: output.writer,
      fds: [go.reader],
    });
    input.reader.close();
    output.writer.close();
    go.reader.close();
    const first = input.writer.write(new Uint8Array(256 * 1024).fill(0xaa));
    assert.ok(await stillPending(first, 20), "the first write finished");
    go.writer.writeSync(new Uint8Array(1));
    input.writer.writeSync(new Uint8Array(1000).fill(0xbb));
    assert.equal(
      await stillPending(first, 0),
      false,
      "the pending write was not resolved by writeSync()",
    );
    const third = input.writer.write(new Uint8Array(10).fill(0xcc));
    input.writer.writeSync(new Uint8Array(5).fill(0xdd));
    await withTimeout(Promise.all([first, third]), 5000, "the writes");
    input.writer.close();
    const data = await withTimeout(
      readAll(output.reader),
      10_000,
      "cat's output",
    );
    const runs: [number, number][] = [];
    for (const byte of data) {
      const last = runs.at(-1);
      if (last !== undefined && last[0] === byte) last[1]++;
      else runs.push([byte, 1]);
    }
    assert.deepEqual(runs, [
      [0xaa, 256 * 1024],
      [0xbb, 1000],
      [0xcc, 10],
      [0xdd, 5],
    ]);
    assert.deepEqual(
      await withTimeout(child.status, 10_000, "cat's exit"),
      { success: true, code: 0, signal: null },
    );
  },
  SPAWN,
);

test("writeSync() that finds a pending write() failing rejects that write and throws the same error", async () => {
  using p = pipe({ bytes: 4096 });
  const first = p.writer.write(new Uint8Array(8192));
  const second = p.writer.write(new Uint8Array(10));
  first.catch(() => {});
  second.catch(() => {});
  assert.ok(await stillPending(first, 20));
  p.reader.close();
  assert.throws(
    () => p.writer.writeSync(new Uint8Array(1)),
    Deno.errors.BrokenPipe,
  );
  await assert.rejects(first, Deno.errors.BrokenPipe);
  await assert.rejects(
    withTimeout(second, 2000, "the second write"),
    Deno.errors.BrokenPipe,
  );
});

// Cancellation: every wait takes a signal, and giving up loses no data.

function transfer(buffer: ArrayBufferLike): void {
  structuredClone(buffer, { transfer: [buffer as ArrayBuffer] });
}

/** Reads exactly `length` bytes; each read is bounded. */
async function readExactly(
  reader: PipeReader,
  length: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let got = 0;
  while (got < length) {
    const n = await withTimeout(reader.read(out.subarray(got)), 5000, "read");
    if (n === null) throw new Error(`EOF after ${got} of ${length} bytes`);
    got += n;
  }
  return out;
}

const isTimeout = (error: unknown) =>
  error instanceof DOMException && error.name === "TimeoutError";

test("read({ signal }) rejects with the signal's reason once it aborts, and the data that comes later is read whole", async () => {
  using p = pipe();
  const buffer = new Uint8Array(16);
  await assert.rejects(
    withTimeout(
      p.reader.read(buffer, { signal: AbortSignal.timeout(50) }),
      5000,
      "the aborted read",
    ),
    isTimeout,
  );
  await p.writer.write(encoder.encode("later"));
  const n = await withTimeout(p.reader.read(buffer), 2000, "the next read");
  assert.equal(decoder.decode(buffer.subarray(0, n!)), "later");
});

test("read() with an aborted signal rejects at once and takes nothing, even when data is there", async () => {
  using p = pipe();
  await p.writer.write(encoder.encode("kept"));
  const reason = new Error("not now");
  const buffer = new Uint8Array(16);
  await assert.rejects(
    p.reader.read(buffer, { signal: AbortSignal.abort(reason) }),
    (error) => error === reason,
  );
  assert.equal(buffer[0], 0, "nothing was read into the buffer");
  const n = await p.reader.read(buffer);
  assert.equal(decoder.decode(buffer.subarray(0, n!)), "kept");
});

test(
  "a read aborted by AbortSignal.timeout leaves a pipe to a child usable: the child's answer arrives whole",
  async () => {
    const down = pipe();
    const up = pipe();
    try {
      await using child = spawn(DENO, {
        args: ["run", "--allow-ffi", PEER, "echo"],
        fds: [down.reader, up.writer],
        stdin: "null",
      });
      down.reader.close();
      up.writer.close();
      const buffer = new Uint8Array(64);
      // The child echoes only what it gets: nothing yet.
      await assert.rejects(
        withTimeout(
          up.reader.read(buffer, { signal: AbortSignal.timeout(100) }),
          5000,
          "the aborted read",
        ),
        isTimeout,
      );
      await down.writer.write(encoder.encode("echo me"));
      down.writer.close();
      const text = await withTimeout(
        new Response(up.reader.readable).text(),
        10_000,
        "the child's echo",
      );
      assert.equal(text, "echo me");
      assert.equal(
        (await withTimeout(child.status, 10_000, "the child's exit")).code,
        0,
      );
    } finally {
      for (const end of [down.reader, down.writer, up.reader, up.writer]) {
        end.close();
      }
    }
  },
  SPAWN,
);

test("a read whose buffer is transferred while it waits rejects with TypeError naming the transfer, never a false EOF; the data stays for the next read", async () => {
  using p = pipe();
  const buffer = new Uint8Array(64);
  const read = p.reader.read(buffer);
  read.catch(() => {});
  assert.ok(await stillPending(read, 20));
  transfer(buffer.buffer);
  await p.writer.write(encoder.encode("still here"));
  await assert.rejects(
    withTimeout(read, 2000, "the read"),
    (error: Error) =>
      error instanceof TypeError &&
      error.message ===
        "Cannot read from PipeReader: the buffer was transferred (detached) while the read waited; the data stays for the next read",
  );
  const next = new Uint8Array(64);
  const n = await p.reader.read(next);
  assert.equal(decoder.decode(next.subarray(0, n!)), "still here");
});

test("read, readSync, write and writeSync refuse a buffer already transferred with TypeError, and move nothing", async () => {
  using p = pipe();
  for (const make of [() => new Uint8Array(8), () => new Float64Array(2)]) {
    const view = make();
    transfer(view.buffer);
    const named = (doing: string) => (error: unknown) =>
      error instanceof TypeError &&
      error.message === `${doing}: the buffer was transferred (detached)`;
    await assert.rejects(
      p.reader.read(view),
      named("Cannot read from PipeReader"),
    );
    assert.throws(
      () => p.reader.readSync(view),
      named("Cannot read from PipeReader"),
    );
    await assert.rejects(
      p.writer.write(view),
      named("Cannot write to PipeWriter"),
    );
    assert.throws(
      () => p.writer.writeSync(view),
      named("Cannot write to PipeWriter"),
    );
  }
  // An empty view of a live buffer is still fine.
  assert.equal(await p.reader.read(new Uint8Array(0)), 0);
  await p.writer.write(new Uint8Array(0));
  assert.equal(readNoWait(p.reader.rawFd, new Uint8Array(16)), -1);
});

test("write({ signal }) that has not started when it aborts is withdrawn: none of it is written, and later writes go on", async () => {
  using p = pipe({ bytes: 4096 });
  // Fill the pipe, so the next write cannot start.
  const fill = p.writer.write(pattern(4096, 0));
  await withTimeout(fill, 2000, "filling the pipe");
  const withdrawn = p.writer.write(new Uint8Array(100).fill(0xee), {
    signal: AbortSignal.timeout(50),
  });
  const after = p.writer.write(pattern(100, 4096));
  await assert.rejects(
    withTimeout(withdrawn, 5000, "the aborted write"),
    isTimeout,
  );
  const all = await readExactly(p.reader, 4196);
  assertPattern(all, 0);
  await withTimeout(after, 2000, "the later write");
  assert.equal(readNoWait(p.reader.rawFd, new Uint8Array(16)), -1);
});

test("write({ signal }) partly out when it aborts rejects at once; the rest of its bytes still arrive, from a copy, ahead of later writes", async () => {
  using p = pipe({ bytes: 4096 });
  const bytes = pattern(64 * 1024, 0);
  const partly = p.writer.write(bytes, { signal: AbortSignal.timeout(50) });
  const after = p.writer.write(pattern(1000, 64 * 1024));
  await assert.rejects(
    withTimeout(partly, 5000, "the aborted write"),
    isTimeout,
  );
  // The caller may reuse its buffer once the write is given up.
  bytes.fill(0);
  const all = await readExactly(p.reader, 64 * 1024 + 1000);
  assertPattern(all, 0);
  await withTimeout(after, 2000, "the later write");
  assert.equal(
    readNoWait(p.reader.rawFd, new Uint8Array(16)),
    -1,
    "no byte repeated",
  );
});

test("write() with an aborted signal rejects at once and writes nothing, even with room in the pipe", async () => {
  using p = pipe();
  const reason = new Error("not now");
  await assert.rejects(
    p.writer.write(new Uint8Array([1]), { signal: AbortSignal.abort(reason) }),
    (error) => error === reason,
  );
  assert.equal(readNoWait(p.reader.rawFd, new Uint8Array(16)), -1);
});

test("a queued write whose buffer is transferred while it waits rejects with TypeError saying how much was written; later writes go on", async () => {
  using p = pipe({ bytes: 4096 });
  const first = new Uint8Array(10_000).fill(1);
  const second = new Uint8Array(100).fill(2);
  const a = p.writer.write(first);
  const b = p.writer.write(second);
  const c = p.writer.write(new Uint8Array(10).fill(3));
  a.catch(() => {});
  b.catch(() => {});
  assert.ok(await stillPending(a, 20));
  transfer(first.buffer);
  transfer(second.buffer);
  // Drain what is in the pipe, so the queue moves on.
  const buffer = new Uint8Array(64 * 1024);
  const n = await p.reader.read(buffer);
  assert.equal(n, 4096);
  await assert.rejects(
    withTimeout(a, 2000, "the first write"),
    (error: Error) =>
      error instanceof TypeError &&
      error.message ===
        "Cannot write to PipeWriter: the buffer was transferred (detached) while the write waited, after 4096 of its bytes were written; the rest were not",
  );
  await assert.rejects(
    withTimeout(b, 2000, "the second write"),
    (error: Error) =>
      error instanceof TypeError &&
      /while the write waited; none of it was written$/.test(error.message),
  );
  await withTimeout(c, 2000, "the third write");
  assert.equal(await p.reader.read(buffer), 10);
  assert.ok(buffer.subarray(0, 10).every((byte) => byte === 3));
});

test("a queued write whose resizable buffer shrinks below its bytes while it waits rejects with TypeError instead of hanging the writer; later writes go on", async () => {
  using p = pipe({ bytes: 4096 });
  const buffer = new ArrayBuffer(10_000, { maxByteLength: 20_000 });
  const shrunk = new Uint8Array(buffer, 0, 10_000).fill(1);
  const a = p.writer.write(shrunk);
  const b = p.writer.write(new Uint8Array(10).fill(3));
  a.catch(() => {});
  assert.ok(await stillPending(a, 20));
  buffer.resize(10); // the write's view is now out of bounds: no bytes
  const all = new Uint8Array(64 * 1024);
  assert.equal(await withTimeout(p.reader.read(all), 2000, "the read"), 4096);
  await assert.rejects(
    withTimeout(a, 2000, "the write of the shrunk buffer"),
    (error: Error) =>
      error instanceof TypeError &&
      error.message ===
        "Cannot write to PipeWriter: the buffer was resized below the bytes given while the write waited, after 4096 of its bytes were written; the rest were not",
  );
  await withTimeout(b, 2000, "the later write");
  assert.equal(await withTimeout(p.reader.read(all), 2000, "the read"), 10);
  assert.ok(all.subarray(0, 10).every((byte) => byte === 3));
});

test("a queued write of a length-tracking view writes the bytes it was given, whether its buffer grows or shrinks meanwhile", async () => {
  using p = pipe({ bytes: 4096 });
  const grows = new ArrayBuffer(6000, { maxByteLength: 64 * 1024 });
  const grown = new Uint8Array(grows); // tracks the buffer's length
  grown.set(pattern(6000, 0));
  const a = p.writer.write(grown);
  assert.ok(await stillPending(a, 20));
  grows.resize(60_000);
  const got = await readExactly(p.reader, 6000);
  await withTimeout(a, 2000, "the write of the grown buffer");
  assertPattern(got, 0);
  assert.equal(readNoWait(p.reader.rawFd, new Uint8Array(16)), -1);

  const shrinks = new ArrayBuffer(6000, { maxByteLength: 64 * 1024 });
  const shrunk = new Uint8Array(shrinks);
  const b = p.writer.write(shrunk);
  b.catch(() => {});
  assert.ok(await stillPending(b, 20));
  shrinks.resize(5000); // still in bounds for the view, not for the write
  assert.equal((await readExactly(p.reader, 4096)).length, 4096);
  await assert.rejects(
    withTimeout(b, 2000, "the write of the shrunk buffer"),
    (error: Error) =>
      error instanceof TypeError && /resized below the bytes given/.test(
        error.message,
      ),
  );
});

test("aborting writable while a chunk waits for room settles promptly and closes the writer", async () => {
  using p = pipe({ bytes: 4096 });
  const writer = p.writer.writable.getWriter();
  const chunk = writer.write(new Uint8Array(16 * 1024));
  chunk.catch(() => {});
  assert.ok(await stillPending(chunk, 20), "the chunk finished on a full pipe");
  const reason = new Error("stop");
  await withTimeout(writer.abort(reason), 2000, "abort()");
  await assert.rejects(chunk, (error) => error === reason);
  assert.equal(p.writer.closed, true);
});

test("cancelling readable while a read waits settles it and closes the reader", async () => {
  using p = pipe();
  const reader = p.reader.readable.getReader();
  const read = reader.read();
  assert.ok(await stillPending(read, 20));
  await withTimeout(reader.cancel(), 2000, "cancel()");
  assert.deepEqual(await withTimeout(read, 2000, "the read"), {
    value: undefined,
    done: true,
  });
  assert.equal(p.reader.closed, true);
});

test("read() and write() refuse a signal that is not an AbortSignal with TypeError", async () => {
  using p = pipe();
  const signal = { aborted: true } as unknown as AbortSignal;
  await assert.rejects(
    p.reader.read(new Uint8Array(4), { signal }),
    (error: Error) =>
      error instanceof TypeError &&
      error.message ===
        "Cannot read from PipeReader: signal must be an AbortSignal, got Object",
  );
  await assert.rejects(
    p.writer.write(new Uint8Array(4), { signal }),
    (error: Error) =>
      error instanceof TypeError &&
      error.message ===
        "Cannot write to PipeWriter: signal must be an AbortSignal, got Object",
  );
  assert.equal(readNoWait(p.reader.rawFd, new Uint8Array(16)), -1);
});

test(
  "after a write partly out is aborted, an empty write() settles once the rest is out: closing then leaves the reader the whole write (pipe and stream socket)",
  async () => {
    for (const kind of ["pipe", "stream socket"] as const) {
      let w: PipeWriter | UnixSocket;
      let r: PipeReader | UnixSocket;
      if (kind === "pipe") ({ writer: w, reader: r } = pipe());
      else [w, r] = socketpair();
      const size = 1 << 20; // more than either holds: partly out
      const controller = new AbortController();
      const written = w.write(new Uint8Array(size).fill(7), {
        signal: controller.signal,
      });
      assert.ok(await stillPending(written, 20), kind);
      controller.abort(new Error("gave up"));
      await assert.rejects(written, /gave up/);
      const reading = (async () => {
        let total = 0;
        const buffer = new Uint8Array(64 << 10);
        for (let n; (n = await r.read(buffer)) !== null;) total += n;
        return total;
      })();
      await withTimeout(
        w.write(new Uint8Array(0)),
        10_000,
        `the empty write (${kind})`,
      );
      w.close();
      assert.equal(await withTimeout(reading, 10_000, "the reader"), size);
      r.close();
    }
  },
);

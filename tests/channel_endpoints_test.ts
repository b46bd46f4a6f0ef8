// Endpoints inside channel values (channel/_marshal.ts), and channel ends
// handed over as raw fds (_adopt.ts).

import assert from "node:assert/strict";
import {
  bytesChannel,
  channel,
  ChannelClosedError,
  fromFd,
  OneShotServer,
  pipe,
  PipeReader,
  Receiver,
  Sender,
  SharedMemory,
  socketpair,
  type UnixSocket,
} from "../mod.ts";
import { libc } from "../ffi/libc.ts";
import { markSocket } from "../_channel_wire.ts";
import { child, exited, PROCS } from "./_channel_util.ts";
import {
  fdTarget,
  openFds,
  stillPending,
  test,
  withTimeout,
  zombieChildren,
} from "./_util.ts";

test(
  "an endpoint referenced twice in one value arrives as one endpoint over one fd, as any object shared within a value does; a Receiver listed twice moves once",
  async () => {
    using ch = channel<Record<string, unknown>>();
    const [tx, rx] = ch;
    const { reader, writer } = pipe();
    const [inner, innerRx] = channel<number>();
    const before = openFds().length;
    await tx.send({
      input: reader,
      meta: { source: reader },
      both: [innerRx, innerRx],
    });
    const got = await withTimeout(rx.recv(), 10_000, "the value");
    const meta = got.meta as { source: PipeReader };
    const both = got.both as Receiver<number>[];
    assert.ok(got.input instanceof PipeReader);
    assert.equal(got.input, meta.source);
    assert.equal(both[0], both[1]);
    // One new fd for the pipe (the moved receiver's connection replaced
    // the one it had here).
    assert.equal(openFds().length - before, 1);
    await inner.send(7);
    assert.equal(await withTimeout(both[0].recv(), 10_000, "via the moved"), 7);
    // Closing the one reader closes the pipe's last read end here.
    reader.close();
    meta.source.close();
    await assert.rejects(
      writer.write(new Uint8Array(1)),
      Deno.errors.BrokenPipe,
    );
    writer.close();
    inner.close();
    both[0].close();
  },
);

test(
  "endpoints inside a message arrive live; sent Receivers move and transferred endpoints close",
  async () => {
    using ch = channel<Record<string, unknown>>();
    const [tx, rx] = ch;
    const { reader, writer } = pipe();
    const [inner, innerRx] = channel<string>();
    const [sa, sb] = socketpair({ type: "seqpacket" });
    await tx.send({ writer, inner, innerRx, sa }, { transfer: [writer] });
    assert.ok(writer.closed, "transferred");
    assert.ok(innerRx.closed, "receivers move");
    assert.ok(!inner.closed && !sa.closed, "others are copies");
    const got = await rx.recv();
    assert.ok(got.writer instanceof Object && !(got.writer === writer));
    await (got.writer as typeof writer).write(new Uint8Array([7]));
    const buf = new Uint8Array(4);
    assert.equal(await reader.read(buf), 1);
    await (got.inner as Sender<string>).send("via copy");
    await inner.send("via original");
    const moved = got.innerRx as Receiver<string>;
    assert.deepEqual(
      [await moved.recv(), await moved.recv()].sort(),
      ["via copy", "via original"],
    );
    await (got.sa as UnixSocket).send(new Uint8Array([1]));
    assert.equal((await sb.recv())!.data[0], 1);
    for (
      const e of [
        reader,
        inner,
        sa,
        sb,
        moved,
        got.writer,
        got.inner,
        got.sa,
      ] as { close(): void }[]
    ) e.close();
  },
);

test(
  "pipe ends, senders, receivers and shared memory sent to a child work there",
  async () => {
    const server = new OneShotServer<{ toChild: Sender<unknown> }>();
    await using proc = child("endpoints", server.name);
    const [boot, { toChild }] = await server.accept({ timeout: 15_000 });
    boot.close();
    const { reader, writer } = pipe();
    const [reply, replies] = channel<Record<string, unknown>>();
    const [inboxTx, inbox] = channel<string>();
    const memory = SharedMemory.create(4096);
    new Uint8Array(memory.buffer).set(
      new TextEncoder().encode("hello child"),
    );
    await toChild.send(
      { pipe: writer, reply, inbox, memory },
      { transfer: [writer, reply, memory] },
    );
    toChild.close();
    await inboxTx.send("sent after the move");
    const text = await withTimeout(
      new Response(reader.readable).text(),
      10_000,
      "pipe",
    );
    assert.equal(text, "written by the child");
    const first = await replies.recv({ signal: AbortSignal.timeout(10_000) });
    assert.deepEqual(first, {
      kinds: ["PipeWriter", "Sender", "Receiver", "SharedMemory"],
      shmText: "hello child",
      moved: "sent after the move",
      pid: proc.pid,
    });
    inboxTx.close();
    assert.deepEqual(
      await replies.recv({ signal: AbortSignal.timeout(10_000) }),
      { inboxEnded: true },
    );
    await assert.rejects(replies.recv(), ChannelClosedError);
    replies.close();
    reader.close();
    await exited(proc, "endpoints child");
    assert.deepEqual(zombieChildren(), []);
  },
  PROCS,
);

test(
  "a moved receiver takes along the messages of a batch it had not handed out yet, ahead of later ones",
  async () => {
    const [tx, rx] = channel<number>();
    for (let i = 0; i < 10; i++) await tx.send(i);
    await tx.send(10); // the second batch stays in the socket
    assert.equal(await rx.recv(), 0);
    assert.equal(await rx.recv(), 1); // 2..9 wait in this process
    using carrier = channel<Receiver<number>>();
    await carrier[0].send(rx);
    assert.ok(rx.closed);
    const moved = await carrier[1].recv();
    await tx.send(11);
    tx.close();
    const rest = [];
    for await (const n of moved) rest.push(n);
    assert.deepEqual(rest, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    moved.close();
  },
);

test(
  "a send waiting for credit carries the file named at the call, though its endpoint was closed and the number reused",
  async () => {
    using ch = channel<unknown>({ capacity: 1 });
    const [tx, rx] = ch;
    await tx.send("fill"); // the only credit
    const meant = pipe();
    const number = meant.writer.rawFd;
    const target = fdTarget(number);
    const waiting = tx.send({ w: meant.writer });
    assert.ok(await stillPending(waiting, 20), "the send waits for credit");
    meant.writer.close();
    // Open pipes until one takes the freed number.
    const others: { rawFd: number; close(): void }[] = [];
    while (
      !others.some((e) => e.rawFd === number) &&
      others.length < 64
    ) {
      const other = pipe();
      others.push(other.reader, other.writer);
    }
    assert.ok(
      others.some((e) => e.rawFd === number),
      "the number was reused",
    );
    assert.equal(await rx.recv(), "fill");
    await withTimeout(waiting, 2000, "send after credit");
    const got = await withTimeout(rx.recv(), 2000, "recv") as {
      w: { rawFd: number; close(): void };
    };
    assert.equal(fdTarget(got.w.rawFd), target, "the pipe meant at the call");
    got.w.close();
    meant.reader.close();
    for (const e of others) e.close();
  },
);

test(
  "a Sender passed as a raw fd arrives as a Sender of its capacity, and fromFd() makes a Receiver of a receiver's fd",
  async () => {
    const [tx, rx] = channel<string>({ capacity: 3 });
    const [a, b] = socketpair({ type: "dgram" });
    const spare = tx.clone();
    await a.send(new Uint8Array([1]), { fds: [spare], closeSent: true });
    const [end] = (await b.recv())!.fds;
    assert.ok(end instanceof Sender);
    assert.equal((end as Sender<string>).capacity, 3);
    await (end as Sender<string>).send("raw");
    assert.equal(await rx.recv(), "raw");
    const rawRx = fromFd(libc().fcntl(rx.rawFd, 1030, 3), {
      allowCloexec: true,
    });
    assert.ok(rawRx instanceof Receiver);
    for (const e of [tx, rx, a, b, end, rawRx]) e.close();
  },
);

test(
  "fromFd() refuses a socket that bears a channel end's mark but is not a unix seqpacket socket",
  () => {
    for (const [type, role] of [["stream", "s"], ["dgram", "r"]] as const) {
      const [x, y] = socketpair({ type });
      markSocket(x.rawFd, role, 0, 4);
      const fd = x.rawFd;
      assert.throws(
        () => fromFd(fd, { allowCloexec: true }),
        (error: unknown) =>
          error instanceof TypeError &&
          error.message ===
            `Cannot adopt fd ${fd} as a channel ${
              role === "s" ? "Sender" : "Receiver"
            }: it is a unix ${
              type === "stream" ? "stream" : "datagram"
            } socket, not a unix seqpacket socket`,
        type,
      );
      x.close();
      y.close();
    }
  },
);

test(
  "limits.maxEndpoints refuses a message with more endpoints than allowed, closes every fd it carried and drops its sender; 0 takes plain data only",
  async () => {
    {
      const [tx, rx] = channel<unknown>({ limits: { maxEndpoints: 0 } });
      await tx.send({ plain: [1, "two"] });
      assert.deepEqual(await rx.recv(), { plain: [1, "two"] });
      using p = pipe();
      await tx.send({ end: p.reader });
      await assert.rejects(
        rx.recv(),
        (error: unknown) =>
          error instanceof Deno.errors.InvalidData &&
          /limits\.maxEndpoints \(0\)/.test(error.message) &&
          /1 endpoints/.test(error.message),
      );
      assert.equal(rx.senders, 0, "the sender that sent it is dropped");
      tx.close();
      rx.close();
    }
    {
      const [tx, rx] = channel<unknown>({ limits: { maxEndpoints: 1 } });
      using a = pipe();
      using b = pipe();
      await tx.send([a.reader]);
      const [got] = await rx.recv() as PipeReader[];
      assert.ok(got instanceof PipeReader);
      got.close();
      await tx.send([a.writer, b.writer]);
      await assert.rejects(rx.recv(), /limits\.maxEndpoints \(1\)/);
      tx.close();
      rx.close();
    }
    // The fd-leak check of test() proves every fd that arrived was closed.
  },
);

test("limits.maxEndpoints is an integer from 0 to 253", () => {
  for (const maxEndpoints of [-1, 254, 1.5]) {
    assert.throws(
      () => channel({ limits: { maxEndpoints } }),
      (error: unknown) =>
        error instanceof RangeError &&
        /limits\.maxEndpoints must be an integer from 0 to 253/.test(
          error.message,
        ),
    );
  }
});

test("send() checks transfer before anything is sent: a buffer or a non-array is a TypeError, and nothing arrives", async () => {
  const [tx, rx] = channel<unknown>();
  try {
    const bytes = new Uint8Array([1, 2, 3]);
    await assert.rejects(
      tx.send(bytes, { transfer: [bytes.buffer] } as never),
      (e: unknown) =>
        e instanceof TypeError &&
        e.message.startsWith(
          "Cannot send on channel: transfer[0] is ArrayBuffer, not an endpoint",
        ),
    );
    await assert.rejects(
      tx.send(1, { transfer: { close() {} } } as never),
      (e: unknown) =>
        e instanceof TypeError && e.message.includes("must be an array"),
    );
    assert.equal(rx.tryRecv(), undefined, "nothing was sent");
  } finally {
    tx.close();
    rx.close();
  }
});

test("a transfer entry whose close() throws once the message is out does not fail the send; the others are closed", async () => {
  const [tx, rx] = channel<{ out: { close(): void } }>();
  const { reader, writer } = pipe();
  try {
    let closes = 0;
    const failing = {
      close() {
        closes++;
        throw new Error("close failed");
      },
    };
    await tx.send({ out: writer }, { transfer: [failing, writer] });
    assert.equal(closes, 1);
    assert.ok(writer.closed, "the writer was given up");
    const { out } = (await rx.recv())!;
    out.close();
    assert.equal(rx.tryRecv(), undefined, "sent once");
  } finally {
    reader.close();
    tx.close();
    rx.close();
  }
});

test("a bytesChannel() sender takes no transfer", async () => {
  const [tx, rx] = bytesChannel();
  const { reader, writer } = pipe();
  try {
    await assert.rejects(
      tx.send(new Uint8Array([1]), { transfer: [writer] }),
      TypeError,
    );
    assert.ok(!writer.closed);
    await tx.send(new Uint8Array([2]), { transfer: [] });
    assert.deepEqual(await rx.recv(), new Uint8Array([2]));
  } finally {
    reader.close();
    writer.close();
    tx.close();
    rx.close();
  }
});

import assert from "node:assert/strict";
import {
  bytesChannel,
  channel,
  ChannelClosedError,
  connect,
  fromFd,
  listen,
  OneShotServer,
  pipe,
  Receiver,
  ReceiverSet,
  Sender,
  SharedMemory,
  socketpair,
  spawn,
  type UnixSocket,
} from "../mod.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { FRAME, header, markSocket } from "../_channel_wire.ts";
import { libc } from "../ffi/libc.ts";
import { cstr } from "../ffi/mem.ts";
import { MMAP, O, SOCK } from "../ffi/layout.ts";
import { everyKind } from "./fixtures/_channel_values.ts";
import {
  assertNoFdLeak,
  DENO,
  fdTarget,
  fixture,
  openFds,
  pollerInterest,
  SANITIZE,
  stillPending,
  withTimeout,
  zombieChildren,
} from "./_util.ts";

const CHILD = fixture("channel_child.ts");
const local = { ...SANITIZE, permissions: { ffi: true } } as const;
const procs = {
  ...SANITIZE,
  permissions: { ffi: true, run: true, read: true },
} as const;

function child(mode: string, ...args: string[]) {
  return spawn(DENO, {
    args: ["run", "--allow-ffi", CHILD, mode, ...args],
    stdin: "null",
  });
}

async function exited(
  proc: ReturnType<typeof spawn>,
  what: string,
): Promise<void> {
  const status = await withTimeout(proc.status, 20_000, what);
  assert.deepEqual(status, { success: true, code: 0, signal: null }, what);
}

Deno.test({
  name: "channel() round-trips every structured-clone kind in one process",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      using ch = channel<Record<string, unknown>>();
      const [tx, rx] = ch;
      const value = everyKind();
      await tx.send(value);
      const got = await withTimeout(rx.recv(), 5000, "recv");
      assert.deepStrictEqual(got, value);
      assert.equal(got.shared1, got.shared2);
      assert.equal((got.cycle as { self: unknown }).self, got.cycle);
      assert.ok(Object.is(got.negZero, -0));
      assert.ok(got.error instanceof TypeError);
      assert.deepEqual((got.error as Error).cause, { code: 7 });
      // Views of one buffer still share it on arrival.
      assert.equal((got.dataView as DataView).buffer, got.arrayBuffer);
    });
  },
});

Deno.test({
  name: "channel() refuses values that cannot be cloned, and sends nothing",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      using ch = channel<unknown>();
      const [tx, rx] = ch;
      for (
        const bad of [() => 1, Symbol("s"), new WeakMap(), {
          p: Promise.resolve(),
        }]
      ) {
        await assert.rejects(
          tx.send(bad),
          (e: unknown) =>
            e instanceof DOMException && e.name === "DataCloneError",
        );
      }
      const deep: Record<string, unknown> = {};
      let at = deep;
      for (let i = 0; i < 2000; i++) {
        at = (at.next = {}) as Record<string, unknown>;
      }
      await assert.rejects(tx.send(deep), RangeError);
      assert.equal(rx.tryRecv(), undefined);
    });
  },
});

Deno.test({
  name:
    "typed arrays travel beside the header; a subarray arrives without the rest of its buffer",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      using ch = channel<{ part: Uint8Array; whole: Float64Array }>();
      const [tx, rx] = ch;
      const backing = new Uint8Array(1 << 20).map((_, i) => i & 0xff);
      await tx.send({
        part: backing.subarray(1000, 1010),
        whole: new Float64Array([1, 2, 3]),
      });
      const got = await rx.recv();
      assert.deepEqual([...got.part], [...backing.subarray(1000, 1010)]);
      assert.ok(got.part.buffer.byteLength < 64);
      assert.deepEqual([...got.whole], [1, 2, 3]);
    });
  },
});

Deno.test({
  name: "bytesChannel() carries Uint8Array messages whole, small and large",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      using ch = bytesChannel();
      const [tx, rx] = ch;
      const sizes = [0, 1, 64, 65_000, 65_536, 3 << 20];
      for (const size of sizes) {
        await tx.send(new Uint8Array(size).fill(size & 0xff));
      }
      for (const size of sizes) {
        const got = await withTimeout(rx.recv(), 5000, `recv ${size}`);
        assert.equal(got.byteLength, size);
        assert.ok(got.every((b) => b === (size & 0xff)));
      }
      await assert.rejects(
        tx.send("text" as unknown as Uint8Array),
        TypeError,
      );
    });
  },
});

Deno.test({
  name:
    "send() waits when capacity messages are unacknowledged and resumes as the receiver drains",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      using ch = channel<number>({ capacity: 4 });
      const [tx, rx] = ch;
      for (let i = 0; i < 4; i++) await tx.send(i);
      const fifth = tx.send(4);
      assert.ok(await stillPending(fifth, 50), "the fifth send waits");
      assert.equal(await rx.recv(), 0);
      await withTimeout(fifth, 2000, "fifth send after one recv");
      const more = [tx.send(5), tx.send(6)];
      assert.ok(await stillPending(more[0], 30));
      const got: number[] = [];
      for (let i = 0; i < 6; i++) got.push(await rx.recv());
      await withTimeout(Promise.all(more), 2000, "sends after drain");
      assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);

      // Larger capacities acknowledge in batches of a quarter.
      using big = channel<number>({ capacity: 8 });
      const [btx, brx] = big;
      for (let i = 0; i < 8; i++) await btx.send(i);
      const ninth = btx.send(8);
      await brx.recv();
      assert.ok(await stillPending(ninth, 30), "one taken: no ack yet");
      await brx.recv();
      await withTimeout(ninth, 2000, "ninth send after two recvs");
    });
  },
});

Deno.test({
  name:
    "recv() throws ChannelClosedError once every sender clone is closed, after the last message",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const [tx, rx] = channel<string>();
      const tx2 = tx.clone();
      const tx3 = tx2.clone();
      await tx.send("a");
      tx.close();
      tx.close();
      await tx3.send("c");
      tx3.close();
      assert.deepEqual(
        [await rx.recv(), await rx.recv()].sort(),
        ["a", "c"],
      );
      assert.equal(rx.tryRecv(), undefined, "tx2 still open");
      const pending = rx.recv();
      assert.ok(await stillPending(pending, 30));
      tx2.close();
      await assert.rejects(
        withTimeout(pending, 2000, "recv after last close"),
        ChannelClosedError,
      );
      assert.throws(() => rx.tryRecv(), ChannelClosedError);
      assert.throws(() => tx.rawFd, /Cannot use Sender: it is closed/);
      await assert.rejects(tx.send("x"), Deno.errors.BadResource);
      rx.close();
      await assert.rejects(rx.recv(), /Cannot use Receiver: it is closed/);
    });
  },
});

Deno.test({
  name:
    "a sender that closes with acknowledgements unread loses none of its messages",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      // The kernel reports ECONNRESET once, ahead of the queued frames,
      // when a socket closes with unread data of its own.
      const [tx, rx] = channel<number>({ capacity: 8 });
      for (let i = 0; i < 4; i++) await tx.send(i);
      assert.equal(await rx.recv(), 0);
      assert.equal(await rx.recv(), 1); // an ack the sender never reads
      await tx.send(4);
      tx.close();
      const got: number[] = [];
      for await (const n of rx) got.push(n);
      assert.deepEqual(got, [2, 3, 4]);
      rx.close();
    });
  },
});

Deno.test({
  name: "send() throws ChannelClosedError once the receiver is closed",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const [tx, rx] = channel<number>({ capacity: 1 });
      await tx.send(1);
      const waiting = tx.send(2);
      rx.close();
      await assert.rejects(
        withTimeout(waiting, 2000, "waiting send"),
        ChannelClosedError,
      );
      await assert.rejects(tx.send(3), /the receiver is closed/);
      tx.close();
    });
  },
});

Deno.test({
  name: "tryRecv(), async iteration and readable take messages in order",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const [tx, rx] = channel<number>();
      assert.equal(rx.tryRecv(), undefined);
      await tx.send(1);
      assert.equal(rx.tryRecv(), 1);
      const spinning = rx.recv({ spin: 200 });
      await tx.send(1.5);
      assert.equal(await spinning, 1.5);
      for (let i = 2; i <= 4; i++) await tx.send(i);
      const seen: number[] = [];
      for await (const n of rx) {
        seen.push(n);
        if (n === 4) break;
      }
      assert.deepEqual(seen, [2, 3, 4]);
      const reading = Array.fromAsync(rx.readable);
      for (let i = 5; i <= 7; i++) await tx.send(i);
      tx.close();
      assert.deepEqual(
        await withTimeout(reading, 2000, "readable"),
        [5, 6, 7],
      );
      rx.close();
    });
  },
});

Deno.test({
  name:
    "ReceiverSet.select() returns messages of several receivers and reports each close once",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      using set = new ReceiverSet<string>();
      const senders: Sender<string>[] = [];
      const ids: number[] = [];
      for (let i = 0; i < 3; i++) {
        const [tx, rx] = channel<string>();
        senders.push(tx);
        ids.push(set.add(rx));
      }
      await senders[1].send("one");
      assert.deepEqual(await set.select(), { id: ids[1], value: "one" });
      const waiting = set.select();
      assert.ok(await stillPending(waiting, 30));
      await senders[2].send("two");
      assert.deepEqual(await withTimeout(waiting, 2000, "select"), {
        id: ids[2],
        value: "two",
      });
      senders[0].close();
      assert.deepEqual(await set.select(), { id: ids[0], closed: true });
      await senders[2].send("last");
      senders[2].close();
      senders[1].close();
      const rest = [await set.select(), await set.select(), await set.select()];
      assert.deepEqual(
        rest.map((r) => JSON.stringify(r)).sort(),
        [
          { id: ids[1], closed: true },
          { id: ids[2], closed: true },
          { id: ids[2], value: "last" },
        ].map((r) => JSON.stringify(r)).sort(),
      );
      assert.equal(set.size, 0);
      await assert.rejects(set.select(), ChannelClosedError);
      const aborted = new AbortController();
      const [tx, rx] = channel<string>();
      set.add(rx);
      const pending = set.select({ signal: aborted.signal });
      aborted.abort(new Error("stop"));
      await assert.rejects(pending, /stop/);
      tx.close();
    });
  },
});

Deno.test({
  name:
    "endpoints inside a message arrive live; sent Receivers move and transferred endpoints close",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
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
    });
  },
});

Deno.test({
  name: "fromFd() rebuilds channel ends handed over as raw fds",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
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
    });
  },
});

function rawPair(): [UnixSocket, Receiver<unknown>] {
  const [peer, mine] = socketpair({ type: "seqpacket" });
  const owned = new OwnedFd(mine._release(), "Receiver");
  return [peer, new Receiver([{ fd: owned, capacity: 4, unacked: 0 }])];
}

function frame(type: number, a: number, body: number[], tree?: number) {
  const head = header(type, a, body.length, tree ?? body.length);
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

Deno.test({
  name:
    "malformed frames fail the receive with InvalidData, close their fds and drop that sender",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const deep = [...Array(1500).fill(8).flatMap((t) => [t, 1]), 1];
      const cases: [string, Uint8Array, boolean?][] = [
        ["unknown tag", frame(FRAME.MESSAGE, 0, [99, 0])],
        ["truncated header", new Uint8Array([1, 1, 0])],
        [
          "bad version",
          (() => {
            const f = frame(FRAME.MESSAGE, 0, [1, 0]);
            f[1] = 9;
            return f;
          })(),
        ],
        ["fd count mismatch", frame(FRAME.MESSAGE, 0, [1, 0]), true],
        ["string past the end", frame(FRAME.MESSAGE, 0, [7, 100, 65, 0], 3)],
        ["huge array count", frame(FRAME.MESSAGE, 0, [8, 0xff, 0xff, 0x7f, 0])],
        ["nesting too deep", frame(FRAME.MESSAGE, 0, [...deep, 0])],
        ["reference ahead", frame(FRAME.MESSAGE, 0, [17, 5, 0])],
        ["endpoint without fd", frame(FRAME.MESSAGE, 0, [18, 1, 0, 0])],
        ["blob table lies", frame(FRAME.MESSAGE, 0, [14, 0, 1, 0, 50], 2)],
        ["unknown frame type", frame(42, 0, [1, 0])],
        ["memfd frame without memfd", frame(FRAME.MESSAGE_MEMFD, 0, [])],
      ];
      for (const [what, bytes, withFd] of cases) {
        const [peer, rx] = rawPair();
        const { reader, writer } = pipe();
        await peer.send(bytes, withFd ? { fds: [reader] } : {});
        await assert.rejects(
          withTimeout(rx.recv(), 2000, what),
          Deno.errors.InvalidData,
          what,
        );
        await assert.rejects(rx.recv(), ChannelClosedError, `${what}: dropped`);
        await assert.rejects(
          peer.send(new Uint8Array([1])),
          Deno.errors.BrokenPipe,
          `${what}: the peer sees the drop`,
        );
        for (const e of [peer, rx, reader, writer]) e.close();
      }

      // A large frame must come in a sealed memfd, not any file.
      const [peer, rx] = rawPair();
      const fd = libc().memfd_create(cstr("unsealed"), MMAP.MFD_CLOEXEC);
      await peer.send(frame(FRAME.BYTES_MEMFD, 0, []), { fds: [fd] });
      libc().close(fd);
      await assert.rejects(rx.recv(), /sealed memfd/);
      peer.close();
      rx.close();

      // A well-formed frame from the same raw peer is accepted.
      const [good, grx] = rawPair();
      await good.send(frame(FRAME.MESSAGE, 0, [7, 2, 104, 105, 0], 4));
      assert.equal(await grx.recv(), "hi");
      good.close();
      grx.close();
    });
  },
});

Deno.test({
  name: "values of every kind cross to a child Deno process intact",
  ...procs,
  async fn() {
    await assertNoFdLeak(async () => {
      const server = new OneShotServer<unknown>();
      await using proc = child("values", server.name);
      const [rx, got] = await server.accept({ timeout: 15_000 });
      assert.deepStrictEqual(got, everyKind());
      assert.equal(
        await rx.recv({ signal: AbortSignal.timeout(10_000) }),
        "done",
      );
      await assert.rejects(rx.recv(), ChannelClosedError);
      rx.close();
      await exited(proc, "values child");
    });
    assert.deepEqual(zombieChildren(), []);
  },
});

Deno.test({
  name:
    "pipe ends, senders, receivers and shared memory sent to a child work there",
  ...procs,
  async fn() {
    await assertNoFdLeak(async () => {
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
    });
    assert.deepEqual(zombieChildren(), []);
  },
});

Deno.test({
  name: "64 MiB messages from a child arrive whole, as a value and as bytes",
  ...procs,
  async fn() {
    await assertNoFdLeak(async () => {
      const values = new OneShotServer<{ label: string; data: Uint8Array }>();
      const bytes = new OneShotServer<Uint8Array>();
      await using proc = child("big", values.name, bytes.name);
      const [rx, got] = await values.accept({ timeout: 30_000 });
      const [brx, raw] = await bytes.accept({ timeout: 30_000 });
      for (const data of [got.data, raw]) {
        assert.equal(data.byteLength, 64 << 20);
        const words = new Uint32Array(data.buffer, data.byteOffset, 16 << 20);
        let wrong = -1;
        for (let i = 0; i < words.length; i++) {
          if (words[i] !== ((i * 2654435761) >>> 0)) {
            wrong = i;
            break;
          }
        }
        assert.equal(wrong, -1, "every word as sent");
      }
      assert.equal(got.label, "64 MiB");
      rx.close();
      brx.close();
      await exited(proc, "big child");
    });
    assert.deepEqual(zombieChildren(), []);
  },
});

Deno.test({
  name:
    "a sender killed with SIGKILL mid-message leaves whole messages, then ChannelClosedError",
  ...procs,
  async fn() {
    await assertNoFdLeak(async () => {
      const server = new OneShotServer<{ i: number; data: Uint8Array }>();
      await using proc = child("flood", server.name);
      const [rx, first] = await server.accept({ timeout: 15_000 });
      const check = (m: { i: number; data: Uint8Array }) => {
        assert.equal(m.data.byteLength, m.i % 2 === 0 ? 8 << 20 : 40 << 10);
        assert.ok(m.data.every((b) => b === (m.i & 0xff)), `message ${m.i}`);
      };
      check(first);
      let next = 1;
      for (; next < 4; next++) {
        const m = await rx.recv({ signal: AbortSignal.timeout(10_000) });
        assert.equal(m.i, next);
        check(m);
      }
      // The child is writing its next messages now.
      proc.kill("SIGKILL");
      const status = await withTimeout(proc.status, 10_000, "killed child");
      assert.equal(status.signal, "SIGKILL");
      let closed = false;
      while (!closed) {
        try {
          const m = await withTimeout(rx.recv(), 10_000, "drain");
          assert.equal(m.i, next++);
          check(m);
        } catch (error) {
          assert.ok(error instanceof ChannelClosedError, String(error));
          closed = true;
        }
      }
      rx.close();
    });
    assert.deepEqual(zombieChildren(), []);
  },
});

// --- Batching, spinning and turns ---

/** A Sender on a raw seqpacket socket whose other end the test reads. */
function rawSender(capacity = 64): [Sender<unknown>, UnixSocket] {
  const [mine, theirs] = socketpair({ type: "seqpacket" });
  return [new Sender(mine._release(), capacity, 0), theirs];
}

/** A frame whose value is the string `text` (ASCII, at most 127 bytes). */
function stringFrame(text: string): Uint8Array {
  const tree = [7, text.length, ...new TextEncoder().encode(text)];
  return frame(FRAME.MESSAGE, 0, [...tree, 0], tree.length);
}

/** A BATCH frame of `records` (`count` overrides the record count). */
function batchFrame(records: Uint8Array[], count = records.length) {
  const body: number[] = [];
  for (const record of records) {
    const length = new Uint8Array(4);
    new DataView(length.buffer).setUint32(0, record.length, true);
    body.push(...length, ...record);
  }
  const out = new Uint8Array(16 + body.length);
  out.set(header(FRAME.BATCH, count));
  out.set(body, 16);
  return out;
}

Deno.test({
  name:
    "sends of one turn leave in few packets: the first at once, the rest in batches",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const [tx, peer] = rawSender(1000);
      const types: number[] = [];
      const reading = (async () => {
        for (let total = 0; total < 200;) {
          const got = await withTimeout(peer.recv(), 5000, "packet");
          const data = got!.data;
          types.push(data[0]);
          total += data[0] === FRAME.BATCH
            ? new DataView(data.buffer, data.byteOffset).getUint32(4, true)
            : 1;
        }
      })();
      for (let i = 0; i < 200; i++) await tx.send(i);
      await reading;
      assert.equal(types[0], FRAME.MESSAGE, "the first leaves alone");
      assert.ok(types.includes(FRAME.BATCH), `packets ${types}`);
      // A turn yielded every 5 ms of sending ends a batch early: on a busy
      // machine there are a few more packets, never one per message.
      assert.ok(types.length <= 50, `${types.length} packets`);
      tx.close();
      peer.close();
    });
  },
});

Deno.test({
  name:
    "a receiver takes a batch whole, acknowledges it once read and hands its messages out in order",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const [peer, rx] = rawPair(); // capacity 4
      const words = ["a", "bb", "ccc", "dddd", "e", "f", "g", "h"];
      await peer.send(batchFrame(words.map(stringFrame)));
      const got: unknown[] = [rx.tryRecv()];
      // The whole batch is out of the channel: the sender may send again.
      const ack = await withTimeout(peer.recv(), 2000, "ack");
      assert.equal(ack!.data[0], FRAME.ACK);
      assert.equal(new DataView(ack!.data.buffer).getUint32(4, true), 8);
      for (let i = 1; i < words.length; i++) got.push(rx.tryRecv());
      assert.deepEqual(got, words);
      assert.equal(rx.tryRecv(), undefined);
      peer.close();
      rx.close();
    });
  },
});

Deno.test({
  name:
    "malformed batches fail the receive with InvalidData and drop that sender",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const ok = stringFrame("x");
      const withFd = frame(FRAME.MESSAGE, 1, [0]);
      const cut = batchFrame([ok, ok]).subarray(0, 30);
      const long = batchFrame([ok]);
      new DataView(long.buffer).setUint32(16, 4000, true);
      const cases: [string, Uint8Array, boolean?][] = [
        ["count above the records", batchFrame([ok, ok], 3)],
        ["count below the records", batchFrame([ok, ok], 1)],
        ["count of zero", batchFrame([], 0)],
        ["record past the end", long],
        ["cut short", cut],
        ["record that names fds", batchFrame([ok, withFd])],
        ["control frame inside", batchFrame([ok, header(FRAME.ADD_PEER, 4)])],
        ["batch inside a batch", batchFrame([batchFrame([ok])])],
        ["fds attached to a batch", batchFrame([ok, ok]), true],
      ];
      for (const [what, bytes, withFds] of cases) {
        const [peer, rx] = rawPair();
        const { reader, writer } = pipe();
        await peer.send(bytes, withFds ? { fds: [reader] } : {});
        let taken = 0;
        try {
          for (;;) {
            assert.equal(rx.tryRecv(), "x", what);
            taken++;
          }
        } catch (error) {
          assert.ok(
            error instanceof Deno.errors.InvalidData,
            `${what}: ${error}`,
          );
        }
        // A batch's layout is checked whole before any message of it is
        // handed out.
        assert.equal(taken, 0, what);
        assert.throws(() => rx.tryRecv(), ChannelClosedError, what);
        for (const e of [peer, rx, reader, writer]) e.close();
      }
      // A message that does not decode fails when its turn comes; the ones
      // before it were good.
      const [peer, rx] = rawPair();
      const bad = frame(FRAME.MESSAGE, 0, [99, 0], 1);
      await peer.send(batchFrame([ok, bad, ok]));
      assert.equal(rx.tryRecv(), "x");
      assert.throws(() => rx.tryRecv(), Deno.errors.InvalidData);
      assert.throws(() => rx.tryRecv(), ChannelClosedError);
      peer.close();
      rx.close();
    });
  },
});

Deno.test({
  name:
    "a send that resolved before its batch left, or waits for credit, carries the value as it was at the call; close() still sends a batch",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const [tx, rx] = channel<{ bytes: Uint8Array } | number>();
      const bytes = new Uint8Array([1, 2, 3]);
      await tx.send(0);
      await tx.send({ bytes });
      bytes[0] = 9;
      await tx.send(2);
      tx.close();
      const got = [];
      for await (const value of rx) got.push(value);
      assert.deepEqual(got, [0, { bytes: new Uint8Array([1, 2, 3]) }, 2]);
      rx.close();

      // A send that waits for credit, likewise, in both kinds of channel.
      using values = channel<{ bytes: Uint8Array } | number>({ capacity: 1 });
      using raw = bytesChannel({ capacity: 1 });
      for (
        const [vtx, vrx, wrap] of [
          [values[0], values[1], (b: Uint8Array) => ({ bytes: b })],
          [raw[0], raw[1], (b: Uint8Array) => b],
        ] as const
      ) {
        const later = new Uint8Array(300).fill(1);
        const send = vtx.send as (value: unknown) => Promise<void>;
        await send.call(vtx, wrap(new Uint8Array(1)));
        const waiting = send.call(vtx, wrap(later));
        assert.ok(await stillPending(waiting, 20), "the send waits");
        later.fill(9);
        await vrx.recv();
        await withTimeout(waiting, 2000, "send after credit");
        const value = await vrx.recv() as Uint8Array | { bytes: Uint8Array };
        const arrived = value instanceof Uint8Array ? value : value.bytes;
        assert.ok(arrived.every((b) => b === 1), "the bytes as at the call");
      }
    });
  },
});

Deno.test({
  name: "a batch goes out before this thread spins waiting for anything",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      using ch = channel<number>();
      const [tx, rx] = ch;
      using other = channel<number>();
      await tx.send(1);
      await tx.send(2); // gathered for the end of the turn
      const stop = new AbortController();
      // Spins (synchronously, inside the call) before it parks.
      const waiting = other[1].recv({ spin: 20, signal: stop.signal });
      assert.equal(rx.tryRecv(), 1);
      assert.equal(rx.tryRecv(), 2, "the batch left before the spin");
      stop.abort();
      await assert.rejects(waiting);
    });
  },
});

Deno.test({
  name:
    "a batch goes out before a call that blocks the thread (readSync, writeSync, recvSync, sendSync, acceptSync)",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      using ch = channel<number>();
      const [tx, rx] = ch;
      using p = pipe();
      using stream = socketpair();
      using packets = socketpair({ type: "seqpacket" });
      const address = `conduit-test-${crypto.randomUUID()}`;
      using server = listen({ abstract: address });
      const one = new Uint8Array(1);
      // Each call finds what it waits for already there, so it returns at
      // once; a peer that answers only after the batch would wait forever.
      const calls: [string, () => void][] = [
        ["PipeWriter.writeSync", () => p.writer.writeSync(one)],
        ["PipeReader.readSync", () => p.reader.readSync(one)],
        ["UnixSocket.writeSync", () => stream[0].writeSync(one)],
        ["UnixSocket.readSync", () => stream[1].readSync(one)],
        ["UnixSocket.sendSync", () => packets[0].sendSync(one)],
        ["UnixSocket.recvSync", () => packets[1].recvSync()],
        ["UnixListener.acceptSync", () => server.acceptSync().close()],
      ];
      let n = 0;
      for (const [name, call] of calls) {
        if (name === "UnixListener.acceptSync") {
          (await connect({ abstract: address })).close();
        }
        await tx.send(n);
        await tx.send(n + 1); // gathered for the end of the turn
        call();
        assert.equal(rx.tryRecv(), n, name);
        assert.equal(rx.tryRecv(), n + 1, `${name}: the batch left first`);
        n += 2;
      }
    });
  },
});

Deno.test({
  name:
    "a moved receiver takes along the messages of a batch it had not handed out yet, ahead of later ones",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
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
    });
  },
});

Deno.test({
  name: "send() and recv() check their spin option with checkSpin",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      using ch = channel<number>();
      const [tx, rx] = ch;
      await tx.send(1);
      await assert.rejects(rx.recv({ spin: -1 }), RangeError);
      await assert.rejects(
        rx.recv({ spin: "5" as unknown as number }),
        TypeError,
      );
      await assert.rejects(tx.send(2, { spin: Infinity }), RangeError);
      assert.equal(await rx.recv({ spin: 0 }), 1);
      await tx.send(3, { spin: 50 });
      assert.equal(await rx.recv({ spin: 50 }), 3);
    });
  },
});

Deno.test({
  name:
    "a for await loop fed by a child faster than it reads lets a 1 ms interval run",
  ...procs,
  async fn() {
    await assertNoFdLeak(async () => {
      const server = new OneShotServer<number>();
      await using proc = child("stream", server.name);
      const [rx] = await server.accept({ timeout: 15_000 });
      let ticks = 0;
      const interval = setInterval(() => ticks++, 1);
      let taken = 0;
      try {
        for await (const _ of rx) {
          taken++;
          // The reader works on each message, so the writer stays ahead.
          const until = performance.now() + 0.02;
          while (performance.now() < until) { /* work */ }
          if (ticks >= 5 || taken >= 20_000) break;
        }
      } finally {
        clearInterval(interval);
      }
      assert.ok(ticks >= 5, `${ticks} ticks while ${taken} messages came`);
      rx.close();
      await exited(proc, "stream child");
    });
    assert.deepEqual(zombieChildren(), []);
  },
});

// --- Hostile peers ---

Deno.test({
  name:
    "a send waiting for credit carries the file named at the call, though its endpoint was closed and the number reused",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
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
    });
  },
});

Deno.test({
  name:
    "one socket added as a new sender 600 times is held once by the receiver",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const [peer, rx] = rawPair();
      const [a, b] = socketpair({ type: "seqpacket" });
      const before = openFds().length;
      for (let i = 0; i < 600; i++) {
        await withTimeout(
          peer.send(header(FRAME.ADD_PEER, 4), { fds: [a] }),
          2000,
          `add ${i}`,
        );
        // A connection queues a few packets: let the receiver read them.
        if (i % 8 === 7) assert.equal(rx.tryRecv(), undefined);
      }
      while (rx.tryRecv() !== undefined) { /* drain */ }
      assert.equal(rx.tryRecv(), undefined);
      assert.equal(rx.senders, 2, "the raw peer and the socket once");
      assert.ok(
        openFds().length <= before + 1,
        `${openFds().length - before} fds more`,
      );
      for (const e of [peer, rx, a, b]) e.close();
    });
  },
});

Deno.test({
  name:
    "a sender adds at most 1024 open senders; the next one is refused and told why",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const [tx, rx] = channel<number>();
      const clones: Sender<number>[] = [];
      for (let i = 0; i < 1025; i++) {
        clones.push(tx.clone());
        // The receiver takes each new sender in before the next comes.
        assert.equal(rx.tryRecv(), undefined);
        assert.equal(rx.senders, Math.min(i + 2, 1025));
      }
      await clones[1023].send(1);
      await assert.rejects(
        clones[1024].send(2),
        (error: unknown) =>
          error instanceof ChannelClosedError &&
          /refused this sender: the sender it was cloned from already added 1024 open senders/
            .test(error.message),
      );
      assert.equal(await withTimeout(rx.recv(), 2000, "recv"), 1);
      // Closing one makes room for another, once the receiver saw it go.
      clones[0].close();
      for (let i = 0; i < 100 && rx.senders > 1024; i++) {
        assert.equal(rx.tryRecv(), undefined);
      }
      assert.equal(rx.senders, 1024);
      const late = tx.clone();
      await late.send(3);
      assert.equal(await withTimeout(rx.recv(), 2000, "recv"), 3);
      for (const e of [tx, rx, late, ...clones]) e.close();
    });
  },
});

Deno.test({
  name:
    "a receive flooded with control frames reads a bounded number per wake-up and lets the event loop turn",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const [peer, rx] = rawPair();
      // 40 connections, each with 8 control frames queued (a harmless
      // repeat of a known sender), then a message behind them all.
      const lines: UnixSocket[] = [];
      const theirs: UnixSocket[] = [];
      for (let i = 0; i < 40; i++) {
        const [line, end] = socketpair({ type: "seqpacket" });
        await peer.send(header(FRAME.ADD_PEER, 4), { fds: [end] });
        lines.push(line);
        theirs.push(end);
        if (i % 8 === 7) assert.equal(rx.tryRecv(), undefined);
      }
      assert.equal(rx.tryRecv(), undefined);
      assert.equal(rx.senders, 41);
      for (const line of lines) {
        for (let k = 0; k < 8; k++) {
          await line.send(header(FRAME.ADD_PEER, 4), { fds: [theirs[0]] });
        }
      }
      await lines[39].send(stringFrame("last"));
      // Count event loop turns while the receive runs.
      let turns = 0;
      let counting = true;
      const { port1, port2 } = new MessageChannel();
      port1.onmessage = () => {
        turns++;
        if (counting) port2.postMessage(null);
      };
      port2.postMessage(null);
      let turnsAtValue = -1;
      try {
        const receiving = rx.recv({ spin: 0 }).then((value) => {
          turnsAtValue = turns;
          return value;
        });
        assert.equal(await withTimeout(receiving, 2000, "recv"), "last");
      } finally {
        counting = false;
        port1.close();
        port2.close();
      }
      assert.ok(turnsAtValue >= 1, "the event loop ran during the flood");
      for (const e of [peer, rx, ...lines, ...theirs]) e.close();
    });
  },
});

Deno.test({
  name:
    "a receiver with 200 senders waits through one poller registration, not one per sender",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const [tx, rx] = channel<number>();
      const clones: Sender<number>[] = [];
      for (let i = 0; i < 200; i++) {
        clones.push(tx.clone());
        assert.equal(rx.tryRecv(), undefined);
      }
      assert.equal(rx.senders, 201);
      const before = pollerInterest().length;
      for (let round = 0; round < 3; round++) {
        const waiting = rx.recv({ spin: 0 });
        assert.ok(await stillPending(waiting, 10), "nothing sent yet");
        assert.ok(
          pollerInterest().length <= before + 1,
          `${pollerInterest().length - before} fds registered for one wait`,
        );
        await clones[(round * 67) % 200].send(round);
        assert.equal(await withTimeout(waiting, 2000, "recv"), round);
      }
      for (const e of [tx, rx, ...clones]) e.close();
    });
  },
});

Deno.test({
  name:
    "a Sender or Receiver from a peer must be a unix seqpacket socket: InvalidData names the fd and what it is",
  ...local,
  async fn() {
    await assertNoFdLeak(async () => {
      const lib = libc();
      const kinds: [string, () => number][] = [
        [
          "a directory",
          () => lib.open(cstr("/tmp"), O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0),
        ],
        ["an anonymous inode", () => lib.eventfd(0, 0o2000000)],
        ["an IPv4 socket", () => lib.socket(2, SOCK.STREAM | SOCK.CLOEXEC, 0)],
        ["a unix stream socket", () => {
          const [x, y] = socketpair({ type: "stream" });
          y.close();
          return x._release();
        }],
      ];
      const trees: [string, number[]][] = [
        ["a Sender", [18, 8, 0, 4, 0]],
        ["a Receiver's connection", [18, 9, 1, 0, 4, 0, 0]],
      ];
      for (const [what, tree] of trees) {
        for (const [kind, make] of kinds) {
          const [peer, rx] = rawPair();
          const fd = make();
          assert.ok(fd >= 0, kind);
          await peer.send(frame(FRAME.MESSAGE, 1, [...tree, 0], tree.length), {
            fds: [fd],
          });
          lib.close(fd);
          await assert.rejects(
            withTimeout(rx.recv(), 2000, `${what}: ${kind}`),
            (error: unknown) =>
              error instanceof Deno.errors.InvalidData &&
              error.message.includes(`${what} (fd 0 of the message, `) &&
              error.message.includes(`${kind}`) &&
              error.message.includes("not a unix seqpacket socket"),
            `${what}: ${kind}`,
          );
          peer.close();
          rx.close();
        }
      }
      // A new sender added through a connection, likewise.
      const [peer, rx] = rawPair();
      const [x, y] = socketpair({ type: "stream" });
      await peer.send(header(FRAME.ADD_PEER, 4), { fds: [x] });
      assert.throws(
        () => rx.tryRecv(),
        /a new sender's connection \(fd \d+ here\) is a unix stream socket/,
      );
      for (const e of [peer, rx, x, y]) e.close();
    });
  },
});

Deno.test({
  name:
    "fromFd() refuses a socket that bears a channel end's mark but is not a unix seqpacket socket",
  ...local,
  async fn() {
    await assertNoFdLeak(() => {
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
    });
  },
});

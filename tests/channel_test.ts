// channel() and bytesChannel(): what a channel carries, in one process and
// to a child.

import assert from "node:assert/strict";
import {
  bytesChannel,
  channel,
  ChannelClosedError,
  ChannelServer,
  Mutex,
  OneShotServer,
  pipe,
  ReceiverSet,
  SharedMemory,
  spawn,
} from "../mod.ts";
import { everyKind } from "./fixtures/_channel_values.ts";
import { child, exited, PROCS } from "./_channel_util.ts";
import { test, withTimeout, zombieChildren } from "./_util.ts";

/** Checks that `sending` rejects with the DataCloneError that names `named`. */
async function assertRefused(
  sending: Promise<void>,
  named: string,
): Promise<void> {
  await assert.rejects(
    sending,
    (e: unknown) =>
      e instanceof DOMException && e.name === "DataCloneError" &&
      e.message === `Cannot send on channel: ${named} could not be cloned`,
    named,
  );
}

test(
  "channel() round-trips every structured-clone kind in one process",
  async () => {
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
  },
);

test(
  "channel() refuses values that cannot be cloned, and sends nothing",
  async () => {
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
    await assert.rejects(tx.send(() => 1), {
      message: "Cannot send on channel: a function could not be cloned",
    });
    await assert.rejects(tx.send({ f: function named() {} }), {
      message: "Cannot send on channel: function named could not be cloned",
    });
    const deep: Record<string, unknown> = {};
    let at = deep;
    for (let i = 0; i < 2000; i++) {
      at = (at.next = {}) as Record<string, unknown>;
    }
    await assert.rejects(tx.send(deep), RangeError);
    assert.equal(rx.tryRecv(), undefined);
  },
);

test(
  "channel() refuses platform and built-in objects that would arrive empty (URL, Headers, Request, streams, Blob, SharedArrayBuffer, MessagePort, WebAssembly.Module, Temporal values, ...) with a DataCloneError naming them; class instances still travel as their properties",
  async () => {
    using ch = channel<unknown>();
    const [tx, rx] = ch;
    const ports = new MessageChannel();
    const temporal = (globalThis as {
      Temporal?: { Now: { instant(): object } };
    }).Temporal;
    const others: [unknown, string][] = [
      [
        new SharedArrayBuffer(8),
        "a SharedArrayBuffer (memory shared with another process is a SharedMemory; or send a copy in an ArrayBuffer)",
      ],
      [{ inner: ports.port1 }, "a MessagePort"],
      [
        new WebAssembly.Module(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0])),
        "a WebAssembly.Module (send the bytes it was compiled from)",
      ],
      [new FinalizationRegistry(() => {}), "a FinalizationRegistry"],
    ];
    if (temporal !== undefined) {
      others.push([temporal.Now.instant(), "a Temporal.Instant"]);
    }
    for (const [bad, named] of others) {
      await assertRefused(tx.send(bad), named);
    }
    ports.port1.close();
    ports.port2.close();
    for (
      const [bad, named] of [
        [new URL("http://example.com/"), "a URL"],
        [new URLSearchParams("a=1"), "a URLSearchParams"],
        [new Headers({ a: "1" }), "a Headers"],
        [{ nested: new Request("http://example.com/") }, "a Request"],
        [new ReadableStream(), "a ReadableStream"],
        [new Blob(["x"]), "a Blob (send await blob.bytes() instead)"],
        [new File(["x"], "f"), "a File (send await file.bytes() instead)"],
      ] as const
    ) {
      await assertRefused(tx.send(bad), named);
    }
    assert.equal(rx.tryRecv(), undefined, "nothing was sent");
    class Point {
      constructor(public x: number) {}
      get [Symbol.toStringTag](): string {
        return "Point";
      }
    }
    await tx.send(new Point(3));
    assert.deepEqual(await rx.recv(), { x: 3 });
    // A class of the program's own whose tag names a global class, or an
    // Object.prototype member, is no instance of it: its properties travel.
    for (const tag of ["Map", "constructor", "URL", "Temporal.Instant"]) {
      const tagged = new (class {
        y = 4;
        get [Symbol.toStringTag](): string {
          return tag;
        }
      })();
      await tx.send(tagged);
      assert.deepEqual({ ...(await rx.recv() as object) }, { y: 4 }, tag);
    }
  },
);

test(
  "channel() refuses objects that hold a resource of this process (Symbol.dispose or Symbol.asyncDispose: a Deno.FsFile, a child process, this module's servers, mutexes and receiver sets), iterators, generators and detached buffers, with a DataCloneError naming them",
  async () => {
    using ch = channel<unknown>();
    const [tx, rx] = ch;
    const hint = " (it holds a resource of this process)";
    using file = Deno.openSync(new URL(import.meta.url));
    using server = new ChannelServer();
    using set = new ReceiverSet();
    using mem = SharedMemory.create(4096);
    using mutex = Mutex.create(mem, 0);
    await using child = spawn(Deno.execPath(), {
      args: ["eval", "await new Promise((r) => setTimeout(r, 60_000))"],
      stdin: "null",
    });
    class Lease {
      id = 1;
      [Symbol.dispose](): void {}
    }
    class Transaction {
      id = 2;
      [Symbol.asyncDispose](): Promise<void> {
        return Promise.resolve();
      }
    }
    const detached = new ArrayBuffer(8);
    const view = new Uint16Array(detached);
    structuredClone(detached, { transfer: [detached] });
    for (
      const [bad, named] of [
        [file, `a Deno.FsFile${hint}`],
        [{ nested: [server] }, `a ChannelServer${hint}`],
        [set, `a ReceiverSet${hint}`],
        [mutex, `a Mutex${hint}`],
        [child, `a ChildProcess${hint}`],
        [new Lease(), `a Lease${hint}`],
        [new Transaction(), `a Transaction${hint}`],
        [detached, "a detached ArrayBuffer (transferred away)"],
        [{ view }, "a detached ArrayBuffer (transferred away)"],
        // Iterators and generators inherit Symbol.dispose: named as such.
        [[1].values(), "an Array Iterator"],
        [(function* () {})(), "a Generator"],
        [(async function* () {})(), "an AsyncGenerator"],
        [new AbortController().signal, "an AbortSignal"],
        [new Event("x"), "an Event"],
      ] as const
    ) {
      await assertRefused(tx.send(bad), named);
    }
    assert.equal(rx.tryRecv(), undefined, "nothing was sent");
    child.kill();
  },
  { read: true, run: true },
);

test(
  "a Proxy of a built-in (or an object that only inherits from one) is refused with DataCloneError, and a TypeError of the value's own is not renamed",
  async () => {
    using ch = channel<unknown>();
    const [tx, rx] = ch;
    for (
      const [bad, named] of [
        [new Proxy(new Map([[1, 2]]), {}), "a Map"],
        [{ inner: new Proxy(new Set([1]), {}) }, "a Set"],
        [new Proxy(new Date(0), {}), "a Date"],
        [new Proxy(/a/g, {}), "a RegExp"],
        [new Proxy(new ArrayBuffer(8), {}), "an ArrayBuffer"],
        [new Proxy(new Number(1), {}), "a Number"],
        [new Proxy(new Uint8Array([1, 2]), {}), "a typed array"],
        [new Proxy(new Error("e"), {}), "an Error"],
        [Object.create(Map.prototype), "a Map"],
        // A Proxy whose methods run on its target behaves as a Map, but is
        // refused as structured clone refuses it, before its contents are
        // read.
        [
          new Proxy(
            new Map([[1, {
              get x(): number {
                throw new TypeError("the value's own");
              },
            }]]),
            {
              get(target, key) {
                const value = Reflect.get(target, key, target);
                return typeof value === "function" ? value.bind(target) : value;
              },
            },
          ),
          "a Map",
        ],
      ] as const
    ) {
      await assertRefused(tx.send(bad), `a Proxy or imitation of ${named}`);
    }
    const getterThrows = new Map([[1, {
      get x(): number {
        throw new TypeError("the value's own");
      },
    }]]);
    await assert.rejects(tx.send(getterThrows), {
      name: "TypeError",
      message: "the value's own",
    });
    // Subclasses and errors of the platform are what they claim to be.
    class Table extends Map<number, number> {}
    await tx.send([new Table([[1, 2]]), new DOMException("d", "AbortError")]);
    const [table, error] = rx.tryRecv() as [Map<number, number>, Error];
    assert.deepEqual([...table], [[1, 2]]);
    assert.ok(error instanceof Error);
    assert.equal(error.message, "d");
    assert.equal(rx.tryRecv(), undefined, "nothing was sent");
  },
);

test(
  "typed arrays travel beside the header; a subarray arrives without the rest of its buffer",
  async () => {
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
  },
);

test(
  "a message of many parts arrives whole at and around the 64 iovecs of a packet: small parts packed, large ones sent in place, with and without fds, alone and in a batch",
  async () => {
    using ch = channel<unknown[]>();
    const [tx, rx] = ch;
    // Each array on its own buffer: a part of the frame each, after the
    // header and the head.
    const parts = (n: number, size: (i: number) => number) =>
      Array.from({ length: n }, (_, i) => {
        const part = new Uint8Array(size(i));
        for (let k = 0; k < part.length; k++) part[k] = (i * 31 + k) & 0xff;
        return part;
      });
    const shapes: [string, (i: number) => number][] = [
      ["large", () => 300],
      ["small", () => 8],
      ["alternating", (i) => (i % 2 ? 5 : 400)],
    ];
    for (const [shape, size] of shapes) {
      for (const n of [1, 61, 62, 63, 64, 65, 100]) {
        const what = `${n} ${shape} parts`;
        const value = parts(n, size);
        await tx.send(value);
        assert.deepEqual(await withTimeout(rx.recv(), 5000, what), value, what);
        // With an fd, which never travels in a batch.
        const { reader, writer } = pipe();
        await tx.send([...value, reader], { transfer: [reader] });
        const got = await withTimeout(rx.recv(), 5000, `${what}, fd`);
        (got.pop() as { close(): void }).close();
        writer.close();
        assert.deepEqual(got, value, `${what}, fd`);
        // Three in one turn: a batch.
        const sends = [tx.send(value), tx.send(value), tx.send(value)];
        await Promise.all(sends);
        for (let i = 0; i < 3; i++) {
          assert.deepEqual(
            await withTimeout(rx.recv(), 5000, `${what}, batch`),
            value,
            `${what}, batch ${i}`,
          );
        }
      }
    }
  },
);

test(
  "bytesChannel() carries Uint8Array messages whole, small and large",
  async () => {
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
  },
);

test(
  "send() and recv() take a spin of 0 or more µs and refuse a negative, infinite or non-number one",
  async () => {
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
  },
);

test(
  "values of every kind cross to a child Deno process intact",
  async () => {
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
    assert.deepEqual(zombieChildren(), []);
  },
  PROCS,
);

test(
  "64 MiB messages from a child arrive whole, as a value and as bytes",
  async () => {
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
    assert.deepEqual(zombieChildren(), []);
  },
  PROCS,
);

test(
  "300 messages of 100 KiB from a child at the default capacity all arrive: the sender holds few memfds in flight, and the receiver acknowledges each as it takes it",
  async () => {
    const server = new OneShotServer<Uint8Array>();
    await using proc = child("memfds", server.name, "300");
    const [rx, first] = await server.accept({ timeout: 15_000 });
    const check = (m: Uint8Array, i: number) => {
      assert.equal(m.byteLength, 100 << 10);
      assert.ok(m.every((b) => b === (i & 0xff)), `message ${i}`);
    };
    check(first, 0);
    // The child waits whenever 64 memfds are in flight: without an
    // acknowledgement of each, it would wait for good.
    for (let i = 1; i < 300; i++) {
      check(await rx.recv({ signal: AbortSignal.timeout(10_000) }), i);
    }
    await assert.rejects(
      rx.recv({ signal: AbortSignal.timeout(10_000) }),
      ChannelClosedError,
    );
    rx.close();
    await exited(proc, "memfds child");
    assert.deepEqual(zombieChildren(), []);
  },
  PROCS,
);

test(
  "a sender killed with SIGKILL mid-message leaves whole messages, then ChannelClosedError",
  async () => {
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
    assert.deepEqual(zombieChildren(), []);
  },
  PROCS,
);

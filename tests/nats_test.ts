import assert from "node:assert/strict";
import { connect, headers } from "nats";
import {
  channel,
  ChannelClosedError,
  Mutex,
  pipe,
  SharedMemory,
  socketpair,
} from "../mod.ts";
import {
  natsChannel,
  type NatsReceiver,
  natsReceiver,
  type NatsSender,
  natsSender,
} from "../nats/mod.ts";
import { streamNameFor } from "../nats/_jetstream.ts";
import type { NatsServer } from "../nats/_server.ts";
import {
  HEADER_BYTES,
  ID_BYTES,
  KIND,
  newSenderId,
  setSeq,
  VERSION,
} from "../nats/_wire.ts";
import { mismatch, type TestValue, valueOf } from "./fixtures/_nats_values.ts";
import {
  closeEnds,
  closeQuietly,
  gotIndexes,
  NATS_MISSING,
  NATS_PERMISSIONS,
  natsServer,
  ownProcesses,
  Peer,
  summaryOf,
} from "./_nats_util.ts";
import { stillPending, test, until, withTimeout } from "./_util.ts";

/**
 * A NATS test: FFI for the leak checks and child processes, net, run,
 * files. Afterwards no fd is left open and no child (server or peer) is
 * left running or unreaped.
 */
/**
 * Deletes a JetStream consumer or stream that a receiver is using. The
 * server (2.9) can fail such a delete while the consumer's files are in
 * use ("directory not empty"), having deleted it in part: it is asked
 * again, and "not found" then means done.
 */
async function removing(remove: () => Promise<unknown>): Promise<void> {
  for (let attempt = 1;; attempt++) {
    try {
      await remove();
      return;
    } catch (error) {
      if (/not found/i.test((error as Error).message)) return;
      if (attempt === 5) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/**
 * A sender on `subject` whose first value reached `server`, which is then
 * stopped: the sender holds a second value. Its pause between reconnection
 * attempts is 20 ms (the nats client's timer of it outlives a close).
 */
async function senderHolding(
  server: NatsServer,
  subject: string,
  capacity?: number,
): Promise<NatsSender<number>> {
  const tx = await natsSender<number>(subject, {
    servers: server.url,
    reconnectTimeWait: 20,
    capacity,
  });
  await tx.send(1);
  await tx.flush({ signal: AbortSignal.timeout(10_000) });
  await server.stop();
  await tx.send(2);
  return tx;
}

function natsTest(name: string, fn: () => Promise<void>): void {
  test(
    name,
    async () => {
      await fn();
      // nats-server and the peers: killed and reaped.
      assert.deepEqual(ownProcesses(), [], "child processes left behind");
    },
    NATS_PERMISSIONS,
    { ignore: NATS_MISSING !== undefined },
  );
}

const COUNT = 100_000;

/** `rx.recv()`, given up (and failing the test) after 10 s. */
async function recvWithin<T>(rx: NatsReceiver<T>, what: string): Promise<T> {
  const stop = new AbortController();
  try {
    return await withTimeout(rx.recv({ signal: stop.signal }), 10_000, what);
  } finally {
    stop.abort();
  }
}

natsTest(
  "natsChannel() carries structured values through a real nats-server, core and JetStream",
  async () => {
    await using server = await natsServer(true);
    for (const jetstream of [false, true]) {
      const [tx, rx] = await natsChannel<TestValue>(`values.${jetstream}`, {
        servers: server.url,
        jetstream,
      });
      try {
        for (let i = 0; i < 50; i++) await tx.send(valueOf(i));
        for (let i = 0; i < 50; i++) {
          const value = await recvWithin(rx, `value ${i}`);
          assert.equal(value.i, i);
          assert.equal(mismatch(value), null);
          assert.deepEqual(value, valueOf(i));
        }
        assert.equal(rx.tryRecv(), undefined);
        await tx.send(valueOf(50));
        await tx.flush();
        const got = await withTimeout(
          (async () => {
            for (;;) {
              const v = rx.tryRecv();
              if (v !== undefined) return v;
              await new Promise((r) => setTimeout(r, 1));
            }
          })(),
          10_000,
          "tryRecv() of value 50",
        );
        assert.equal(got.i, 50);
        await closeEnds(10_000, tx);
        await assert.rejects(
          recvWithin(rx, "the end of the stream"),
          ChannelClosedError,
        );
      } finally {
        await closeQuietly(tx, rx);
      }
      await assert.rejects(rx.recv(), Deno.errors.BadResource);
      await assert.rejects(tx.send(valueOf(0)), Deno.errors.BadResource);
    }
  },
);

natsTest(
  "JetStream: a copy of a value that the stream stored twice is dropped, in order, and the rest arrive once",
  async () => {
    await using server = await natsServer(true);
    const subject = "copies";
    const [tx, rx] = await natsChannel<TestValue>(subject, {
      servers: server.url,
      jetstream: true,
    });
    const nc = await connect({ servers: server.url });
    try {
      for (let i = 0; i < 10; i++) await tx.send(valueOf(i));
      await tx.flush();
      // The stream holds values 0..9 at stream sequences 1..10. Store value
      // 3 again under a new message id, as a re-send the stream did not
      // recognise would be (around a server restart), then value 10.
      const jsm = await nc.jetstreamManager();
      const stored = await jsm.streams.getMessage(streamNameFor(subject), {
        seq: 4,
      });
      const copy = await nc.jetstream().publish(subject, stored.data, {
        msgID: "copy-3",
      });
      assert.equal(copy.duplicate, false, "the stream stored the copy");
      await tx.send(valueOf(10));
      await tx.flush();
      const got: number[] = [];
      for (let i = 0; i <= 10; i++) {
        got.push((await recvWithin(rx, `value ${i}`)).i);
      }
      // The copy came before value 10 in the stream: delivered, it would
      // have been the eleventh value taken.
      assert.deepEqual(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      assert.equal(rx.lost, 0);
      // Taken values may leave the stream once acknowledged: its sequence
      // numbers tell that the copy went in between value 9 and value 10.
      const info = await jsm.streams.info(streamNameFor(subject));
      assert.equal(copy.seq, 11);
      assert.ok(info.state.last_seq >= 12, "value 10 came after the copy");
    } finally {
      await nc.close();
      await closeQuietly(tx, rx);
    }
  },
);

natsTest(
  "A value holding an endpoint fails at send() with a DataCloneError that names it",
  async () => {
    await using server = await natsServer();
    const [tx, rx] = await natsChannel<unknown>("endpoints", {
      servers: server.url,
    });
    const { reader, writer } = pipe();
    const [a, b] = socketpair();
    const memory = SharedMemory.create(4096);
    const [ctx, crx] = channel<number>();
    try {
      for (
        const [endpoint, name] of [
          [reader, "PipeReader"],
          [writer, "PipeWriter"],
          [a, "UnixSocket"],
          [memory, "SharedMemory"],
          [ctx, "Sender"],
          [crx, "Receiver"],
        ] as const
      ) {
        await assert.rejects(
          tx.send({ deep: [1, { endpoint }] }),
          (error: unknown) => {
            assert.ok(error instanceof DOMException);
            assert.equal(error.name, "DataCloneError");
            assert.match(error.message, new RegExp(`a ${name} could not`));
            assert.match(error.message, /cannot cross machines/);
            return true;
          },
        );
      }
      // A plain object with a rawFd field is data, and the sender still works.
      await tx.send({ rawFd: 3 });
      assert.deepEqual(await recvWithin(rx, "the plain object"), { rawFd: 3 });
      // What the codec refuses is said as the NATS channel's refusal.
      await assert.rejects(
        tx.send({ f: () => 1 }),
        (error: unknown) =>
          error instanceof DOMException && error.name === "DataCloneError" &&
          error.message ===
            "Cannot send on NATS channel: function f could not be cloned",
      );
      using mutex = Mutex.create(memory, 0);
      await assert.rejects(
        tx.send([mutex]),
        (error: unknown) =>
          error instanceof DOMException && error.name === "DataCloneError" &&
          error.message ===
            "Cannot send on NATS channel: a Mutex (it holds a resource of this process) could not be cloned",
      );
      let deep: unknown[] = [];
      for (let i = 0; i < 1100; i++) deep = [deep];
      await assert.rejects(
        tx.send(deep),
        (error: unknown) =>
          error instanceof RangeError &&
          /^Cannot send on NATS channel: the value nests deeper than 1000 levels/
            .test(error.message),
      );
    } finally {
      reader.close();
      writer.close();
      a.close();
      b.close();
      memory.close();
      ctx.close();
      crx.close();
      await closeQuietly(tx, rx);
    }
  },
);

natsTest(
  "A NATS receiver ends once every sender it heard from is closed, clones included",
  async () => {
    await using server = await natsServer();
    const [tx, rx] = await natsChannel<string>("clones", {
      servers: server.url,
    });
    const tx2 = tx.clone();
    try {
      await tx.send("a");
      await tx2.send("b");
      await closeEnds(10_000, tx);
      assert.equal(await recvWithin(rx, "a"), "a");
      assert.equal(await recvWithin(rx, "b"), "b");
      // One sender is still open: the stream goes on.
      const stop = new AbortController();
      const waiting = rx.recv({ signal: stop.signal });
      assert.ok(await stillPending(waiting, 50));
      stop.abort();
      await assert.rejects(waiting);
      await tx2.send("c");
      await closeEnds(10_000, tx2);
      const rest: string[] = [];
      await withTimeout(
        (async () => {
          for await (const s of rx) rest.push(s);
        })(),
        10_000,
        "the end of the stream",
      );
      assert.deepEqual(rest, ["c"]);
      assert.equal(rx.senders, 0);
    } finally {
      await closeQuietly(tx, tx2, rx);
    }
  },
);

natsTest(
  "A malformed message or one beyond the limits makes recv() throw InvalidData and the receiver goes on",
  async () => {
    await using server = await natsServer();
    const rx = await natsReceiver<number>("garbage", { servers: server.url });
    const tx = await natsSender<number>("garbage", { servers: server.url });
    const raw = await connect({ servers: server.url });
    try {
      raw.publish("garbage", new Uint8Array([9, 9, 9]));
      raw.publish(
        "garbage",
        new Uint8Array([KIND.VALUE, VERSION, 0, 0, 0, 0, 0, 0, 0, 0]),
      );
      await raw.flush();
      await tx.send(7);
      await assert.rejects(recvWithin(rx, "garbage"), Deno.errors.InvalidData);
      await assert.rejects(recvWithin(rx, "cut"), Deno.errors.InvalidData);
      assert.equal(await recvWithin(rx, "7"), 7);
      // A well-formed value beyond the receiver's limits is refused too.
      rx.limits = { maxElements: 1000 };
      await tx.send(new Array(5000).fill(1) as unknown as number);
      await tx.send(8);
      await assert.rejects(
        recvWithin(rx, "too many elements"),
        (error: unknown) =>
          error instanceof Deno.errors.InvalidData &&
          /limits\.maxElements/.test(error.message),
      );
      assert.equal(await recvWithin(rx, "8"), 8);
      // The refused value was the sender's next one: taken, not lost.
      assert.equal(rx.lost, 0);
    } finally {
      await raw.close();
      await closeQuietly(tx, rx);
    }
  },
);

natsTest(
  "A message that does not decode changes no sender's state: forged under a real sender's id it moves no sequence, under new ids it adds no sender",
  async () => {
    await using server = await natsServer();
    const rx = await natsReceiver<number>("forged", { servers: server.url });
    const tx = await natsSender<number>("forged", { servers: server.url });
    const raw = await connect({ servers: server.url });
    try {
      const sub = raw.subscribe("forged", { max: 1 });
      await raw.flush();
      await tx.send(0);
      assert.equal(await recvWithin(rx, "0"), 0);
      const seen = await withTimeout(
        sub[Symbol.asyncIterator]().next(),
        10_000,
        "the sender's message, seen by a third client",
      );
      const realId = seen.value!.data.slice(2, 2 + ID_BYTES);
      /** A value message of `id` numbered `seq` whose value does not decode. */
      const forged = (id: Uint8Array, seq: number) => {
        const message = new Uint8Array(HEADER_BYTES + 3);
        message.set([KIND.VALUE, VERSION]);
        message.set(id, 2);
        setSeq(message, seq);
        message.set([9, 9, 9], HEADER_BYTES);
        return message;
      };
      raw.publish("forged", forged(realId, 2 ** 52));
      await raw.flush();
      await assert.rejects(recvWithin(rx, "forged"), Deno.errors.InvalidData);
      // More new ids than a receiver tracks senders.
      const flood = 4100;
      for (let i = 0; i < flood; i++) {
        raw.publish("forged", forged(newSenderId(), 1));
      }
      await raw.flush();
      for (let i = 0; i < flood; i++) {
        await assert.rejects(
          recvWithin(rx, `flood ${i}`),
          Deno.errors.InvalidData,
        );
      }
      assert.equal(rx.senders, 1);
      for (let i = 1; i <= 3; i++) await tx.send(i);
      for (let i = 1; i <= 3; i++) {
        assert.equal(await recvWithin(rx, `${i}`), i);
      }
      assert.equal(rx.lost, 0);
      // A sender that starts now is still heard.
      const late = await natsSender<number>("forged", { servers: server.url });
      await late.send(42);
      assert.equal(await recvWithin(rx, "a new sender's value"), 42);
      assert.equal(rx.senders, 2);
      await closeQuietly(late);
    } finally {
      await raw.close();
      await closeQuietly(tx, rx);
    }
  },
);

natsTest(
  "NATS ends refuse bad subjects, capacities, values above max_payload, and a server that is not there",
  async () => {
    await using server = await natsServer();
    await assert.rejects(
      natsSender("a", { servers: "127.0.0.1:1" }),
      Deno.errors.ConnectionRefused,
    );
    await assert.rejects(natsSender("a.*", { servers: server.url }), TypeError);
    await assert.rejects(
      natsReceiver("a b", { servers: server.url }),
      TypeError,
    );
    await assert.rejects(natsSender("", { servers: server.url }), TypeError);
    await assert.rejects(
      natsSender("a", { servers: server.url, capacity: 0 }),
      RangeError,
    );
    await assert.rejects(
      natsReceiver("a", { servers: server.url, limits: { maxDepth: 0 } }),
      RangeError,
    );
    const tx = await natsSender<Uint8Array>("big", { servers: server.url });
    try {
      await assert.rejects(tx.send(new Uint8Array(2 << 20)), RangeError);
      await tx.send(new Uint8Array(1000));
    } finally {
      await closeQuietly(tx);
    }
  },
);

natsTest(
  "a value held while the server is down that the server, back with a smaller max_payload, refuses fails the sender; nothing escapes the connection's event handlers",
  async () => {
    await using server = await natsServer();
    const tx = await natsSender<Uint8Array>("shrunk", { servers: server.url });
    const config = await Deno.makeTempFile({ suffix: ".conf" });
    try {
      await tx.send(new Uint8Array(10));
      await tx.flush({ signal: AbortSignal.timeout(10_000) });
      await server.stop();
      // Accepted and held: the size is checked against the limit known.
      await tx.send(new Uint8Array(200_000));
      await Deno.writeTextFile(config, "max_payload: 65536\n");
      await server.start(["-c", config]);
      await assert.rejects(
        tx.flush({ signal: AbortSignal.timeout(20_000) }),
        (error: Error) =>
          /value 2 could not be published, and is lost/.test(error.message),
      );
      await assert.rejects(
        tx.send(new Uint8Array(1)),
        /could not be published/,
      );
    } finally {
      await closeQuietly(tx);
      await Deno.remove(config);
    }
  },
);

natsTest(
  "close({ signal }) of a sender while the server is down gives up waiting when the signal aborts, lets the connection go and rejects with its reason",
  async () => {
    await using server = await natsServer();
    const tx = await senderHolding(server, "down", 1);
    // With a capacity of 1, this one waits for room the server will not
    // make: giving the close up rejects it too.
    const waiting = tx.send(3);
    const closing = tx.close({ signal: AbortSignal.timeout(300) });
    await assert.rejects(
      withTimeout(closing, 10_000, "the close given up"),
      (error: Error) => error.name === "TimeoutError",
    );
    await assert.rejects(
      withTimeout(waiting, 10_000, "the send waiting for room"),
      Deno.errors.BadResource,
    );
    assert.equal(tx.closed, true);
    await assert.rejects(tx.send(4), Deno.errors.BadResource);
    // The nats client's pause between reconnection attempts (20 ms here)
    // outlives its close(): let it end before the sanitizer looks.
    await new Promise((resolve) => setTimeout(resolve, 100));
  },
);

natsTest(
  "a receiver that has heard from 4,096 senders that never closed forgets the one silent longest (by when it was last heard): a new sender's values arrive, one heard since is kept, and the receiver does not end while it is open",
  async () => {
    await using server = await natsServer();
    const [tx, rx] = await natsChannel<number>("crowd", {
      servers: server.url,
    });
    const active = tx.clone();
    const silent = tx.clone();
    const clones = Array.from({ length: 4095 }, () => tx.clone());
    try {
      // `active` is heard first, then `silent`, then `active` again: the
      // one silent longest is `silent`.
      await active.send(-10);
      await silent.send(-11);
      await active.send(-12);
      for (const expected of [-10, -11, -12]) {
        assert.equal(await recvWithin(rx, `value ${expected}`), expected);
      }
      // Each clone sends one value and not yet its end, as producers that
      // died would: the table fills up, and `silent` is forgotten.
      for (let i = 0; i < clones.length; i++) await clones[i].send(i);
      for (let i = 0; i < clones.length; i++) {
        assert.equal(await recvWithin(rx, `value ${i}`), i);
      }
      // Every sender but `active` closes (the clones first): the receiver,
      // which still knows `active` is open, goes on. Had it forgotten
      // `active`, it would end here.
      await closeEnds(20_000, ...clones, tx);
      await closeEnds(20_000, silent);
      await active.send(-2);
      assert.equal(await recvWithin(rx, "the active sender's"), -2);
    } finally {
      await closeQuietly(active, silent, ...clones, tx, rx);
    }
  },
);

natsTest(
  "JetStream: a stored message with a status line in its headers and no body (a publisher can forge one) fails recv() with InvalidData instead of passing for the server's status; the values after it arrive",
  async () => {
    await using server = await natsServer(true);
    const [tx, rx] = await natsChannel<number>("forged", {
      servers: server.url,
      jetstream: true,
      endWithSenders: false,
    });
    const nc = await connect({ servers: server.url });
    try {
      const js = nc.jetstream();
      await js.publish("forged", new Uint8Array(0), {
        headers: headers(100, "Forged"),
      });
      await tx.send(1);
      await assert.rejects(
        withTimeout(rx.recv(), 10_000, "the forged message"),
        Deno.errors.InvalidData,
      );
      assert.equal(await recvWithin(rx, "the value after it"), 1);
    } finally {
      await nc.close();
      await closeQuietly(tx, rx);
    }
  },
);

natsTest(
  "JetStream: a receiver whose durable consumer is deleted under it makes it again and goes on; one whose stream is deleted fails recv() naming the consumer and stream",
  async () => {
    await using server = await natsServer(true);
    const [tx, rx] = await natsChannel<number>("deleted", {
      servers: server.url,
      jetstream: { durable: "d" },
      endWithSenders: false,
    });
    const nc = await connect({ servers: server.url });
    try {
      await tx.send(1);
      assert.equal(await recvWithin(rx, "the first"), 1);
      const jsm = await nc.jetstreamManager();
      const stream = streamNameFor("deleted");
      const waiting = rx.recv();
      waiting.catch(() => {});
      await removing(() => jsm.consumers.delete(stream, "d"));
      await tx.send(2);
      assert.equal(await withTimeout(waiting, 20_000, "after the delete"), 2);
      await removing(() => jsm.streams.delete(stream));
      await assert.rejects(
        withTimeout(rx.recv(), 20_000, "after the stream's delete"),
        (error: Error) =>
          error.message.includes(`consumer d of stream ${stream}`),
      );
    } finally {
      await nc.close();
      await closeQuietly(tx, rx);
    }
  },
);

natsTest(
  "close({ signal }) given up fails only the call whose signal aborted: a plain close() made with it resolves, and later ones too",
  async () => {
    await using server = await natsServer();
    const tx = await senderHolding(server, "down2");
    const plain = tx.close();
    const bounded = tx.close({ signal: AbortSignal.timeout(300) });
    await assert.rejects(
      withTimeout(bounded, 10_000, "the bounded close"),
      (error: Error) => error.name === "TimeoutError",
    );
    await withTimeout(plain, 10_000, "the plain close");
    await withTimeout(tx.close(), 10_000, "a later close");
    await withTimeout(tx[Symbol.asyncDispose](), 10_000, "the dispose");
    await new Promise((resolve) => setTimeout(resolve, 100));
  },
);

natsTest(
  "core NATS: a value into an empty receiver is taken whatever maxPendingBytes says; the bound is on what waits behind it",
  async () => {
    await using server = await natsServer();
    const [tx, rx] = await natsChannel<Uint8Array>("small", {
      servers: server.url,
      maxPendingBytes: 1,
    });
    try {
      await tx.send(new Uint8Array(800));
      assert.equal((await recvWithin(rx, "the value")).byteLength, 800);
    } finally {
      await closeQuietly(tx, rx);
    }
  },
);

natsTest(
  "JetStream: a value that fits max_payload but not with the sender's headers is refused at send() with a RangeError; the sender and its connection go on",
  async () => {
    await using server = await natsServer(true);
    const [tx, rx] = await natsChannel<Uint8Array>("nearly", {
      servers: server.url,
      jetstream: true,
    });
    try {
      await tx.send(new Uint8Array(1));
      const near = 1024 * 1024 - 40;
      await assert.rejects(
        tx.send(new Uint8Array(near)),
        (error: Error) =>
          error instanceof RangeError && /and its headers/.test(error.message),
      );
      await tx.send(new Uint8Array(2));
      await tx.flush({ signal: AbortSignal.timeout(10_000) });
      assert.equal((await recvWithin(rx, "the first")).byteLength, 1);
      assert.equal((await recvWithin(rx, "the last")).byteLength, 2);
    } finally {
      await closeQuietly(tx, rx);
    }
  },
);

natsTest(
  "arguments checked before connecting: options that are no object, a durable name NATS refuses, maxPendingBytes that is no positive integer",
  async () => {
    await assert.rejects(
      natsSender("x", null as never),
      /Cannot open NATS sender: expected an options object, got null/,
    );
    await assert.rejects(
      natsReceiver("x", "127.0.0.1:4222" as never),
      /Cannot open NATS receiver: expected an options object, got string/,
    );
    await assert.rejects(
      natsSender("x", { servers: 123 as never }),
      /Cannot open NATS sender: servers must be a string or an array of strings, got number/,
    );
    for (const durable of ["a.b", "", "a b", "a*", "a/b", "a\\b"]) {
      await assert.rejects(
        natsReceiver("x", { jetstream: { durable } }),
        (error: Error) =>
          error instanceof TypeError &&
          error.message.includes("jetstream.durable must be a name"),
        durable,
      );
    }
    for (const bad of [-1, 0, NaN, 1.5, "abc"]) {
      await assert.rejects(
        natsChannel("x", { maxPendingBytes: bad as number }),
        (error: Error) =>
          error instanceof RangeError &&
          error.message.includes("maxPendingBytes must be a positive integer"),
        String(bad),
      );
    }
  },
);

natsTest(
  "core NATS: empty values count against maxPendingBytes (each value costs its bytes and 256 more)",
  async () => {
    await using server = await natsServer();
    const rx = await natsReceiver<unknown>("empties", {
      servers: server.url,
      maxPendingBytes: 1024,
    });
    const nc = await connect({ servers: server.url });
    try {
      for (let i = 0; i < 100; i++) nc.publish("empties");
      await nc.flush();
      await until(() => rx.dropped + rx.pending >= 100, 10_000, "the empties");
      assert.ok(rx.pending <= 4, `${rx.pending} held`);
      assert.equal(rx.dropped, 100 - rx.pending);
    } finally {
      await nc.close();
      await closeQuietly(rx);
    }
  },
);

natsTest(
  "Core NATS: values sent while the server is down wait in the sender and go out once it is back",
  async () => {
    await using server = await natsServer();
    const [tx, rx] = await natsChannel<number>("outage", {
      servers: server.url,
    });
    try {
      await tx.send(0);
      assert.equal(await recvWithin(rx, "0"), 0);
      await server.stop();
      // Values are held, up to `capacity`; then a send waits.
      let last = 1;
      let sent = tx.send(last);
      while (!(await stillPending(sent, 0)) && last < 10_000) {
        sent = tx.send(++last);
      }
      assert.ok(await stillPending(sent, 200), "a send waits");
      await server.start();
      await withTimeout(sent, 10_000, "the send after the restart");
      await tx.send(-1);
      const got: number[] = [];
      for (let v = 0; v !== -1;) {
        v = await recvWithin(rx, "the values after the restart");
        got.push(v);
      }
      got.pop();
      // In order; the held ones all arrived; the ones published into the
      // dropped connection are lost, and counted.
      assert.deepEqual(got, [...got].sort((a, b) => a - b));
      assert.equal(got.at(-1), last);
      for (let v = last - tx.capacity; v <= last; v++) {
        assert.ok(got.includes(v), `value ${v} was held and arrives`);
      }
      assert.equal(rx.lost, last - got.length);
    } finally {
      await closeQuietly(tx, rx);
    }
  },
);

natsTest(
  "Two processes exchange 100,000 structured values over core NATS, and the stream resumes after the server restarts",
  async () => {
    await using server = await natsServer();
    const url = server.url;
    await using receiver = new Peer(["recv", url, "bulk", "0", "-"]);
    await receiver.waitFor((l) => l === "ready", "the receiver");
    await using sender = new Peer(
      ["send", url, "bulk", String(COUNT), "0", String(COUNT / 2)],
      true,
    );
    await sender.waitFor((l) => l === "paused", "the first half");
    await receiver.waitFor(
      (l) => l === `got ${COUNT / 2 - 1}`,
      "the first half at the receiver",
    );
    await server.stop();
    await sender.waitFor((l) => l === "disconnected", "the sender's drop");
    await receiver.waitFor((l) => l === "disconnected", "the receiver's drop");
    await server.start();
    await sender.waitFor((l) => l === "reconnected", "the sender's return");
    await receiver.waitFor((l) => l === "reconnected", "the receiver's return");
    await sender.say("go");
    const summary = await summaryOf(receiver);
    await sender.success("the sender");
    await receiver.success("the receiver");
    assert.deepEqual(summary, {
      count: COUNT,
      last: COUNT - 1,
      lost: 0,
      outOfOrder: 0,
      bad: 0,
    });
  },
);

natsTest(
  "JetStream: two processes exchange 100,000 structured values and none is lost when the server restarts mid-stream",
  async () => {
    await using server = await natsServer(true);
    const url = server.url;
    await using receiver = new Peer(["recv", url, "durable", "1", "r"]);
    await receiver.waitFor((l) => l === "ready", "the receiver");
    await using sender = new Peer(["send", url, "durable", String(COUNT), "1"]);
    await sender.waitFor((l) => l === "sent 30000", "30,000 values sent");
    await server.stop();
    await server.start();
    const summary = await summaryOf(receiver, 60_000);
    await sender.success("the sender");
    await receiver.success("the receiver");
    // The restart came mid-stream for both.
    assert.ok(sender.lines.includes("disconnected"), sender.tail());
    assert.ok(receiver.lines.includes("disconnected"), receiver.tail());
    assert.ok(
      sender.lines.indexOf("disconnected") <
        sender.lines.indexOf(`sent ${COUNT}`),
      "the sender was still sending",
    );
    // Every value once, in order.
    assert.deepEqual(summary, {
      count: COUNT,
      last: COUNT - 1,
      lost: 0,
      outOfOrder: 0,
      bad: 0,
    });
  },
);

natsTest(
  "JetStream: a consumer that is killed and comes back receives what it missed",
  async () => {
    const count = 20_000;
    await using server = await natsServer(true);
    const url = server.url;
    await using sender = new Peer(["send", url, "jobs", String(count), "1"]);
    await using first = new Peer(["recv", url, "jobs", "1", "worker", "each"]);
    await first.waitFor((l) => l === "got 4999", "5,000 values at the first");
    first.child.kill("SIGKILL");
    // Every line it printed is read before its values are counted.
    const status = await first.exited("the killed consumer");
    assert.equal(status.signal, "SIGKILL");
    const before = gotIndexes(first);
    await using second = new Peer(["recv", url, "jobs", "1", "worker", "each"]);
    const summary = await summaryOf(second);
    await sender.success("the sender");
    await second.success("the second consumer");
    const after = gotIndexes(second);
    assert.equal(summary.bad, 0);
    assert.equal(summary.outOfOrder, 0);
    // Together they saw every value; the second starts where the first was
    // (a value being handled when it died may come again).
    const seen = new Set([...before, ...after]);
    assert.equal(seen.size, count);
    const overlap = before.length + after.length - count;
    // Acks still on their way when the kill came: at most what one
    // receiver can hold unacknowledged.
    assert.ok(overlap >= 0 && overlap <= 256, `overlap ${overlap}`);
    assert.ok(
      after[0] <= before.at(-1)! + 1,
      `${after[0]} after ${before.at(-1)}`,
    );
    assert.equal(after.at(-1), count - 1);
    // The durable consumer took everything: the work queue is empty.
    const nc = await connect({ servers: url });
    try {
      const jsm = await nc.jetstreamManager();
      const info = await jsm.streams.info(streamNameFor("jobs"));
      assert.equal(info.state.messages, 0);
    } finally {
      await nc.close();
    }
  },
);

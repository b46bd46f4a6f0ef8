import assert from "node:assert/strict";
import { connect, fromFd, listen, pipe, socketpair } from "../mod.ts";
import { dupCloexec } from "../ffi/fd.ts";
import { SharedMemory, shmQueue } from "../shm/mod.ts";
import { bytesChannel, channel, ReceiverSet } from "../channel.ts";
import { ChannelServer, OneShotServer } from "../oneshot.ts";
import {
  Barrier,
  Event,
  Mutex,
  Semaphore,
  ShmReceiverSet,
} from "../shm/mod.ts";
import { natsChannel } from "../nats/mod.ts";
import { assertNoFdLeak, test, withTimeout } from "./_util.ts";
import {
  NATS_MISSING,
  NATS_PERMISSIONS,
  natsServer,
  ownProcesses,
} from "./_nats_util.ts";

const plain = (value: unknown) => Deno.inspect(value, { colors: false });

test("pipe ends print their kind, fd and state, and ref: false once unref'd", () => {
  const p = pipe();
  const { reader, writer } = p;
  assert.equal(
    plain(reader),
    `PipeReader { fd: ${reader.rawFd}, state: "open" }`,
  );
  writer.unref();
  assert.equal(
    plain(writer),
    `PipeWriter { fd: ${writer.rawFd}, state: "open", ref: false }`,
  );
  p[Symbol.dispose]();
  assert.equal(plain(reader), `PipeReader { state: "closed" }`);
  assert.equal(plain({ w: writer }), `{ w: PipeWriter { state: "closed" } }`);
});

test("SharedMemory prints its fd, state, size and name", () => {
  const memory = SharedMemory.create(4096);
  assert.equal(
    plain(memory),
    `SharedMemory { fd: ${memory.rawFd}, state: "open", size: 4096 }`,
  );
  memory.close();
  assert.equal(plain(memory), `SharedMemory { state: "closed", size: 4096 }`);
  const name = `conduit-inspect-${crypto.randomUUID()}`;
  const named = SharedMemory.create(8192, { name });
  try {
    assert.match(plain(named), new RegExp(`name: "${name}"`));
  } finally {
    named.unlink();
    named.close();
  }
}, { read: ["/dev/shm"], write: ["/dev/shm"] });

test("shm queue ends print their carrier fd, state, ring size and largest message, and a receiver whose sender is gone says so", async () => {
  const [tx, rx] = shmQueue({ bytes: 1 << 16 });
  try {
    assert.match(
      Deno.inspect(tx, { colors: false, breakLength: Infinity }),
      new RegExp(
        `^ShmSender \\{ fd: ${tx.rawFd}, state: "open", ringBytes: \\d+, maxMessageBytes: ${tx.maxMessageBytes} \\}$`,
      ),
    );
    assert.match(plain(rx), /^ShmReceiver \{ fd: \d+, state: "open"/);
  } finally {
    tx.close();
  }
  assert.match(plain(tx), /^ShmSender \{ state: "closed"/);
  assert.doesNotMatch(plain(rx), /peer/, "not known to be gone until seen");
  assert.equal(await rx.recv(), null, "the end: drained, sender gone");
  assert.match(
    Deno.inspect(rx, { colors: false, breakLength: Infinity }),
    /^ShmReceiver \{ fd: \d+, state: "open", .*peer: "gone" \}$/,
  );
  rx.close();
  assert.match(
    Deno.inspect(rx, { colors: false, breakLength: Infinity }),
    /^ShmReceiver \{ state: "closed"/,
  );
});

test("socket pairs print their type, fd and state", () => {
  const [a, b] = socketpair({ type: "seqpacket" });
  b.unref();
  assert.equal(
    plain(a),
    `UnixSocket { type: "seqpacket", fd: ${a.rawFd}, state: "open" }`,
  );
  assert.equal(
    plain(b),
    `UnixSocket { type: "seqpacket", fd: ${b.rawFd}, state: "open", ref: false }`,
  );
  a.close();
  b.close();
  assert.equal(plain(a), `UnixSocket { type: "seqpacket", state: "closed" }`);
});

test(
  "listeners and their connections print the name they listen or connected on",
  async () => {
    // One line, however long the path.
    const wide = (value: unknown) =>
      Deno.inspect(value, { colors: false, breakLength: Infinity });
    const dir = Deno.makeTempDirSync({ prefix: "conduit-inspect-" });
    try {
      const path = `${dir}/s.sock`;
      using server = listen({ path });
      using client = await connect({ path });
      using conn = await server.accept();
      assert.equal(
        wide(server),
        `UnixListener { type: "stream", fd: ${server.rawFd}, state: "open", path: "${path}" }`,
      );
      assert.equal(
        wide(client),
        `UnixSocket { type: "stream", fd: ${client.rawFd}, state: "open", path: "${path}" }`,
      );
      assert.equal(
        wide(conn),
        `UnixSocket { type: "stream", fd: ${conn.rawFd}, state: "open", path: "${path}" }`,
      );
      // An accepted socket adopted from its fd still knows its server's name.
      using adopted = fromFd(dupCloexec(conn.rawFd), { allowCloexec: true });
      assert.equal(
        wide(adopted),
        `UnixSocket { type: "stream", fd: ${adopted.rawFd}, state: "open", path: "${path}" }`,
      );
      const name = `conduit-inspect-${crypto.randomUUID()}`;
      using abstract = listen({ abstract: name, type: "seqpacket" });
      using other = await connect({ abstract: name, type: "seqpacket" });
      using accepted = await abstract.accept();
      for (const end of [abstract, other, accepted]) {
        assert.match(
          wide(end),
          new RegExp(`state: "open", abstract: "${name}" }$`),
        );
      }
      server.close();
      assert.equal(
        wide(server),
        `UnixListener { type: "stream", state: "closed", path: "${path}" }`,
      );
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
  { read: true, write: true },
);

// Channels, servers, the primitives in shared memory and NATS ends.

/** One line, whatever its length, so long names compare exactly. */
const line = (value: unknown) =>
  Deno.inspect(value, { colors: false, breakLength: Infinity });

test("channel ends print their fd, state, mode, capacity and senders", async () => {
  const [tx, rx] = channel<number>({ capacity: 4 });
  const [btx, brx] = bytesChannel();
  try {
    assert.equal(
      plain(tx),
      `Sender { fd: ${tx.rawFd}, state: "open", mode: "values", capacity: 4 }`,
    );
    assert.equal(
      plain(btx),
      `Sender { fd: ${btx.rawFd}, state: "open", mode: "bytes", capacity: 1024 }`,
    );
    assert.equal(
      plain(rx),
      `Receiver { fd: ${rx.rawFd}, state: "open", senders: 1 }`,
    );
    using clone = tx.clone();
    await clone.send(1);
    assert.equal(
      await withTimeout(rx.recv(), 5000, "the clone's message"),
      1,
    );
    assert.equal(
      plain(rx),
      `Receiver { fd: ${rx.rawFd}, state: "open", senders: 2 }`,
    );
    tx.unref();
    assert.equal(
      line(tx),
      `Sender { fd: ${tx.rawFd}, state: "open", ref: false, mode: "values", capacity: 4 }`,
    );
  } finally {
    tx.close();
    rx.close();
    btx.close();
    brx.close();
  }
  assert.equal(
    plain(tx),
    `Sender { state: "closed", mode: "values", capacity: 4 }`,
  );
  assert.equal(plain(rx), `Receiver { state: "closed" }`);
});

test("ReceiverSet prints how many receivers it holds", () => {
  using set = new ReceiverSet<number>();
  assert.equal(plain(set), "ReceiverSet { size: 0 }");
  const [tx, rx] = channel<number>();
  set.add(rx);
  assert.equal(plain(set), "ReceiverSet { size: 1 }");
  tx.close();
  set.close();
  assert.equal(plain(set), "ReceiverSet { size: 0 }");
});

test("servers print their listening fd, state and name, and a pending accept", async () => {
  const one = new OneShotServer<string>();
  const fd = String.raw`\d+`;
  const name = one.name.replaceAll("/", "\\/");
  assert.match(
    line(one),
    new RegExp(
      `^OneShotServer \\{ fd: ${fd}, state: "open", name: "${name}" \\}$`,
    ),
  );
  const stop = new AbortController();
  const accepting = one.accept({ signal: stop.signal });
  assert.match(
    line(one),
    new RegExp(
      `^OneShotServer \\{ fd: ${fd}, state: "open", name: "${name}", accepting: true \\}$`,
    ),
  );
  stop.abort(new Error("stopped"));
  await assert.rejects(accepting, /stopped/);
  assert.equal(
    line(one),
    `OneShotServer { state: "closed", name: "${one.name}" }`,
  );

  const many = new ChannelServer<string>();
  try {
    many.unref();
    assert.match(
      line(many),
      new RegExp(
        `^ChannelServer \\{ fd: ${fd}, state: "open", ref: false, name: "${
          many.name.replaceAll("/", "\\/")
        }" \\}$`,
      ),
    );
  } finally {
    many.close();
  }
  assert.equal(
    line(many),
    `ChannelServer { state: "closed", name: "${many.name}" }`,
  );
});

test("primitives in shared memory print their state without waiting", async () => {
  const mem = SharedMemory.create(4096);
  const mutex = Mutex.create(mem, 0);
  const slots = Semaphore.create(mem, 16, { value: 2, max: 4 });
  const go = Event.create(mem, 32);
  const barrier = Barrier.create(mem, 48, 2);
  try {
    assert.equal(
      plain(mutex),
      `Mutex { state: "open", offset: 0, locked: false }`,
    );
    const guard = mutex.tryLock();
    assert.ok(guard !== undefined);
    assert.equal(
      plain(mutex),
      `Mutex { state: "open", offset: 0, locked: true, holder: ${Deno.pid} }`,
    );
    assert.equal(plain(guard), "MutexGuard { held: true, ownerDied: false }");
    guard.unlock();
    assert.equal(plain(guard), "MutexGuard { held: false, ownerDied: false }");

    assert.equal(
      plain(slots),
      `Semaphore { state: "open", offset: 16, value: 2, max: 4 }`,
    );
    assert.ok(slots.tryAcquire());
    assert.match(plain(slots), /value: 1, max: 4 \}$/);

    assert.equal(plain(go), `Event { state: "open", offset: 32, set: false }`);
    go.set();
    assert.equal(plain(go), `Event { state: "open", offset: 32, set: true }`);

    const signal = AbortSignal.timeout(5000);
    const first = barrier.wait({ signal });
    assert.equal(
      plain(barrier),
      `Barrier { state: "open", offset: 48, parties: 2, arrived: 1 }`,
    );
    await Promise.all([first, barrier.wait({ signal })]);
    assert.match(plain(barrier), /parties: 2, arrived: 0 \}$/);

    slots.close();
    assert.equal(plain(slots), `Semaphore { state: "closed" }`);
  } finally {
    mem.close();
  }
  for (const [primitive, kind] of [[mutex, "Mutex"], [go, "Event"]] as const) {
    assert.equal(plain(primitive), `${kind} { state: "closed" }`);
  }
  assert.equal(plain(barrier), `Barrier { state: "closed" }`);
});

test("ShmReceiverSet prints its state and size", () => {
  const set = new ShmReceiverSet();
  const [tx, rx] = shmQueue({ bytes: 4096 });
  try {
    set.add(rx);
    assert.equal(plain(set), `ShmReceiverSet { state: "open", size: 1 }`);
  } finally {
    tx.close();
    set.close();
  }
  assert.equal(plain(set), `ShmReceiverSet { state: "closed", size: 0 }`);
});

test(
  "NATS ends print their subject, state and connection",
  async () => {
    await assertNoFdLeak(async () => {
      await using server = await natsServer();
      const [tx, rx] = await natsChannel<number>("inspect.me", {
        servers: server.url,
      });
      try {
        assert.equal(
          line(tx),
          `NatsSender { subject: "inspect.me", state: "open", connection: "up", jetstream: false, capacity: 256 }`,
        );
        await tx.send(1);
        assert.equal(await withTimeout(rx.recv(), 10_000, "the value"), 1);
        assert.equal(
          line(rx),
          `NatsReceiver { subject: "inspect.me", state: "open", connection: "up", jetstream: false, senders: 1, pending: 0 }`,
        );
      } finally {
        await tx.close();
        await rx.close();
      }
      assert.equal(
        plain(tx),
        `NatsSender { subject: "inspect.me", state: "closed" }`,
      );
      assert.equal(
        plain(rx),
        `NatsReceiver { subject: "inspect.me", state: "closed" }`,
      );
    }, "NATS inspect");
    assert.deepEqual(ownProcesses(), [], "child processes left behind");
  },
  { ffi: true, ...NATS_PERMISSIONS },
  { ignore: NATS_MISSING !== undefined },
);

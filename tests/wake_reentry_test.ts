// Receives woken from inside the poller's dispatch: many at once, closed or
// aborted around the wake-up, failing one at a time, fed by hasty peers.
import assert from "node:assert/strict";
import {
  channel,
  ChannelClosedError,
  OneShotServer,
  socketpair,
  spawn,
  type UnixSocket,
} from "../mod.ts";
import {
  assertFdsUnchanged,
  DENO,
  fdSnapshot,
  fixture,
  pollerIdle,
  test,
  withTimeout,
  zombieChildren,
} from "./_util.ts";
import { rawPair } from "./_channel_util.ts";

const PEER = fixture("wake_peer.ts");
const PERMS = { run: true, read: true } as const;

function peer(args: string[], theirs?: UnixSocket) {
  const child = spawn(DENO, {
    args: ["run", "--allow-ffi", "--allow-read", PEER, ...args],
    fds: theirs === undefined ? [] : [theirs],
    stdin: "null",
  });
  theirs?.close();
  return child;
}

async function exited(child: ReturnType<typeof spawn>, what: string) {
  const status = await withTimeout(child.status, 20_000, what);
  assert.equal(status.code, 0, `${what} exited with ${status.code}`);
}

function num(m: { data: Uint8Array } | null): number | null {
  return m === null ? null : new DataView(m.data.buffer).getUint32(0, true);
}

/** Makes `b`'s receive spinner rest: a reply long after the spin gave up. */
async function rest(a: UnixSocket, b: UnixSocket): Promise<void> {
  const late = setTimeout(() => a.sendSync(new Uint8Array(4)), 30);
  try {
    await withTimeout(b.recv(), 5000, "the late message");
  } finally {
    clearTimeout(late);
  }
}

for (const spin of [undefined, 0]) {
  test(
    `80 receives pending on one seqpacket socket take a child's burst of 64 in call order, then end of stream (spin ${spin})`,
    async () => {
      const [mine, theirs] = socketpair({ type: "seqpacket" });
      const child = peer(["burst-close", "64"], theirs);
      try {
        // Two messages: the child reads one, and closes with the other
        // unread (ECONNRESET once, ahead of its burst).
        // Every receive is parked before the child starts its burst.
        const calls = Array.from({ length: 80 }, () => mine.recv({ spin }));
        mine.sendSync(new Uint8Array(1));
        mine.sendSync(new Uint8Array(1));
        const got = await withTimeout(
          Promise.all(calls),
          15_000,
          "80 receives",
        );
        assert.deepEqual(
          got.map(num),
          [...Array.from({ length: 64 }, (_, i) => i), ...Array(16).fill(null)],
        );
      } finally {
        mine.close();
        await exited(child, "burst child");
      }
      assert.deepEqual(zombieChildren(), []);
    },
    PERMS,
  );
}

test("a receive that closes its socket as it resolves: the ones woken with it keep what they took, the one still parked rejects with BadResource", async () => {
  const [a, b] = socketpair({ type: "seqpacket" });
  try {
    await rest(a, b);
    const first = b.recv();
    const second = b.recv();
    const third = b.recv();
    const closed = first.then((m) => {
      b.close();
      return num(m);
    });
    a.sendSync(Uint8Array.of(1, 0, 0, 0));
    a.sendSync(Uint8Array.of(2, 0, 0, 0));
    assert.equal(await withTimeout(closed, 5000, "first"), 1);
    assert.equal(num(await withTimeout(second, 5000, "second")), 2);
    await assert.rejects(
      withTimeout(third, 5000, "third"),
      Deno.errors.BadResource,
    );
  } finally {
    a.close();
    b.close();
  }
});

test(
  "a message with more fds than maxFds, woken with others, fails its own receive only; the fds are closed, the rest arrive in order",
  async () => {
    const [mine, theirs] = socketpair({ type: "seqpacket" });
    const child = peer(["fds-burst"], theirs);
    try {
      mine.sendSync(new Uint8Array(1));
      const calls = [0, 1, 2, 3, 4].map(() =>
        mine.recv({ maxFds: 1 }).then((m) => {
          const fds = m?.fds.length ?? -1;
          for (const fd of m?.fds ?? []) fd.close();
          return [num(m), fds];
        }, (error) => error)
      );
      const got = await withTimeout(Promise.all(calls), 15_000, "receives");
      assert.ok(got[0] instanceof RangeError, `first: ${got[0]}`);
      assert.deepEqual(got.slice(1), [[1, 0], [2, 1], [3, 0], [null, -1]]);
      await exited(child, "fds child");
    } finally {
      mine.close();
    }
  },
  PERMS,
);

test("a receive aborted around its wake-up either takes the message or leaves it for the next receive, never loses it", async () => {
  const [a, b] = socketpair({ type: "seqpacket" });
  const aborts: ((c: AbortController) => void)[] = [
    (c) => c.abort(),
    (c) => queueMicrotask(() => c.abort()),
    (c) =>
      Promise.resolve().then(() => Promise.resolve()).then(() => c.abort()),
    (c) => setImmediate(() => c.abort()),
    (c) => setTimeout(() => c.abort(), 0),
  ];
  try {
    let next = 0;
    let lost = 0;
    for (let round = 0; round < 300; round++) {
      if (round % 50 === 0) await rest(a, b);
      const c = new AbortController();
      const n = next++;
      const pending = b.recv({ signal: c.signal }).then(num, () => "aborted");
      a.sendSync(Uint8Array.of(n & 0xff, n >> 8, 0, 0));
      aborts[round % aborts.length](c);
      const got = await withTimeout(pending, 5000, "the receive");
      if (got === "aborted") {
        const again = num(await withTimeout(b.recv(), 5000, "the next one"));
        if (again !== n) lost++;
      } else if (got !== n) lost++;
    }
    assert.equal(lost, 0);
  } finally {
    a.close();
    b.close();
  }
});

for (
  const [senders, what] of [[3, "a wait on each"], [
    10,
    "its own epoll set",
  ]] as const
) {
  test(
    `a for await over a receiver with ${senders} senders in a child (${what}) gets every value once, in each sender's order`,
    async () => {
      const server = new OneShotServer<number[]>();
      const child = peer(["senders", server.name, String(senders), "300"]);
      const [rx, first] = await server.accept({ timeout: 15_000 });
      try {
        // accept() takes the first value to arrive: some sender's first
        // (the senders send at once, in no order between them).
        const [k0, i0] = first;
        assert.ok(Number.isInteger(k0) && k0 >= 0 && k0 < senders, `${k0}`);
        assert.equal(i0, 0);
        const next = new Array(senders).fill(0);
        next[k0] = 1;
        let count = 1;
        const loop = (async () => {
          for await (const [k, i] of rx) {
            assert.equal(i, next[k], `sender ${k}`);
            next[k]++;
            count++;
          }
        })();
        await withTimeout(loop, 20_000, "the loop");
        assert.equal(count, senders * 300);
        await exited(child, "senders child");
      } finally {
        rx.close();
      }
    },
    PERMS,
  );
}

test(
  "a sender that sends and closes at once: the first of five pending receives gets the value, the rest ChannelClosedError",
  async () => {
    const server = new OneShotServer<string>();
    const child = peer(["send-close", server.name]);
    const [rx, first] = await server.accept({ timeout: 15_000 });
    try {
      assert.equal(first, "hello");
      const calls = [0, 1, 2, 3, 4].map(() =>
        rx.recv().then((v) => v, (e) => e)
      );
      const got = await withTimeout(Promise.all(calls), 15_000, "receives");
      assert.equal(got[0], "last words");
      for (const e of got.slice(1)) {
        assert.ok(e instanceof ChannelClosedError, `${e}`);
      }
    } finally {
      rx.close();
      await exited(child, "send-close child");
    }
  },
  PERMS,
);

test("a channel receiver closed as its first receive resolves: the others settle, none twice, nothing out of order", async () => {
  for (let round = 0; round < 20; round++) {
    const [tx, rx] = channel<number>();
    try {
      const calls = [0, 1, 2, 3].map(() => rx.recv().then((v) => v, (e) => e));
      calls[0].then(() => rx.close());
      // Wait past the spin, then send from a timer (a real wake-up).
      await new Promise((r) => setTimeout(r, round % 3));
      await tx.send(0);
      await tx.send(1).catch(() => {});
      await tx.send(2).catch(() => {});
      const got = await withTimeout(Promise.all(calls), 5000, "receives");
      assert.equal(got[0], 0);
      let expect = 1;
      for (const v of got.slice(1)) {
        if (typeof v === "number") assert.equal(v, expect++);
        else {
          assert.ok(
            v instanceof Deno.errors.BadResource ||
              v instanceof ChannelClosedError,
            `${v}`,
          );
        }
      }
    } finally {
      tx.close();
      rx.close();
    }
  }
});

test("a receive parked on a channel whose end of stream another call took rejects with ChannelClosedError, not BadResource", async () => {
  const [peer, rx] = rawPair();
  try {
    const parked = rx.recv({ spin: 0 }).then(() => "a value", (e) => e);
    peer.close();
    // This look reads the end of stream and drops the last connection.
    assert.throws(() => rx.tryRecv(), ChannelClosedError);
    const outcome = await withTimeout(parked, 5000, "the parked receive");
    assert.ok(
      outcome instanceof ChannelClosedError,
      `the parked receive ended with ${outcome}`,
    );
  } finally {
    peer.close();
    rx.close();
  }
});

test("a receive called while another waits waits behind it: a message that is there goes to the earlier call (socket and channel)", async () => {
  const [a, b] = socketpair({ type: "seqpacket" });
  try {
    const first = b.recv({ spin: 0 });
    a.sendSync(new Uint8Array([1]));
    // The message is there before the first receive has been woken: the
    // second call must not take it.
    const second = b.recv({ spin: 0 });
    a.sendSync(new Uint8Array([2]));
    const got = await withTimeout(
      Promise.all([first, second]),
      5000,
      "two receives",
    );
    assert.deepEqual(got.map((m) => m!.data[0]), [1, 2]);
  } finally {
    a.close();
    b.close();
  }

  const [tx, rx] = channel<number>();
  try {
    const first = rx.recv({ spin: 0 });
    await tx.send(1);
    const second = rx.recv({ spin: 0 });
    await tx.send(2);
    assert.deepEqual(
      await withTimeout(Promise.all([first, second]), 5000, "two receives"),
      [1, 2],
    );
  } finally {
    tx.close();
    rx.close();
  }
});

// Deno.test, not test(): the runtime opens fds of its own for a Worker, so
// the fd table is checked over the window the test controls.
Deno.test({
  name:
    "a Worker's receives woken together, with a close in between, settle and leave no fd behind",
  permissions: { ffi: true, read: true },
  async fn() {
    const worker = new Worker(
      new URL("./fixtures/wake_worker.ts", import.meta.url),
      { type: "module" },
    );
    const next = () =>
      new Promise<unknown>((resolve) => {
        worker.onmessage = (e) => resolve(e.data);
      });
    try {
      let reply = next();
      worker.postMessage("ping");
      assert.equal(await withTimeout(reply, 15_000, "worker start"), "ready");
      const before = fdSnapshot();
      reply = next();
      worker.postMessage("go");
      assert.deepEqual(await withTimeout(reply, 15_000, "the worker"), {
        got: [1, 2, "BadResource"],
        size: 0,
      });
      assertFdsUnchanged(before, "the Worker's receives");
    } finally {
      worker.terminate();
    }
    await pollerIdle();
  },
});

// Receiver (channel/receiver.ts and its inbox): taking messages, batches
// and senders, and the bounds on what one receive does.

import assert from "node:assert/strict";
import {
  bytesChannel,
  channel,
  ChannelClosedError,
  connect,
  listen,
  OneShotServer,
  Receiver,
  type Sender,
  socketpair,
  spawn,
  type UnixSocket,
} from "../mod.ts";
import { FRAME, header } from "../_channel_wire.ts";
import { dupCloexec, OwnedFd } from "../ffi/fd.ts";
import { libc } from "../ffi/libc.ts";
import { poller } from "../ffi/poller.ts";
import {
  batchFrame,
  child,
  exited,
  PROCS,
  rawPair,
  stringFrame,
} from "./_channel_util.ts";
import {
  DENO,
  fixture,
  listDir,
  openFds,
  pollerInterest,
  stillPending,
  test,
  withTimeout,
  zombieChildren,
} from "./_util.ts";

test(
  "recv() throws ChannelClosedError once every sender clone is closed, after the last message",
  async () => {
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
  },
);

test(
  "tryRecv(), async iteration and readable take messages in order",
  async () => {
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
  },
);

test(
  "a receiver takes a batch whole, acknowledges it once read and hands its messages out in order",
  async () => {
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
  },
);

test(
  "a for await loop fed by a child faster than it reads lets a 1 ms interval run",
  async () => {
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
    assert.deepEqual(zombieChildren(), []);
  },
  PROCS,
);

test(
  "a receive flooded with control frames reads a bounded number per wake-up and lets the event loop turn",
  async () => {
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
  },
);

test(
  "a receiver with 200 senders waits through one poller registration, not one per sender",
  async () => {
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
  },
);

test(
  "one socket added as a new sender 600 times is held once by the receiver",
  async () => {
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
  },
);

test(
  "maxMessageBytes bounds a message that came in the frame itself, alone or in a batch, as one in a memfd",
  async () => {
    for (const kind of ["value", "bytes"] as const) {
      for (const size of [10_000, 100_000]) {
        for (const batched of [false, true]) {
          const what = `${kind}, ${size} bytes, ${
            batched ? "batched" : "alone"
          }`;
          const [tx, rx] = kind === "value"
            ? channel<unknown>()
            : bytesChannel();
          rx.maxMessageBytes = 4096;
          const small = new Uint8Array(100).fill(1);
          const big = new Uint8Array(size).fill(2);
          if (batched) {
            // Sends of one turn leave as one packet (the large one alone,
            // in its memfd, after the batch).
            const sent = [tx.send(small), tx.send(big), tx.send(small)];
            await Promise.all(sent);
          } else {
            await tx.send(small);
            await tx.send(big);
          }
          assert.equal(
            ((await withTimeout(rx.recv(), 2000, what)) as Uint8Array)
              .byteLength,
            100,
            what,
          );
          await assert.rejects(
            withTimeout(rx.recv(), 2000, what),
            (error: Error) =>
              error instanceof Deno.errors.InvalidData &&
              /exceeds this receiver's maxMessageBytes \(4096\)/.test(
                error.message,
              ),
            what,
          );
          // The sender that sent it is dropped: nothing after it arrives.
          await assert.rejects(
            withTimeout(rx.recv(), 2000, what),
            ChannelClosedError,
            what,
          );
          tx.close();
          rx.close();
        }
      }
    }
  },
);

test(
  "a new sender connected to a listener that never accepts it is refused, and the sender that handed it over is dropped",
  async () => {
    const [peer, rx] = rawPair();
    const name = `conduit-test-${crypto.randomUUID()}`;
    using _listener = listen({ abstract: name, type: "seqpacket" });
    const before = openFds().length;
    // Its other end waits in the listener's queue: nobody holds an fd of
    // it, so the receiver would never see the end of it.
    const client = await withTimeout(
      connect({ abstract: name, type: "seqpacket" }),
      2000,
      "connect",
    );
    await peer.send(header(FRAME.ADD_PEER, 4), { fds: [client] });
    client.close();
    await refusedNewSender(rx, /connected to a socket no process holds/);
    await assert.rejects(
      withTimeout(rx.recv(), 2000, "recv"),
      ChannelClosedError,
    );
    assert.equal(await withTimeout(peer.recv(), 2000, "peer recv"), null);
    assert.ok(
      openFds().length <= before,
      `${openFds().length - before} fds more`,
    );
    peer.close();
    rx.close();
  },
);

/**
 * Waits for a receive of `rx` to fail with `InvalidData` saying `why` of a
 * new sender's connection.
 */
function refusedNewSender(
  rx: Receiver<unknown>,
  why: RegExp,
): Promise<void> {
  return assert.rejects(
    withTimeout(rx.recv(), 2000, "recv"),
    (error: Error) =>
      error instanceof Deno.errors.InvalidData &&
      /a new sender's connection/.test(error.message) &&
      why.test(error.message),
  );
}

/** Why a new sender's connection whose peer is held here is refused. */
const HELD_HERE = /connected to a connection a receiver of this thread holds/;

test(
  "both ends of a socket pair handed over as new senders, to one receiver or two, are not both kept",
  async () => {
    for (const split of [false, true]) {
      const [peer1, rx1] = rawPair();
      const [peer2, rx2] = split ? rawPair() : [peer1, rx1];
      const [a, b] = socketpair({ type: "seqpacket" });
      const before = openFds().length;
      await peer1.send(header(FRAME.ADD_PEER, 4), { fds: [a] });
      assert.equal(rx1.tryRecv(), undefined);
      assert.equal(rx1.senders, 2, "the raw peer and the first end");
      await peer2.send(header(FRAME.ADD_PEER, 4), { fds: [b] });
      a.close();
      b.close();
      // The second end is refused: its other end is a connection of a
      // receiver here. Then the first end reads the end of the second.
      await refusedNewSender(rx2, HELD_HERE);
      if (split) {
        assert.equal(rx1.tryRecv(), undefined);
        assert.equal(rx1.senders, 1, "the first end is dropped");
      }
      await assert.rejects(
        withTimeout(rx2.recv(), 2000, "recv"),
        ChannelClosedError,
      );
      assert.ok(
        openFds().length <= before - 2,
        `${openFds().length - (before - 2)} fds more`,
      );
      for (const e of new Set([peer1, peer2, rx1, rx2])) e.close();
    }
  },
);

test(
  "a peer that hands over its own end of the connection as a new sender is dropped",
  async () => {
    const [peer, rx] = rawPair();
    await peer.send(header(FRAME.ADD_PEER, 4), { fds: [peer] });
    await refusedNewSender(rx, HELD_HERE);
    await assert.rejects(
      withTimeout(rx.recv(), 2000, "recv"),
      ChannelClosedError,
    );
    peer.close();
    rx.close();
  },
);

test(
  "a listening socket handed over as a new sender is refused, and the sender that handed it over is dropped",
  async () => {
    const [peer, rx] = rawPair();
    const name = `conduit-test-${crypto.randomUUID()}`;
    const before = openFds().length;
    {
      using listener = listen({ abstract: name, type: "seqpacket" });
      await peer.send(header(FRAME.ADD_PEER, 4), { fds: [listener] });
    }
    await refusedNewSender(rx, /has no peer \(a listening socket\)/);
    await assert.rejects(
      withTimeout(rx.recv(), 2000, "recv"),
      ChannelClosedError,
    );
    assert.ok(
      openFds().length <= before,
      `${openFds().length - before} fds more`,
    );
    peer.close();
    rx.close();
  },
);

test(
  "a receiver moved in a message whose connections are listening sockets or both ends of a pair fails that message, and none is kept",
  async () => {
    const name = `conduit-test-${crypto.randomUUID()}`;
    using listener = listen({ abstract: name, type: "seqpacket" });
    const [x, y] = socketpair({ type: "seqpacket" });
    const cases: [string, number[], RegExp][] = [
      ["a listener", [listener.rawFd], /has no peer \(a listening socket\)/],
      [
        "both ends of a pair",
        [x.rawFd, y.rawFd],
        /connected to a connection a receiver of this thread holds/,
      ],
    ];
    for (const [what, fds, message] of cases) {
      const [tx, rx] = channel<unknown>();
      // A receiver made of those sockets (copies: the test keeps its own).
      const moved = new Receiver(
        fds.map((fd) => ({
          fd: new OwnedFd(dupCloexec(fd), "Receiver"),
          capacity: 4,
          unacked: 0,
        })),
      );
      const before = openFds().length;
      await tx.send({ stream: moved }, { transfer: [moved] });
      await assert.rejects(
        withTimeout(rx.recv(), 2000, what),
        (error: Error) =>
          error instanceof Deno.errors.InvalidData &&
          /a Receiver's connection/.test(error.message) &&
          message.test(error.message),
        what,
      );
      assert.ok(
        openFds().length <= before - fds.length,
        `${what}: ${openFds().length - (before - fds.length)} fds more`,
      );
      tx.close();
      rx.close();
    }
    x.close();
    y.close();
  },
);

const UNSHARE = libc().getuid() === 0 &&
  listDir("/usr/bin").includes("unshare");
if (!UNSHARE) {
  console.log(
    "skipping the network namespace test: it needs root and /usr/bin/unshare",
  );
}

test(
  "a new sender made in another network namespace, which the kernel cannot check, is taken, and the sender that handed it over keeps its channel",
  async () => {
    const [carrier, theirs] = socketpair({ type: "seqpacket" });
    const proc = spawn("unshare", {
      args: ["-n", DENO, "run", "--allow-ffi", fixture("netns_pair.ts")],
      fds: [theirs],
      stdin: "null",
    });
    theirs.close();
    try {
      const got = await withTimeout(carrier.recv(), 20_000, "the child's end");
      const far = got?.fds[0] as UnixSocket;
      const [peer, rx] = rawPair();
      await peer.send(header(FRAME.ADD_PEER, 4), { fds: [far] });
      far.close();
      await peer.send(stringFrame("after"));
      assert.equal(await withTimeout(rx.recv(), 2000, "recv"), "after");
      assert.equal(rx.senders, 2, "the raw peer and the clone");
      peer.close();
      rx.close();
    } finally {
      await carrier.send(new Uint8Array([0])).catch(() => {});
      carrier.close();
      await exited(proc, "netns child");
    }
  },
  PROCS,
  { ignore: !UNSHARE },
);

test(
  "one socket handed over as a new sender to two receivers of a thread is kept by the first only",
  async () => {
    const [peer1, rx1] = rawPair();
    const [peer2, rx2] = rawPair();
    const [a, b] = socketpair({ type: "seqpacket" });
    await peer1.send(header(FRAME.ADD_PEER, 4), { fds: [a] });
    assert.equal(rx1.tryRecv(), undefined);
    assert.equal(rx1.senders, 2);
    await peer2.send(header(FRAME.ADD_PEER, 4), { fds: [a] });
    await refusedNewSender(
      rx2,
      /is held by another receiver of this thread already/,
    );
    assert.equal(rx2.senders, 0);
    for (const e of [peer1, peer2, rx1, rx2, a, b]) e.close();
  },
);

test(
  "peers can make a process's receivers hold at most half its fd limit in added senders; a clone past it is refused and told why",
  async () => {
    const [carrier, theirs] = socketpair({ type: "seqpacket" });
    const proc = spawn("prlimit", {
      args: [
        "--nofile=300:300",
        DENO,
        "run",
        "--allow-ffi",
        fixture("pushed_bound.ts"),
      ],
      fds: [theirs],
      stdin: "null",
    });
    theirs.close();
    const clones: Sender<string>[] = [];
    try {
      const got = await withTimeout(carrier.recv(), 20_000, "the Sender");
      const tx = got?.fds[0] as Sender<string>;
      for (let i = 0; i < 200; i++) clones.push(tx.clone());
      tx.close();
      await carrier.send(new Uint8Array([0]));
      const report = await withTimeout(carrier.recv(), 20_000, "the count");
      // 150 of the clones (the first sender is closed by then).
      assert.equal(new TextDecoder().decode(report?.data), "150");
      const last = clones[199];
      await assert.rejects(
        (async () => {
          // The refusal may arrive after a first send went out.
          for (let i = 0; i < 3; i++) await last.send("late");
        })(),
        (error: Error) =>
          error instanceof ChannelClosedError &&
          /hold as many senders that peers added as they take/.test(
            error.message,
          ),
      );
    } finally {
      for (const clone of clones) clone.close();
      await carrier.send(new Uint8Array([0])).catch(() => {});
      carrier.close();
      await exited(proc, "bounded child");
    }
  },
  PROCS,
  { ignore: !listDir("/usr/bin").includes("prlimit") },
);

test(
  "a sender adds at most 1024 open senders; the next one is refused and told why",
  async () => {
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
  },
);

test("after a wait that went unanswered, recv() arms its wait first, and messages already there, single or batched, still arrive in order without a turn of the event loop", async () => {
  const [tx, rx] = channel<number>();
  try {
    const late = setTimeout(() => tx.send(0), 30);
    assert.equal(await withTimeout(rx.recv(), 5000, "the late message"), 0);
    clearTimeout(late);

    // Sends of one turn leave as one batch frame.
    for (const n of [1, 2, 3]) tx.send(n);
    await tx.send(4);
    let turned = false;
    setImmediate(() => turned = true);
    const receiving = rx.recv();
    if (poller().canPollDirect) {
      // The look was skipped: the wait is armed already (the only wait).
      assert.equal(
        poller().directPolls.length,
        1,
        "recv() looked before it armed its wait",
      );
    }
    assert.equal(await withTimeout(receiving, 5000, "a message there"), 1);
    assert.equal(
      turned,
      false,
      "the event loop turned before a message that was there was delivered",
    );
    assert.deepEqual([await rx.recv(), await rx.recv(), await rx.recv()], [
      2,
      3,
      4,
    ]);
    tx.close();
    await assert.rejects(rx.recv(), ChannelClosedError);
  } finally {
    tx.close();
    rx.close();
  }
});

test("receives called together after a wait that went unanswered take messages already there, single or batched, in call order", async () => {
  const [tx, rx] = channel<number>();
  try {
    const late = setTimeout(() => tx.send(0), 30);
    assert.equal(await withTimeout(rx.recv(), 5000, "the late message"), 0);
    clearTimeout(late);

    await tx.send(1);
    // Sends of one turn leave as one batch frame, once the turn ends.
    for (const n of [2, 3]) tx.send(n);
    await new Promise((resolve) => setImmediate(resolve));
    const calls = [rx.recv(), rx.recv(), rx.recv(), rx.recv(), rx.recv()];
    await tx.send(4);
    await tx.send(5);
    assert.deepEqual(
      await withTimeout(Promise.all(calls), 5000, "five receives"),
      [1, 2, 3, 4, 5],
    );
  } finally {
    tx.close();
    rx.close();
  }
});

test(
  "batches from one sender or ten (the receiver's own epoll set) arrive whole and in each sender's order",
  async () => {
    for (const senders of [1, 10]) {
      const [tx, rx] = channel<[number, number]>();
      const all: Sender<[number, number]>[] = [tx];
      while (all.length < senders) all.push(tx.clone());
      // Each sender's 40 sends of one turn leave as one batch.
      const sent = all.flatMap((s, id) =>
        Array.from({ length: 40 }, (_, n) => s.send([id, n]))
      );
      await Promise.all(sent);
      for (const s of all) s.close();
      const got: [number, number][] = [];
      for (let k = 0; k < senders * 40; k++) {
        got.push(await withTimeout(rx.recv(), 5000, `message ${k}`));
      }
      const next: number[] = new Array(senders).fill(0);
      for (const [id, n] of got) {
        assert.equal(n, next[id]++, `sender ${id} in order`);
      }
      assert.deepEqual(next, new Array(senders).fill(40));
      await assert.rejects(
        withTimeout(rx.recv(), 5000, "end"),
        ChannelClosedError,
      );
      rx.close();
    }
  },
);

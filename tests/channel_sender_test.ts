// Sender (channel/sender.ts and its outbox): credit, batches of the sends
// of one turn, and what a closed receiver means for a send.

import assert from "node:assert/strict";
import {
  bytesChannel,
  channel,
  ChannelClosedError,
  connect,
  listen,
  OneShotServer,
  pipe,
  socketpair,
} from "../mod.ts";
import {
  FRAME,
  HEADER,
  header,
  sendFrame,
  seqpacketPair,
} from "../_channel_wire.ts";
import { Outbox } from "../channel/_outbox.ts";
import { releaseFd } from "../_keys.ts";
import { bytesFrame, type Frame } from "../channel/_frame.ts";
import { closedError, ERRNO, type SystemError } from "../ffi/errors.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { libc } from "../ffi/libc.ts";
import { Spinner } from "../ffi/spin.ts";
import { receiveMessage } from "../_scm.ts";
import { child, exited, PROCS, rawSender } from "./_channel_util.ts";
import { stillPending, test, withTimeout, zombieChildren } from "./_util.ts";

test(
  "send() waits when capacity messages are unacknowledged and resumes as the receiver drains",
  async () => {
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
  },
);

test(
  "send() throws ChannelClosedError once the receiver is closed",
  async () => {
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
  },
);

test(
  "a sender that closes with acknowledgements unread loses none of its messages",
  async () => {
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
  },
);

test(
  "sends of one turn leave in few packets: the first at once, the rest in batches",
  async () => {
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
  },
);

test(
  "a send made after this thread heard from a peer goes at once, even within the same microtask; one with nothing heard since the last is gathered",
  async () => {
    const [tx, peer] = rawSender(1000);
    using other = channel<number>();
    const [otx, orx] = other;
    const packets = new Uint8Array(64);
    /** The packets already in the peer's socket, taken without waiting. */
    const inSocket = () => {
      let n = 0;
      while (receiveMessage(peer.rawFd, packets, 0, false) !== null) n++;
      return n;
    };
    try {
      const sends = [tx.send(1)];
      assert.equal(inSocket(), 1, "the first send leaves at once");
      // Nothing heard since: gathered until the sender falls idle.
      sends.push(tx.send(2));
      assert.equal(inSocket(), 0, "a second send right after is gathered");
      await Promise.all(sends);
      await new Promise((resolve) => setTimeout(resolve, 0));
      assert.equal(inSocket(), 1, "the batch left once idle");

      // A request, a message taken from a peer, then a send, with no
      // microtask turn in between: a reply, which goes at once.
      sends.push(tx.send(3));
      assert.equal(inSocket(), 1, "a send after a pause goes at once");
      sends.push(otx.send(7));
      assert.equal(orx.tryRecv(), 7);
      sends.push(tx.send(4));
      assert.equal(inSocket(), 1, "a send after a message taken goes at once");
      sends.push(tx.send(5));
      assert.equal(inSocket(), 0, "the send after it is gathered again");
      await Promise.all(sends);
      await new Promise((resolve) => setTimeout(resolve, 0));
      assert.equal(inSocket(), 1);
    } finally {
      tx.close();
      peer.close();
    }
  },
);

test(
  "a relay that sends on each message it takes from a batch still gathers its sends: the messages behind the one taken were already there",
  async () => {
    const N = 400;
    const [tx, peer] = rawSender(1000);
    const [stx, srx] = channel<number>({ capacity: 1000 });
    // The upstream's sends of one turn: a lone one, then batches.
    for (let i = 0; i < N; i++) await stx.send(i);
    stx.close();
    const types: number[] = [];
    const got: number[] = [];
    const reading = (async () => {
      const view = (d: Uint8Array) => new DataView(d.buffer, d.byteOffset);
      for (let total = 0; total < N;) {
        const packet = await withTimeout(peer.recv(), 5000, "packet");
        const data = packet!.data;
        types.push(data[0]);
        total += data[0] === FRAME.BATCH ? view(data).getUint32(4, true) : 1;
      }
    })();
    try {
      for await (const n of srx) {
        got.push(n);
        await tx.send(n);
      }
      await reading;
    } finally {
      tx.close();
      peer.close();
      srx.close();
    }
    assert.deepEqual(got, Array.from({ length: N }, (_, i) => i));
    assert.ok(types.includes(FRAME.BATCH), `packets ${types}`);
    // One packet per message before the fix; a turn yielded every 2 ms of
    // delivery ends a batch early, so a busy machine sees a few more.
    assert.ok(types.length <= N / 8, `${types.length} packets`);
  },
);

for (const when of ["now", "unload"]) {
  test(
    `sends gathered in one turn reach the receiver when the sender's process exits ${
      when === "now"
        ? "at once (Deno.exit)"
        : "and they were made in an unload listener"
    }`,
    async () => {
      const server = new OneShotServer<number>();
      await using proc = child("exit", server.name, when);
      const [rx, first] = await server.accept({ timeout: 15_000 });
      try {
        const got = [first];
        for await (const n of rx) got.push(n);
        assert.deepEqual(got, [0, 1, 2, 3, 4]);
      } finally {
        rx.close();
      }
      await exited(proc, "exit child");
      assert.deepEqual(zombieChildren(), []);
    },
    PROCS,
  );
}

test(
  "a send that resolved before its batch left, or waits for credit, carries the value as it was at the call; close() still sends a batch",
  async () => {
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
  },
);

test(
  "a batch goes out before this thread spins waiting for anything",
  async () => {
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
  },
);

test(
  "a batch goes out before a call that blocks the thread (readSync, writeSync, recvSync, sendSync, acceptSync)",
  async () => {
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
  },
);

test(
  "a send waiting for credit whose signal aborts leaves the queue: nothing of it goes, its fds close, the sends around it go on",
  async () => {
    using ch = channel<unknown>({ capacity: 1 });
    const [tx, rx] = ch;
    using p = pipe();
    await tx.send(0);
    const before = tx.send(1);
    const stop = new AbortController();
    // Its copy of the pipe's fd is closed when it is given up (the test
    // checks that no fd leaks).
    const given = tx.send({ writer: p.writer }, { signal: stop.signal });
    const after = tx.send(3);
    assert.ok(await stillPending(given, 20), "the send waits for credit");
    const reason = new Error("gave up");
    stop.abort(reason);
    await assert.rejects(
      withTimeout(given, 2000, "the aborted send"),
      (error) => error === reason,
    );
    const got = [];
    for (let i = 0; i < 3; i++) {
      got.push(await withTimeout(rx.recv(), 2000, `message ${i}`));
    }
    await withTimeout(Promise.all([before, after]), 2000, "the other sends");
    assert.deepEqual(got, [0, 1, 3]);
  },
);

test(
  "close() rejects the sends waiting for credit with BadResource; the sends that resolved still arrive",
  async () => {
    const [tx, rx] = channel<number>({ capacity: 2 });
    await tx.send(0); // leaves at once
    await tx.send(1); // gathered: resolves, holds the last credit
    const waiting = [tx.send(2), tx.send(3)];
    assert.ok(await stillPending(waiting[0], 20), "out of credit");
    tx.close();
    for (const send of waiting) {
      await assert.rejects(
        withTimeout(send, 2000, "waiting send"),
        Deno.errors.BadResource,
      );
    }
    const got = [];
    for await (const n of rx) got.push(n);
    assert.deepEqual(got, [0, 1]);
    rx.close();
  },
);

test(
  "once the receiver is gone, every send waiting for credit and every later one fail with the same ChannelClosedError",
  async () => {
    const [tx, rx] = channel<number>({ capacity: 1 });
    await tx.send(0);
    const waiting = [tx.send(1), tx.send(2), tx.send(3)];
    assert.ok(await stillPending(waiting[0], 20), "out of credit");
    rx.close();
    const errors = await withTimeout(
      Promise.all(waiting.map((send) => send.then(() => null, (e) => e))),
      2000,
      "waiting sends",
    );
    assert.ok(errors[0] instanceof ChannelClosedError, String(errors[0]));
    assert.equal(errors[1], errors[0]);
    assert.equal(errors[2], errors[0]);
    const later = tx.send(4).then(() => null, (e) => e);
    assert.equal(await withTimeout(later, 2000, "a later send"), errors[0]);
    tx.close();
  },
);

/** Counts the frames in one packet a sender sent: a batch, or one. */
function framesIn(data: Uint8Array): number {
  return data[0] === FRAME.BATCH
    ? new DataView(data.buffer, data.byteOffset).getUint32(4, true)
    : 1;
}

test(
  "a batch that finds the socket full waits for room with nothing queued behind it; close() lets it go first",
  async () => {
    const [tx, peer] = rawSender(64);
    try {
      const filler = new Uint8Array(1000);
      /** Fills the sender's socket with packets of its own: how many. */
      const fill = () => {
        let n = 0;
        while (sendFrame(tx.rawFd, [filler], [])) n++;
        return n;
      };
      // The reads never spin here, so nothing flushes the batch but its own
      // wait for room.
      const next = (what: string) =>
        withTimeout(peer.recv({ spin: 0 }), 2000, what);
      /** Reads the first message, the fillers, and the packet after them. */
      const afterFill = async (filled: number) => {
        assert.equal((await next("the first message"))!.data[0], FRAME.MESSAGE);
        for (let i = 0; i < filled; i++) {
          assert.equal((await next("a filler"))!.data.byteLength, 1000);
        }
        return (await next("the batch"))!.data;
      };

      // The first send leaves at once; the next two, made in the same turn
      // once the socket is full, are gathered into a batch and resolve.
      const first = tx.send(0);
      let filled = fill();
      await Promise.all([first, tx.send(1), tx.send(2)]);
      // The burst ends: the batch finds no room.
      await new Promise((resolve) => setTimeout(resolve, 0));
      // Room as the peer reads: the batch goes without a further send.
      assert.equal(framesIn(await afterFill(filled)), 2);

      const again = tx.send(3);
      filled = fill();
      await Promise.all([again, tx.send(4)]);
      await new Promise((resolve) => setTimeout(resolve, 0));
      tx.close(); // the batch still waits for room: the socket stays open
      assert.equal(
        (await afterFill(filled))[0],
        FRAME.MESSAGE,
        "a batch of one",
      );
      assert.equal(await next("the end"), null, "closed once the batch left");
    } finally {
      // A batch still waiting fails once its peer is gone.
      peer.close();
      tx.close();
    }
  },
);

/** A spinner that never spins and counts how often a wait asked it. */
class CountingSpinner extends Spinner {
  asked = 0;
  constructor() {
    super(0);
  }
  override spin<T>(attempt: () => T | undefined): T | undefined {
    this.asked++;
    return super.spin(attempt);
  }
}

/** An outbox of `capacity` on a seqpacket pair, and the raw other end. */
function outbox(capacity: number): [Outbox, OwnedFd, number] {
  const [mine, theirs] = seqpacketPair();
  const fd = new OwnedFd(mine, "Sender");
  return [new Outbox(fd, capacity, () => {}), fd, theirs];
}

test(
  "a send that waits for credit waits with the spin it asked for",
  async () => {
    const [out, fd, peer] = outbox(1);
    try {
      await out.send(bytesFrame(new Uint8Array(1)), undefined, undefined);
      const spinner = new CountingSpinner();
      const waiting = out.send(
        bytesFrame(new Uint8Array(2)),
        undefined,
        spinner,
      );
      assert.ok(await stillPending(waiting, 20), "out of credit");
      assert.ok(spinner.asked > 0, "the wait asked the send's spinner");
      out.close(closedError("Sender"));
      await assert.rejects(
        withTimeout(waiting, 2000, "the waiting send"),
        Deno.errors.BadResource,
      );
    } finally {
      fd.close();
      libc().close(peer);
    }
  },
);

test(
  "a packet that fails for a reason of its own fails its sends only; the sends behind it still go",
  async () => {
    const [out, fd, peer] = outbox(1);
    try {
      await out.send(bytesFrame(new Uint8Array([1])), undefined, undefined);
      let abandoned = 0;
      // A frame whose fd cannot be passed: sendmsg fails with EBADF.
      const bad: Frame = {
        ...bytesFrame(new Uint8Array([2])),
        fds: [0x3fffffff],
        abandon: () => abandoned++,
      };
      const failing = out.send(bad, undefined, undefined);
      const after = out.send(
        bytesFrame(new Uint8Array([3])),
        undefined,
        undefined,
      );
      assert.ok(await stillPending(failing, 20), "out of credit");
      // The receiver takes the first message and acknowledges it.
      const buf = new Uint8Array(64);
      assert.equal(receiveMessage(peer, buf, 0, false)!.bytes, HEADER + 1);
      assert.ok(sendFrame(peer, [header(FRAME.ACK, 1)], []));
      await assert.rejects(
        withTimeout(failing, 2000, "the bad send"),
        (error) => (error as SystemError).errno === ERRNO.EBADF,
      );
      assert.equal(abandoned, 1);
      await withTimeout(after, 2000, "the send behind it");
      const got = receiveMessage(peer, buf, 0, false)!;
      assert.deepEqual([got.bytes, buf[HEADER]], [HEADER + 1, 3]);
      assert.equal(out.failed, undefined, "the channel goes on");
    } finally {
      out.close(closedError("Sender"));
      fd.close();
      libc().close(peer);
    }
  },
);

test(
  "a sender of any capacity has at most 64 frames with fds in flight: the kernel counts each fd against the user's limit",
  async () => {
    const [tx, peer] = rawSender(1024);
    try {
      // Each message is larger than a packet: it travels as a memfd.
      const big = new Uint8Array(70_000);
      const sends: Promise<void>[] = [];
      for (let i = 0; i < 70; i++) sends.push(tx.send(big.fill(i)));
      // Failures are asserted below; a failed test leaves none unhandled.
      for (const send of sends) send.catch(() => {});
      await withTimeout(
        Promise.all(sends.slice(0, 64)),
        5000,
        "64 sends with fds",
      );
      assert.ok(
        await stillPending(sends[64], 50),
        "the 65th waits for a frame with fds to be acknowledged",
      );
      const buf = new Uint8Array(64);
      /** Reads the frames that are there: how many, each a memfd alone. */
      const drain = () => {
        let n = 0;
        for (;;) {
          const got = receiveMessage(peer.rawFd, buf, 4, false);
          if (got === null) return n;
          assert.equal(buf[0], FRAME.MESSAGE_MEMFD);
          assert.equal(got.fds.length, 1);
          for (const fd of got.fds) libc().close(fd);
          n++;
        }
      };
      assert.equal(drain(), 64);
      // The first frame is taken: one more may go.
      await peer.send(header(FRAME.ACK, 1));
      await withTimeout(sends[64], 5000, "the 65th send after an ack");
      assert.ok(await stillPending(sends[65], 50), "the 66th still waits");
      assert.equal(drain(), 1);
      await peer.send(header(FRAME.ACK, 64));
      await withTimeout(Promise.all(sends), 5000, "every send");
      assert.equal(drain(), 5);
    } finally {
      tx.close();
      peer.close();
    }
  },
);

test(
  "an ack that comes with fds fails the send with InvalidData and closes them: none is kept",
  async () => {
    const [tx, peer] = rawSender(1);
    try {
      await tx.send(1);
      const { reader, writer } = pipe();
      const other = pipe();
      await peer.send(header(FRAME.ACK, 1), { fds: [reader, other.reader] });
      reader.close();
      other.reader.close();
      await assert.rejects(
        withTimeout(tx.send(2), 5000, "send after a bad ack"),
        (e: Error) =>
          e instanceof Deno.errors.InvalidData &&
          /something other than an ack/.test(e.message),
      );
      await assert.rejects(
        writer.write(new Uint8Array(1)),
        Deno.errors.BrokenPipe,
        "the fds that came with the ack were closed",
      );
      writer.close();
      other.writer.close();
    } finally {
      tx.close();
      peer.close();
    }
  },
);

test(
  "a refusal whose reason this version does not know says so, not that the receiver is full",
  async () => {
    const [tx, rx] = channel<number>({ capacity: 1 });
    const fd = rx[releaseFd]();
    try {
      await tx.send(1);
      assert.equal(sendFrame(fd, [header(FRAME.REFUSED, 77)], []), true);
      await assert.rejects(
        withTimeout(tx.send(2), 5_000, "the refusal"),
        (error: Error) =>
          error instanceof ChannelClosedError &&
          error.message ===
            "Cannot send on channel: the receiver refused this sender (reason 77, which this version does not know)",
      );
    } finally {
      tx.close();
      libc().close(fd);
    }
  },
);

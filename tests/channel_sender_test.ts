// Sender (channel/sender.ts and its outbox): credit, batches of the sends
// of one turn, and what a closed receiver means for a send.

import assert from "node:assert/strict";
import {
  bytesChannel,
  channel,
  ChannelClosedError,
  connect,
  listen,
  pipe,
  socketpair,
} from "../mod.ts";
import { FRAME } from "../_channel_wire.ts";
import { rawSender } from "./_channel_util.ts";
import { stillPending, test, withTimeout } from "./_util.ts";

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

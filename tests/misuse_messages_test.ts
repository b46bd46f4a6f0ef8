// What a newcomer's common mistakes are told: a receiver added to a set
// twice, a send after the receiver dropped the sender, a connect of the
// wrong socket type to an abstract name.
import assert from "node:assert/strict";
import { channel, connect, listen, ReceiverSet } from "../mod.ts";
import { test, withTimeout } from "./_util.ts";

test(
  "ReceiverSet.add() refuses a receiver that is in the set already, naming its id; size and select() keep agreeing",
  async () => {
    using set = new ReceiverSet<number>();
    const [tx, rx] = channel<number>();
    const id = set.add(rx);
    assert.throws(() => set.add(rx), {
      name: "TypeError",
      message:
        `Cannot add to ReceiverSet: this receiver is in the set already, as id ${id}`,
    });
    assert.equal(set.size, 1);
    await tx.send(1);
    assert.deepEqual(await set.select(), { id, value: 1 });
    tx.close();
    assert.deepEqual(await set.select(), { id, closed: true });
    assert.equal(set.size, 0);
  },
);

test(
  "a send after the receiver dropped its sender (an oversized message) says the receiver may have dropped it, not only that it closed",
  async () => {
    using ch = channel<unknown>();
    const [tx, rx] = ch;
    rx.limits = { maxElements: 10 };
    await tx.send(new Array(11).fill(0));
    await assert.rejects(
      withTimeout(rx.recv(), 10_000, "the oversized receive"),
      Deno.errors.InvalidData,
    );
    assert.equal(rx.closed, false);
    await assert.rejects(
      withTimeout(tx.send(1), 10_000, "the send after the drop"),
      (error: Error) =>
        error.name === "ChannelClosedError" &&
        error.message.includes("or dropped this sender"),
    );
  },
);

test(
  "connect() of one socket type to an abstract name served by another says the name is looked up per type",
  async () => {
    const name = `conduit-type-${Deno.pid}-${Date.now()}`;
    using listener = listen({ abstract: name, type: "seqpacket" });
    await assert.rejects(
      connect({ abstract: name }),
      (error: Error) =>
        error instanceof Deno.errors.ConnectionRefused &&
        error.message.includes("no server of this socket type is listening"),
    );
    const socket = await withTimeout(
      connect({ abstract: name, type: "seqpacket" }),
      10_000,
      "the connect of the right type",
    );
    socket.close();
    (await withTimeout(listener.accept(), 10_000, "the accept")).close();
  },
);

// ReceiverSet (channel/receiver_set.ts).

import assert from "node:assert/strict";
import {
  channel,
  ChannelClosedError,
  ReceiverSet,
  type Sender,
} from "../mod.ts";
import { stillPending, test, withTimeout } from "./_util.ts";

test(
  "ReceiverSet.select() returns messages of several receivers and reports each close once",
  async () => {
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
  },
);

// Every call that takes an options object refuses a number, a string or
// null there, naming the call, as pipe() and socketpair() always did:
// `channel(64)` or `Semaphore.create(mem, 0, 5)` are natural guesses that
// would otherwise run with the defaults (and a semaphore of 0 waits).
import assert from "node:assert/strict";
import {
  Barrier,
  bytesChannel,
  channel,
  ChannelServer,
  Event,
  Mutex,
  OneShotServer,
  Semaphore,
  SharedMemory,
  shmQueue,
  spawn,
} from "../mod.ts";
import { test } from "./_util.ts";

test(
  "an options argument that is no object is refused with a TypeError naming the call",
  () => {
    using mem = SharedMemory.create(4096);
    const cases: [string, (bad: never) => unknown][] = [
      ["Cannot create channel", (bad) => channel(bad)],
      ["Cannot create bytes channel", (bad) => bytesChannel(bad)],
      ["Cannot create shmQueue", (bad) => shmQueue(bad)],
      ["Cannot create SharedMemory", (bad) => SharedMemory.create(64, bad)],
      ["Cannot open SharedMemory", (bad) => SharedMemory.open("x", bad)],
      ["Cannot create Semaphore", (bad) => Semaphore.create(mem, 0, bad)],
      ["Cannot create Mutex", (bad) => Mutex.create(mem, 16, bad)],
      ["Cannot create Event", (bad) => Event.create(mem, 32, bad)],
      ["Cannot attach Mutex", (bad) => Mutex.from(mem, 16, bad)],
      ["Cannot create server", (bad) => new OneShotServer(bad)],
      ["Cannot create server", (bad) => new ChannelServer(bad)],
      ["Cannot spawn", (bad) => spawn("true", bad)],
    ];
    for (const [call, make] of cases) {
      for (const bad of [5, "x", null]) {
        assert.throws(() => make(bad as never), {
          name: "TypeError",
          message: `${call}: expected an options object, got ${
            bad === null ? "null" : typeof bad
          }`,
        });
      }
    }
    assert.throws(
      () => Barrier.create(mem, 48, 2, 5 as never),
      /Cannot create Barrier: expected an options object, got number/,
    );
  },
  { run: true },
);

// Slices of continuous delivery (_turn.ts, the shm rings): a turn of the
// event loop between two deliveries starts a new slice, so paced traffic
// never pays for a turn of its own.
import assert from "node:assert/strict";
import { channel, shmQueue } from "../mod.ts";
import { TurnSlice } from "../_turn.ts";
import { loopTurned } from "../ffi/_turns.ts";
import { test, withTimeout } from "./_util.ts";

test("a TurnSlice ends after 1,024 deliveries without a turn, and a turn of the event loop starts a new one", () => {
  // A clock that stands still: only the count ends a slice here.
  const slice = new TurnSlice(() => 0);
  for (let i = 1; i < 1024; i++) assert.equal(slice.delivered(), false);
  assert.equal(slice.delivered(), true, "the 1,024th delivery ends it");
  for (let i = 1; i < 1024; i++) assert.equal(slice.delivered(), false);
  loopTurned();
  assert.equal(slice.delivered(), false, "a new slice after the turn");
  for (let i = 2; i < 1024; i++) assert.equal(slice.delivered(), false);
  assert.equal(slice.delivered(), true);
});

test("a TurnSlice also ends 2 ms after its 8th delivery, however few deliveries it made", () => {
  let ms = 0;
  const slice = new TurnSlice(() => ms);
  for (let i = 1; i <= 8; i++) assert.equal(slice.delivered(), false);
  ms = 1.9;
  for (let i = 9; i <= 16; i++) assert.equal(slice.delivered(), false);
  ms = 2;
  for (let i = 17; i < 24; i++) assert.equal(slice.delivered(), false);
  assert.equal(slice.delivered(), true, "the 24th delivery, 2 ms on, ends it");
  loopTurned();
  ms = 100;
  assert.equal(slice.delivered(), false, "a new slice after the turn");
});

/** Counts the turns yielded with `setImmediate` while `body` runs. */
async function turnsTaken(body: () => Promise<void>): Promise<number> {
  const real = globalThis.setImmediate;
  let taken = 0;
  globalThis.setImmediate = ((
    callback: (...args: unknown[]) => void,
    ...args: unknown[]
  ) => {
    taken++;
    return real(callback, ...args);
  }) as typeof setImmediate;
  try {
    await body();
  } finally {
    globalThis.setImmediate = real;
  }
  return taken;
}

const pause = () => new Promise((resolve) => setTimeout(resolve, 1));

test("paced sends on a channel and on a shm queue, each after the receiver woke, take no turn of their own", async () => {
  // One message per ms for 40 ms: a slice of 2 ms (channel) or 4 ms (shm
  // ring) without the event loop's turns counted would end every 8 sends.
  using ch = channel<number>();
  const [tx, rx] = ch;
  assert.equal(
    await turnsTaken(async () => {
      for (let i = 0; i < 40; i++) {
        const got = rx.recv({ spin: 0 });
        await pause();
        await tx.send(i);
        assert.equal(await withTimeout(got, 2000, `message ${i}`), i);
      }
    }),
    0,
    "a paced channel send yielded a turn",
  );
  const [qtx, qrx] = shmQueue({ bytes: 1 << 16 });
  try {
    assert.equal(
      await turnsTaken(async () => {
        for (let i = 0; i < 40; i++) {
          const got = qrx.recv();
          await pause();
          await qtx.send(new Uint8Array([i]));
          const message = await withTimeout(got, 2000, `message ${i}`);
          assert.equal(message?.[0], i);
        }
      }),
      0,
      "a paced shm send yielded a turn",
    );
  } finally {
    qtx.close();
    qrx.close();
  }
});

// A read loop over a pipe (and a stream socket) that a child keeps full:
// like a socket's or a channel's receive loop, it must let a timer of this
// process run between slices of reads that never wait.
import assert from "node:assert/strict";
import {
  channel,
  connect,
  listen,
  pipe,
  shmQueue,
  socketpair,
  spawn,
  type UnixListener,
  type UnixSocket,
} from "../mod.ts";
import { test, withTimeout } from "./_util.ts";

for (const kind of ["pipe", "stream socket"] as const) {
  test(
    `a read loop over a ${kind} that \`cat /dev/zero\` keeps full lets a setInterval tick`,
    async () => {
      const { mine, theirs } = kind === "pipe"
        ? (({ reader, writer }) => ({ mine: reader, theirs: writer }))(
          pipe({ bytes: 1 << 20 }),
        )
        : (([a, b]) => ({ mine: a, theirs: b }))(
          socketpair({ type: "stream" }),
        );
      const child = spawn("cat", { args: ["/dev/zero"], stdout: theirs });
      theirs.close();
      let ticks = 0;
      const interval = setInterval(() => ticks++, 1);
      try {
        // Let the child fill the buffer first.
        await new Promise((resolve) => setTimeout(resolve, 50));
        ticks = 0;
        const buffer = new Uint8Array(16);
        let reads = 0;
        // No timer can bound this loop (a starved event loop never fires
        // one): it gives up after far more reads than a few slices take.
        while (ticks < 3 && reads < 300_000) {
          if ((await mine.read(buffer)) === null) break;
          reads++;
        }
        assert.ok(ticks >= 3, `${reads} reads and ${ticks} ticks`);
      } finally {
        clearInterval(interval);
        mine.close();
        child.kill("SIGKILL");
        await withTimeout(child.status, 10_000, "cat exits");
      }
    },
    { run: true, read: true },
  );
}

/**
 * Runs `fn` with a listener that has more connections queued than a slice
 * of accepts takes (1,024), made before `fn` runs; closes them after.
 */
async function withQueued(
  fn: (server: UnixListener, queued: number) => Promise<void>,
): Promise<void> {
  const abstract = `fairness-${crypto.randomUUID()}`;
  const queued = 1_100;
  using server = listen({ abstract, backlog: 2_048 });
  const clients: UnixSocket[] = [];
  try {
    for (let i = 0; i < queued; i++) clients.push(await connect({ abstract }));
    await fn(server, queued);
  } finally {
    for (const client of clients) client.close();
  }
}

/** Accepts `n` queued connections and closes them. */
async function acceptQueued(server: UnixListener, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    (await withTimeout(server.accept(), 10_000, "a queued client")).close();
  }
}

test(
  "an accept loop over a listener whose queue is full lets a timer fire between slices",
  async () => {
    await withQueued(async (server, queued) => {
      let accepted = 0;
      let atTimer = -1;
      const timer = setTimeout(() => atTimer = accepted, 0);
      try {
        for (; accepted < queued; accepted++) await acceptQueued(server, 1);
      } finally {
        clearTimeout(timer);
      }
      assert.ok(
        atTimer >= 0 && atTimer < queued,
        `the timer fired after ${atTimer} of ${queued} accepts`,
      );
    });
  },
  { ffi: true },
);

test(
  "an accept aborted during its turn between slices rejects, and leaves its connection queued",
  async () => {
    await withQueued(async (server, queued) => {
      const controller = new AbortController();
      const reason = new Error("enough");
      let aborted = false;
      setTimeout(() => {
        controller.abort(reason);
        aborted = true;
      }, 0);
      let accepted = 0;
      let afterAbort = 0;
      for (;;) {
        try {
          const conn = await withTimeout(
            server.accept({ signal: controller.signal }),
            10_000,
            "a queued client",
          );
          if (aborted) afterAbort++;
          conn.close();
          accepted++;
        } catch (error) {
          assert.equal(error, reason);
          break;
        }
      }
      assert.equal(afterAbort, 0, "an accept resolved after the abort");
      assert.ok(accepted < queued, `${accepted} accepted before the abort`);
      // Every connection not accepted is still queued.
      await acceptQueued(server, queued - accepted);
    });
  },
  { ffi: true },
);

/**
 * Takes `count` messages with `take` while a timer of 0 ms is due; how
 * many were taken when the timer fired, -1 when it did not fire before
 * the last.
 */
async function takenBeforeTimer(
  count: number,
  take: () => Promise<unknown>,
): Promise<number> {
  let fired = -1;
  let taken = 0;
  const timer = setTimeout(() => fired = taken, 0);
  try {
    for (; taken < count; taken++) await take();
  } finally {
    clearTimeout(timer);
  }
  return fired;
}

test(
  "a receive loop over a few large queued messages (each longer than a slice) lets a timer fire between them: channel and shmQueue",
  async () => {
    const big = new Uint8Array(6 << 20);
    {
      const [tx, rx] = channel<Uint8Array>({ capacity: 8 });
      try {
        for (let i = 0; i < 4; i++) await tx.send(big);
        const fired = await withTimeout(
          takenBeforeTimer(4, () => rx.recv()),
          60_000,
          "the channel's messages",
        );
        assert.ok(fired >= 0 && fired < 3, `channel: timer at ${fired}`);
      } finally {
        tx.close();
        rx.close();
      }
    }
    {
      const [tx, rx] = shmQueue({ bytes: 8 << 20 });
      try {
        const part = big.subarray(0, 2 << 20);
        for (let i = 0; i < 3; i++) await tx.send(part);
        const fired = await withTimeout(
          takenBeforeTimer(3, () => rx.recv()),
          60_000,
          "the queue's messages",
        );
        assert.ok(fired >= 0 && fired < 2, `shmQueue: timer at ${fired}`);
      } finally {
        tx.close();
        rx.close();
      }
    }
  },
);

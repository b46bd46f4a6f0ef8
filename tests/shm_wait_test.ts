// SharedMemory.wait() and notify() (shm/wait.ts): futex words shared by
// processes, waited on through futex_waitv.

import assert from "node:assert/strict";
import { SharedMemory, spawn } from "../mod.ts";
import { waitPoolBusy } from "../shm/wait.ts";
import { exitedOk, syncChild } from "./_shm_sync_util.ts";
import {
  delay,
  DENO,
  fixture,
  listDir,
  readProcText,
  stillPending,
  test,
  until,
  withTimeout,
  zombieChildren,
} from "./_util.ts";
import { libc, SYS } from "../ffi/libc.ts";
import { dupCloexec } from "../ffi/fd.ts";

const PEER = fixture("shm_peer.ts");
const PYTHON_PEER = fixture("futex_peer.py");
const perms = { run: true, read: true, env: true } as const;
const decoder = new TextDecoder();

/** How many threads of `pid` sleep in the system call `nr` right now. */
function threadsIn(pid: number, nr: number): number {
  let count = 0;
  for (const tid of listDir(`/proc/${pid}/task`)) {
    const fields = readProcText(`/proc/${pid}/task/${tid}/syscall`)?.split(" ");
    if (fields !== undefined && Number(fields[0]) === nr) count++;
  }
  return count;
}

/** Resolves once this process's futex_waitv call is asleep in the kernel. */
function waitsAsleep(): Promise<void> {
  return until(
    () => threadsIn(Deno.pid, SYS.futex_waitv) > 0,
    10_000,
    "this process's futex_waitv to sleep",
  );
}

test(
  "wait() compares first: not-equal when the word differs, timed-out at once for timeout 0, timed-out when nobody notifies",
  async () => {
    using mem = SharedMemory.create(64);
    const words = new Int32Array(mem.buffer);
    Atomics.store(words, 3, -5);
    assert.equal(await mem.wait(3, 4), "not-equal");
    assert.equal(await mem.wait(3, -5, { timeout: 0 }), "timed-out");
    assert.equal(await mem.wait(3, 0xffff_fffb, { timeout: 0 }), "timed-out");
    assert.equal(await mem.wait(3, -5, { timeout: 30 }), "timed-out");
    assert.equal(mem.notify(3), 0);
    await assert.rejects(mem.wait(16, 0), RangeError);
    await assert.rejects(mem.wait(1.5, 0), RangeError);
    await assert.rejects(
      mem.wait(0, "0" as unknown as number),
      TypeError,
    );
    assert.throws(() => mem.notify(-1), RangeError);
    assert.throws(() => mem.notify(0, -1), RangeError);
  },
);

test(
  "notify() wakes waits of this process: up to count of them, oldest first, a changed word ends them all, and words beyond one futex_waitv call's 127 are served by the same call",
  async () => {
    using mem = SharedMemory.create(4096);
    const words = new Int32Array(mem.buffer);
    const one = mem.wait(0, 0, { timeout: 20_000 });
    await waitsAsleep();
    Atomics.store(words, 0, 1);
    assert.equal(mem.notify(0), 1);
    assert.equal(await one, "ok");

    // Three waits on one word, which does not change: each notify ends one.
    const three = [0, 1, 2].map(() => mem.wait(2, 0, { timeout: 20_000 }));
    for (let i = 0; i < 2; i++) {
      await waitsAsleep();
      assert.equal(mem.notify(2, 1), 1);
      assert.equal(await three[i], "ok");
      assert.ok(await stillPending(three[i + 1], 10));
    }
    // A changed word ends every wait on it at the next wake-up.
    Atomics.store(words, 2, 9);
    await waitsAsleep();
    assert.equal(mem.notify(2), 1);
    assert.equal(await three[2], "ok");

    // 300 words: still one call (127 of them at a time, in turns), so a
    // process never holds more than one thread of Deno's blocking pool.
    const many = Array.from(
      { length: 300 },
      (_, i) => mem.wait(100 + i, 0, { timeout: 20_000 }),
    );
    // Should an assertion below fail, closing the memory rejects these.
    for (const wait of many) wait.catch(() => {});
    await waitsAsleep();
    assert.ok(await stillPending(many[299], 30));
    // The one call is re-issued as words take turns, so a sample may fall
    // between two calls; it never finds more than one.
    for (let k = 0; k < 20; k++) {
      const calls = threadsIn(Deno.pid, SYS.futex_waitv);
      assert.ok(calls <= 1, `${calls} futex_waitv calls at once`);
      await delay(1);
    }
    let woken = 0;
    for (let i = 0; i < 300; i++) {
      Atomics.store(words, 100 + i, 1);
      woken += mem.notify(100 + i);
    }
    // This process's waits are woken here, without a system call.
    assert.equal(woken, 300);
    assert.deepEqual(new Set(await Promise.all(many)), new Set(["ok"]));
  },
);

test(
  "a pending wait ends when its signal aborts (with the reason) and when the memory is closed (BadResource)",
  async () => {
    const mem = SharedMemory.create(64);
    try {
      const controller = new AbortController();
      const aborted = mem.wait(0, 0, { signal: controller.signal });
      const kept = mem.wait(1, 0, { timeout: 20_000 });
      await waitsAsleep();
      controller.abort(new Error("stop waiting"));
      await assert.rejects(aborted, /stop waiting/);
      await assert.rejects(
        mem.wait(0, 0, { signal: controller.signal }),
        /stop waiting/,
      );
      mem.close();
      await assert.rejects(
        kept,
        (e: Error) =>
          e instanceof Deno.errors.BadResource &&
          e.message === "Cannot use SharedMemory: it is closed",
      );
      await assert.rejects(mem.wait(0, 0), Deno.errors.BadResource);
      assert.throws(() => mem.notify(0), Deno.errors.BadResource);
      assert.equal(threadsIn(Deno.pid, SYS.futex_waitv), 0);
    } finally {
      mem.close();
    }
  },
);

test(
  "a wait in a child process is woken by notify() in this one, and a wait here by the child's notify()",
  async () => {
    using mem = SharedMemory.create(4096);
    const words = new Int32Array(mem.buffer);
    const waiter = spawn(DENO, {
      args: ["run", "--allow-ffi", "--allow-read", PEER, "wait-word"],
      fds: [mem],
      stdout: "piped",
      stderr: "piped",
    });
    const output = waiter.output();
    try {
      await until(
        () => threadsIn(waiter.pid, SYS.futex_waitv) > 0,
        20_000,
        "the child to wait",
      );
    } catch (error) {
      waiter.kill("SIGKILL");
      await output;
      throw error;
    }
    Atomics.store(words, 0, 42);
    assert.equal(mem.notify(0), 1);
    const out = await withTimeout(output, 20_000, "waiting child");
    assert.equal(decoder.decode(out.stderr), "");
    assert.equal(decoder.decode(out.stdout), "ok 42\n");

    Atomics.store(words, 0, 0);
    const woken = mem.wait(0, 0, { timeout: 20_000 });
    const notifier = spawn(DENO, {
      args: ["run", "--allow-ffi", "--allow-read", PEER, "notify-word"],
      fds: [mem],
      stdout: "piped",
      stderr: "piped",
    });
    Atomics.store(words, 1, 1);
    mem.notify(1);
    assert.equal(await woken, "ok");
    assert.equal(Atomics.load(words, 0), 7);
    const done = await withTimeout(notifier.output(), 20_000, "notifier");
    assert.equal(decoder.decode(done.stderr), "");
    assert.equal(decoder.decode(done.stdout), "notified\n");
    assert.deepEqual(zombieChildren(), []);
  },
  perms,
);

test(
  "the words are plain futexes: a Python process's FUTEX_WAIT is woken by notify(), and its FUTEX_WAKE wakes a wait here",
  async () => {
    using mem = SharedMemory.create(4096);
    const words = new Int32Array(mem.buffer);
    const back = mem.wait(1, 0, { timeout: 20_000 });
    await waitsAsleep();
    const python = spawn("python3", {
      args: [PYTHON_PEER],
      fds: [mem],
      stdout: "piped",
      stderr: "piped",
    });
    const output = python.output();
    try {
      await until(
        () => threadsIn(python.pid, SYS.futex) > 0,
        20_000,
        "python to wait",
      );
    } catch (error) {
      python.kill("SIGKILL");
      await output;
      throw error;
    }
    Atomics.store(words, 0, 5);
    assert.equal(mem.notify(0), 1);
    assert.equal(await back, "ok");
    assert.equal(Atomics.load(words, 1), 1);
    const out = await withTimeout(output, 20_000, "python");
    assert.equal(decoder.decode(out.stderr), "");
    assert.equal(decoder.decode(out.stdout), "python woke: 5\npython woke 1\n");
  },
  perms,
);

test(
  "notify() wakes the oldest waiters first, up to count, and says how many",
  async () => {
    using mem = SharedMemory.create(4096);
    const words = new Int32Array(mem.buffer);
    const order: string[] = [];
    const first = mem.wait(0, 0).then((r) => order.push(`first ${r}`));
    const second = mem.wait(0, 0).then((r) => order.push(`second ${r}`));
    const third = mem.wait(0, 0).then((r) => order.push(`third ${r}`));
    // Once the waits are in the kernel, the store alone ends none of them.
    await until(
      () => threadsIn(Deno.pid, SYS.futex_waitv) > 0,
      5000,
      "this process asleep",
    );
    Atomics.store(words, 0, 1);
    assert.equal(mem.notify(0, 1), 1);
    await withTimeout(first, 5000, "the first waiter");
    assert.deepEqual(order, ["first ok"]);
    assert.ok(await stillPending(second, 20));
    assert.equal(mem.notify(0, 5), 2);
    await withTimeout(Promise.all([second, third]), 5000, "the others");
    assert.deepEqual(order, ["first ok", "second ok", "third ok"]);
    assert.equal(mem.notify(0, 0), 0);
    assert.throws(() => mem.notify(0, NaN), RangeError);
  },
);

test(
  "a word that changed while the call was being issued again ends its wait with ok, without a notify",
  async () => {
    using mem = SharedMemory.create(4096);
    const words = new Int32Array(mem.buffer);
    const moved = mem.wait(0, 0);
    await until(() => waitPoolBusy(), 5000, "the call in flight");
    // A store no notify follows: the next issue (for a new word) sees it.
    Atomics.store(words, 0, 1);
    const fresh = mem.wait(1, 0, { timeout: 10 });
    assert.equal(await withTimeout(moved, 5000, "the moved word"), "ok");
    assert.equal(await fresh, "timed-out");
  },
);

test(
  "300 words waited on at once (more than one futex_waitv takes) are all woken by another process",
  async () => {
    using mem = SharedMemory.create(4096);
    const words = new Int32Array(mem.buffer);
    const first = 10;
    const waits = Array.from({ length: 300 }, (_, i) => mem.wait(first + i, 0));
    await using child = syncChild(mem, "notify-many", String(first), "300");
    Atomics.store(words, 0, 1);
    mem.notify(0);
    const results = await withTimeout(Promise.all(waits), 30_000, "300 waits");
    assert.ok(results.every((r) => r === "ok"));
    assert.deepEqual(await exitedOk(child, "the child"), ["notified 300"]);
  },
  { run: true, read: true },
);

test(
  "a process whose only pending wait is unref'd exits by itself",
  async () => {
    using mem = SharedMemory.create(4096);
    await using child = syncChild(mem, "unref-wait");
    assert.deepEqual(await exitedOk(child, "the unref'd child", 20_000), [
      "waiting unref'd",
    ]);
  },
  { run: true, read: true },
);

test(
  "a wait that ends the last one settles only once the futex_waitv call has returned, so the op sanitizer sees nothing pending",
  async () => {
    using mem = SharedMemory.create(4096);
    const pending = mem.wait(0, 0, { timeout: 30 });
    await until(() => waitPoolBusy(), 5000, "the call in flight");
    // The wait ends only once the call has returned.
    assert.equal(await pending, "timed-out");
    assert.equal(waitPoolBusy(), false);
    const notified = mem.wait(1, 0);
    await until(() => waitPoolBusy(), 5000, "the call in flight");
    Atomics.store(new Int32Array(mem.buffer), 1, 1);
    mem.notify(1);
    assert.equal(await notified, "ok");
    assert.equal(waitPoolBusy(), false);
  },
);

test(
  "a wake taken by this process's leftover entry for a word nobody here waits on any more is passed on to the other process",
  async () => {
    using mem = SharedMemory.create(4096);
    // Keeps the call in flight after the wait on word 7 has gone.
    const keeper = mem.wait(9, 0);
    keeper.catch(() => {}); // Rejected by close() if an assertion fails.
    assert.equal(await mem.wait(7, 0, { timeout: 30 }), "timed-out");
    await using child = syncChild(mem, "wait", "7", "0", "20000");
    assert.equal(await child.out.next("the child waiting"), "waiting");
    await until(
      () => threadsIn(child.child.pid, SYS.futex_waitv) > 0,
      20_000,
      "the child asleep",
    );
    // This process's entry went to sleep first, so the kernel wakes it; the
    // wake must reach the child all the same.
    assert.equal(mem.notify(7, 1), 1);
    assert.deepEqual(await exitedOk(child, "the waiting child"), ["ok"]);
    mem.notify(9);
    assert.equal(await keeper, "ok");
  },
  { run: true, read: true },
);

/**
 * A Worker (tests/fixtures/worker_wait.ts) sent `fd` to wait on word 0 of;
 * `next()` takes what it says, in order ("waiting", then the wait's end),
 * and `messages` holds what it said that was not taken yet.
 */
function waitingWorker(fd: number): {
  worker: Worker;
  messages: unknown[];
  next(what: string): Promise<unknown>;
} {
  const worker = new Worker(
    new URL("./fixtures/worker_wait.ts", import.meta.url),
    { type: "module" },
  );
  const messages: unknown[] = [];
  let heard: (() => void) | undefined;
  let failed: Error | undefined;
  worker.onmessage = (e) => {
    messages.push(e.data);
    heard?.();
  };
  worker.onerror = (e) => {
    failed = new Error(e.message);
    heard?.();
  };
  worker.postMessage(fd);
  return {
    worker,
    messages,
    async next(what) {
      while (messages.length === 0) {
        if (failed !== undefined) throw failed;
        await withTimeout(
          new Promise<void>((resolve) => heard = resolve),
          20_000,
          what,
        );
      }
      return messages.shift();
    },
  };
}

// Deno.test, not test(): the runtime opens and closes fds of its own for a
// Worker, and the terminated Worker's memory keeps its fd (closed here).
Deno.test({
  name:
    "a Worker terminated while a wait is pending gives back the blocking-pool thread of its futex_waitv call (it ends by itself and is not issued again)",
  permissions: { ffi: true, read: true },
  async fn() {
    using mem = SharedMemory.create(4096);
    const before = threadsIn(Deno.pid, SYS.futex_waitv);
    const fd = dupCloexec(mem.rawFd);
    const { worker, next } = waitingWorker(fd);
    try {
      assert.equal(await next("the worker"), "waiting");
      await until(
        () => threadsIn(Deno.pid, SYS.futex_waitv) > before,
        10_000,
        "the Worker's futex_waitv to sleep",
      );
    } finally {
      worker.terminate();
    }
    // Nobody changes or wakes the word: only the call's own end frees it.
    await until(
      () => threadsIn(Deno.pid, SYS.futex_waitv) === before,
      20_000,
      "the terminated Worker's futex_waitv to end",
    );
    libc().close(fd);
  },
});

// Deno.test, not test(): the runtime opens and closes fds of its own for a
// Worker.
Deno.test({
  name:
    "a wait in a Worker outlives its futex_waitv call's own end (issued again every second) and is woken by notify()",
  permissions: { ffi: true, read: true },
  async fn() {
    using mem = SharedMemory.create(4096);
    const fd = dupCloexec(mem.rawFd);
    const { worker, messages, next } = waitingWorker(fd);
    try {
      assert.equal(await next("the worker waiting"), "waiting");
      // Past two of the call's own ends: the wait must still be there.
      await delay(2_500);
      assert.deepEqual(messages, [], "the wait did not end by itself");
      Atomics.store(new Int32Array(mem.buffer), 0, 1);
      assert.equal(mem.notify(0), 1);
      assert.equal(await next("the worker woken"), "ok");
    } finally {
      worker.terminate();
      libc().close(fd);
    }
  },
});

import assert from "node:assert/strict";
import { SharedMemory } from "../mod.ts";
import { waitPoolBusy } from "../shm/wait.ts";
import { exitedOk, syncChild } from "./_shm_sync_util.ts";
import {
  listDir,
  readProcText,
  stillPending,
  test,
  until,
  withTimeout,
} from "./_util.ts";

/** Whether a thread of `pid` is in system call `nr` now. */
function inSyscall(pid: number, nr: number): boolean {
  return listDir(`/proc/${pid}/task`).some((tid) =>
    readProcText(`/proc/${pid}/task/${tid}/syscall`)?.startsWith(`${nr} `)
  );
}

/** Whether a thread of `pid` sleeps in futex_waitv (syscall 449) now. */
function inFutexWaitv(pid: number): boolean {
  return inSyscall(pid, 449);
}

const local = { ffi: true } as const;
const children = { ffi: true, run: true, read: true } as const;

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
    await until(() => inFutexWaitv(Deno.pid), 5000, "this process asleep");
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
  local,
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
  local,
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
  children,
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
  children,
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
  local,
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
      () => inFutexWaitv(child.child.pid),
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
  children,
);

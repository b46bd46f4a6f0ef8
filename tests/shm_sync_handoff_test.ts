// How wakes, holders and waits pass between processes that share locks and
// words: a wake is never lost to a wait that was given up or a memory that
// was closed, a wait on a new word is armed however many words wait, a lock
// passes from a holder that died however it got there, and a live holder is
// never taken for dead.
import assert from "node:assert/strict";
import { Mutex, Semaphore, SharedMemory, spawn } from "../mod.ts";
import { libc } from "../ffi/libc.ts";
import { waitPoolBusy } from "../shm/wait.ts";
import { type Child, Lines, syncChild } from "./_shm_sync_util.ts";
import {
  DENO,
  fixture,
  listDir,
  procFds,
  procFdTarget,
  readProcText,
  stillPending,
  test,
  until,
  withTimeout,
} from "./_util.ts";

const local = { ffi: true } as const;
const children = { ffi: true, run: true, read: true } as const;

/** `futex_waitv`, the same number on every architecture. */
const FUTEX_WAITV = 449;

/** Whether a thread of `pid` is in `futex_waitv` now. */
function inFutexWaitv(pid: number): boolean {
  return listDir(`/proc/${pid}/task`).some((tid) =>
    readProcText(`/proc/${pid}/task/${tid}/syscall`)?.startsWith(
      `${FUTEX_WAITV} `,
    ) ?? false
  );
}

/**
 * A child that waits to acquire the semaphore at offset 0 behind this
 * process's one waiter: resolves once both are counted and the child sleeps
 * in `futex_waitv`.
 */
async function childAcquiring(mem: SharedMemory): Promise<Child> {
  const taker = syncChild(mem, "acquire", "0", "1");
  const words = new Int32Array(mem.buffer);
  await until(() => Atomics.load(words, 1) === 2, 20_000, "both waiting");
  await until(
    () => inFutexWaitv(taker.child.pid),
    20_000,
    "the child in futex_waitv",
  );
  return taker;
}

/** Whether `pid` holds a pidfd (a lock that looked at its holder does). */
function holdsPidfd(pid: number): boolean {
  return procFds(pid).some((fd) =>
    procFdTarget(pid, fd) === "anon_inode:[pidfd]"
  );
}

test(
  "a wait woken by release() or unlock() and given up in the same turn passes the wake on: the next waiter, here or in another process, gets the unit or the lock",
  async () => {
    using mem = SharedMemory.create(4096);
    const semaphore = Semaphore.create(mem, 0, { value: 0 });
    const giveUp = new AbortController();
    const first = semaphore.acquire({ signal: giveUp.signal });
    const second = semaphore.acquire();
    await until(() => waitPoolBusy(), 5000, "the acquires in the kernel");
    semaphore.release();
    giveUp.abort();
    await assert.rejects(first, (e: Error) => e.name === "AbortError");
    await withTimeout(second, 10_000, "the second acquire");
    assert.equal(semaphore.value, 0);
    // The abort comes a few jobs later, before the woken acquire resumes.
    const late = new AbortController();
    const given = semaphore.acquire({ signal: late.signal });
    const kept = semaphore.acquire();
    await until(() => waitPoolBusy(), 5000, "the acquires in the kernel");
    semaphore.release();
    queueMicrotask(() => queueMicrotask(() => late.abort()));
    // Resumed before the abort, it took the unit; else the unit is passed on.
    const outcome = await given.then(() => "took", (e: Error) => e.name);
    if (outcome === "took") semaphore.release();
    else assert.equal(outcome, "AbortError");
    await withTimeout(kept, 10_000, "the acquire behind it");
    assert.equal(semaphore.value, 0);

    const mutex = Mutex.create(mem, 16);
    const guard = mutex.tryLock()!;
    const leave = new AbortController();
    const a = mutex.lock({ signal: leave.signal });
    const b = mutex.lock();
    await until(
      () => (Atomics.load(new Int32Array(mem.buffer), 4) & 0x8000_0000) !== 0,
      5000,
      "the lockers waiting",
    );
    await until(() => waitPoolBusy(), 5000, "the locks in the kernel");
    guard.unlock();
    leave.abort();
    await assert.rejects(a, (e: Error) => e.name === "AbortError");
    const next = await withTimeout(b, 10_000, "the second lock");
    assert.equal(next.ownerDied, false);
    next.unlock();

    // The next waiter is another process: this one's waiter is woken first,
    // gives up, and the child gets the unit.
    const third = new AbortController();
    const mine = semaphore.acquire({ signal: third.signal });
    await using taker = await childAcquiring(mem);
    semaphore.release();
    third.abort();
    await assert.rejects(mine, (e: Error) => e.name === "AbortError");
    assert.equal(await taker.out.next("the child's acquire"), "acquired 1");
  },
  children,
);

test(
  "release() and then close() of the memory in the same turn, while this process's acquire() waits, passes the wake its waiter took to another process",
  async () => {
    using mem = SharedMemory.create(4096);
    const semaphore = Semaphore.create(mem, 0, { value: 0 });
    const mine = semaphore.acquire();
    await using taker = await childAcquiring(mem);
    semaphore.release();
    mem.close();
    await assert.rejects(mine, Deno.errors.BadResource);
    assert.equal(await taker.out.next("the child's acquire"), "acquired 1");
  },
  children,
);

test(
  "closing a SharedMemory while the process waits on other words hands a wake its kernel entry took to the next waiter, in another process",
  async () => {
    using mem = SharedMemory.create(4096);
    const semaphore = Semaphore.create(mem, 16, { value: 0 });
    const words = new Int32Array(mem.buffer);
    // The first waiter: it also waits on a word of its own memory, so its
    // futex_waitv call goes on once it closes this one.
    await using closer = syncChild(mem, "close-while-waiting", "16");
    assert.equal(await closer.out.next("the closer waiting"), "waiting");
    await until(() => Atomics.load(words, 5) === 1, 20_000, "one waiter");
    await until(
      () => inFutexWaitv(closer.child.pid),
      20_000,
      "the closer in futex_waitv",
    );
    // The second waiter queues behind it in the kernel.
    await using taker = syncChild(mem, "acquire", "16", "1");
    await until(() => Atomics.load(words, 5) === 2, 20_000, "two waiters");
    await until(
      () => inFutexWaitv(taker.child.pid),
      20_000,
      "the taker in futex_waitv",
    );
    Atomics.store(words, 0, 1);
    const lines = [
      await closer.out.next("the closer closing"),
      await closer.out.next("the closer closed"),
    ];
    assert.deepEqual(lines.sort(), ["acquire ended BadResource", "closed"]);
    semaphore.release();
    assert.equal(
      await taker.out.next("the taker's acquire", 20_000),
      "acquired 1",
    );
  },
  children,
);

test(
  "a wait on one more word while 127 words wait (a full futex_waitv call), or 126 and a left one, is armed: another process's notify wakes it",
  async () => {
    for (const left of [false, true]) {
      using mem = SharedMemory.create(4096);
      const stop = new AbortController();
      const many = Array.from(
        { length: 127 },
        (_, i) => mem.wait(i, 0, { signal: stop.signal }).catch(() => {}),
      );
      await until(() => waitPoolBusy(), 5000, "127 waits in the kernel");
      if (left) {
        // One leaves; its entry stays in the call until it is issued anew.
        const one = new AbortController();
        const gone = mem.wait(150, 0, { signal: one.signal });
        await stillPending(gone, 20);
        one.abort();
        await assert.rejects(gone, (e: Error) => e.name === "AbortError");
      }
      const last = mem.wait(200, 0);
      await stillPending(last, 20);
      await using bumper = syncChild(mem, "bump", "200");
      assert.match(await bumper.out.next("the bump") ?? "", /^bumped/);
      assert.equal(
        await withTimeout(last, 10_000, `the wait on word 200 (left ${left})`),
        "ok",
      );
      stop.abort();
      await Promise.all(many);
    }
  },
  children,
);

test(
  "a wait's timeout past 2^31 - 1 ms waits (timers chain) instead of ending at once",
  async () => {
    using mem = SharedMemory.create(64);
    for (const timeout of [2 ** 31, 30 * 86_400_000, Number.MAX_SAFE_INTEGER]) {
      const stop = new AbortController();
      const wait = mem.wait(0, 0, { timeout, signal: stop.signal });
      assert.ok(await stillPending(wait, 50), `timeout ${timeout}`);
      // A notify still ends such a wait.
      const woke = mem.wait(1, 0, { timeout });
      Atomics.store(new Int32Array(mem.buffer), 1, 1);
      mem.notify(1);
      assert.equal(await woke, "ok");
      Atomics.store(new Int32Array(mem.buffer), 1, 0);
      stop.abort();
      await assert.rejects(wait, (e: Error) => e.name === "AbortError");
    }
  },
  local,
);

test(
  "a lock waiting on one holder learns that the next holder died: the lock passed on by an unlock, taken by a process that exits holding it",
  async () => {
    using mem = SharedMemory.create(4096);
    const mutex = Mutex.create(mem, 0);
    const guard = mutex.tryLock()!;
    await using dier = syncChild(mem, "lock-die");
    await until(
      () => inFutexWaitv(dier.child.pid),
      20_000,
      "the first locker waiting",
    );
    await using waiter = syncChild(mem, "lock");
    await until(
      () => holdsPidfd(waiter.child.pid) && inFutexWaitv(waiter.child.pid),
      20_000,
      "the second locker watching this process",
    );
    // The unlock wakes the first locker only; it exits holding the lock.
    guard.unlock();
    assert.equal(await dier.out.next("the first locker"), "locked, exiting");
    await withTimeout(dier.child.status, 20_000, "the first locker's exit");
    assert.equal(
      await waiter.out.next("the second locker", 20_000),
      "locked ownerDied=true",
    );
  },
  children,
);

test(
  "a holder whose main thread ended while another thread holds the lock (a zombie in /proc/<pid>/stat) is alive: the lock waits for its unlock",
  async () => {
    using mem = SharedMemory.create(4096);
    const mutex = Mutex.create(mem, 0);
    await using peer = spawn("python3", {
      args: [fixture("threaded_holder.py")],
      fds: [mem],
      stdout: "piped",
    });
    const out = new Lines(peer.stdout);
    try {
      assert.equal(await out.next("the holder"), "holding");
      await until(
        () => readProcText(`/proc/${peer.pid}/stat`)?.includes(") Z ") ?? false,
        20_000,
        "the holder's main thread ended",
      );
      const locking = mutex.lock({ signal: AbortSignal.timeout(20_000) });
      // Long past the 10 ms after which a lock looks at its holder.
      assert.ok(await stillPending(locking, 300), "the lock was taken");
      const words = new Int32Array(mem.buffer);
      Atomics.store(words, 4, 1);
      mem.notify(4);
      const guard = await locking;
      assert.equal(guard.ownerDied, false);
      assert.equal(Atomics.load(words, 5), 1, "the holder let go first");
      guard.unlock();
    } finally {
      await out.cancel();
    }
  },
  children,
);

const TIME_NAMESPACES = libc().getuid() === 0 &&
  listDir("/usr/bin").includes("unshare") &&
  readProcText("/proc/self/ns/time") !== undefined;
if (!TIME_NAMESPACES) {
  console.log(
    "skipping the time namespace test: it needs root and /usr/bin/unshare",
  );
}

test(
  "a holder in another time namespace (whose start times read differently) is alive until it exits, then the lock is taken with ownerDied",
  async () => {
    using mem = SharedMemory.create(4096);
    const mutex = Mutex.create(mem, 0);
    const holder = spawn("unshare", {
      args: [
        "--time",
        "--boottime",
        "86400",
        DENO,
        "run",
        "--allow-ffi",
        fixture("shm_sync_child.ts"),
        "hold",
      ],
      fds: [mem],
      stdout: "piped",
    });
    const out = new Lines(holder.stdout);
    try {
      assert.equal(await out.next("the holder"), "locked false");
      const locking = mutex.lock({ signal: AbortSignal.timeout(20_000) });
      assert.ok(await stillPending(locking, 300), "the lock was taken");
      holder.kill("SIGKILL");
      const guard = await locking;
      assert.equal(guard.ownerDied, true);
      guard.unlock();
    } finally {
      await out.cancel();
      await holder[Symbol.asyncDispose]();
    }
  },
  children,
  { ignore: !TIME_NAMESPACES },
);

test(
  "after mem.unref(), a lock() that watches its holder's pidfd lets the process exit, whether unref() came before the lock or after",
  async () => {
    using mem = SharedMemory.create(4096);
    const mutex = Mutex.create(mem, 0);
    using _guard = mutex.tryLock()!;
    for (const when of ["before", "after"]) {
      await using child = syncChild(mem, "unref-lock", when);
      assert.equal(await child.out.next("the locker"), "locking");
      await until(
        () => holdsPidfd(child.child.pid),
        20_000,
        "the locker watching this process",
      );
      const status = await withTimeout(
        child.child.status,
        10_000,
        `the locker's exit (unref ${when})`,
      );
      assert.equal(status.success, true);
    }
  },
  children,
);

test(
  "Mutex.holder of a lock word that names no process throws InvalidData; inspect shows the word; a memory too small for any primitive says so",
  () => {
    using mem = SharedMemory.create(4096);
    const mutex = Mutex.create(mem, 0);
    const words = new Int32Array(mem.buffer);
    for (const word of [0x8000_0000 | 0, 0x7fff_ffff, 0x50_0000]) {
      Atomics.store(words, 0, word);
      assert.throws(() => mutex.holder, {
        name: "InvalidData",
        message: `Cannot read Mutex: its shared state is corrupt: lock word 0x${
          (word >>> 0).toString(16)
        } names no process`,
      });
      assert.match(
        Deno.inspect(mutex),
        new RegExp(`corrupt: "lock word 0x${(word >>> 0).toString(16)}"`),
      );
    }
    Atomics.store(words, 0, 0);
    assert.equal(mutex.holder, undefined);
    using small = SharedMemory.create(8);
    assert.throws(() => Mutex.create(small, 0), {
      name: "RangeError",
      message:
        "Cannot create Mutex: the memory has 8 bytes, and a Mutex takes 16",
    });
  },
  local,
);

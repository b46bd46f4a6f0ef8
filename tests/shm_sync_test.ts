import assert from "node:assert/strict";
import {
  Barrier,
  Event,
  Mutex,
  Semaphore,
  SharedMemory,
  spawn,
} from "../mod.ts";
import { procStat, selfId } from "../shm/_owner.ts";
import { waitPoolBusy } from "../shm/wait.ts";
import { exitedOk, syncChild } from "./_shm_sync_util.ts";
import { stillPending, test, until, withTimeout } from "./_util.ts";

const local = { ffi: true } as const;
const children = { ffi: true, run: true, read: true } as const;

/** Writes a mutex's 64-bit lock word as a holder with `pid` and `start` would. */
function forgeHolder(mem: SharedMemory, pid: number, start: number): void {
  const wide = new BigUint64Array(mem.buffer, 0, 1);
  Atomics.store(wide, 0, (BigInt(start >>> 0) << 32n) | BigInt(pid));
}

test(
  "Mutex.create() lays out a free mutex that from() attaches to; from() refuses a region without one, and offsets are checked",
  () => {
    using mem = SharedMemory.create(4096);
    assert.throws(() => Mutex.from(mem, 0), {
      name: "TypeError",
      message:
        "Cannot attach Mutex at offset 0: no Mutex is laid out there (tag 0x0)",
    });
    const mutex = Mutex.create(mem, 64);
    assert.equal(mutex.holder, undefined);
    const same = Mutex.from(mem, 64);
    using guard = same.tryLock();
    assert.ok(guard !== undefined);
    assert.equal(mutex.holder, Deno.pid);
    // Another primitive there is named.
    assert.throws(() => Semaphore.from(mem, 64), {
      name: "TypeError",
      message:
        "Cannot attach Semaphore at offset 64: no Semaphore is laid out there (a Mutex is)",
    });
    assert.throws(() => Mutex.create(mem, 4), RangeError);
    assert.throws(() => Mutex.create(mem, 4096 - 8), RangeError);
    assert.throws(() => Mutex.create(mem, -8), RangeError);
    assert.throws(
      () => Mutex.create({} as unknown as SharedMemory, 0),
      TypeError,
    );
  },
  local,
);

test(
  "lock() waits for the guard held before it in this process; tryLock() never waits; unlock() is idempotent",
  async () => {
    using mem = SharedMemory.create(4096);
    const mutex = Mutex.create(mem, 0);
    const first = await mutex.lock();
    assert.equal(first.ownerDied, false);
    assert.equal(mutex.tryLock(), undefined);
    const second = mutex.lock();
    assert.ok(await stillPending(second, 30));
    first.unlock();
    first.unlock();
    assert.equal(first.held, false);
    const guard = await withTimeout(second, 5000, "the second lock");
    assert.equal(guard.ownerDied, false);
    {
      using _held = guard;
      assert.equal(mutex.tryLock(), undefined);
    }
    assert.equal(mutex.holder, undefined);
    mutex.tryLock()?.unlock();
  },
  local,
);

test(
  "lock() gives up on its signal and on close(), and leaves the mutex usable",
  async () => {
    using mem = SharedMemory.create(4096);
    const mutex = Mutex.create(mem, 0);
    const held = mutex.tryLock()!;
    const reason = new Error("enough");
    const controller = new AbortController();
    const given = mutex.lock({ signal: controller.signal });
    controller.abort(reason);
    await assert.rejects(given, (e) => e === reason);
    const other = Mutex.from(mem, 0);
    const closing = other.lock();
    assert.ok(await stillPending(closing, 20));
    other.close();
    await assert.rejects(closing, Deno.errors.BadResource);
    await assert.rejects(other.lock(), Deno.errors.BadResource);
    held.unlock();
    const again = await withTimeout(mutex.lock(), 5000, "the mutex again");
    again.unlock();
  },
  local,
);

test(
  "4 processes incrementing a counter under one Mutex, 100,000 times in total, end at exactly 100,000",
  async () => {
    using mem = SharedMemory.create(4096);
    Mutex.create(mem, 0);
    Barrier.create(mem, 16, 4);
    const counter = new Int32Array(mem.buffer, 64, 1);
    const kids = Array.from(
      { length: 4 },
      () => syncChild(mem, "count", "25000"),
    );
    try {
      for (const kid of kids) {
        assert.deepEqual(await exitedOk(kid, "a counting child", 120_000), [
          "counted 25000, owner died 0",
        ]);
      }
    } finally {
      for (const kid of kids) await kid[Symbol.asyncDispose]();
    }
    assert.equal(counter[0], 100_000);
    assert.equal(Mutex.from(mem, 0).holder, undefined);
  },
  children,
);

test(
  "a holder killed while holding the mutex: the waiting locker gets it with ownerDied, and the next one without",
  async () => {
    using mem = SharedMemory.create(4096);
    const mutex = Mutex.create(mem, 0);
    await using holder = syncChild(mem, "hold");
    assert.equal(await holder.out.next("the holder"), "locked false");
    assert.equal(mutex.holder, holder.child.pid);
    const waiting = mutex.lock({ signal: AbortSignal.timeout(30_000) });
    // Long enough that the waiter has looked at the holder and watches it.
    assert.ok(await stillPending(waiting, 100));
    holder.child.kill("SIGKILL");
    const guard = await withTimeout(waiting, 30_000, "the lock after the kill");
    assert.equal(guard.ownerDied, true);
    assert.equal(mutex.holder, Deno.pid);
    await using next = syncChild(mem, "lock");
    guard.unlock();
    assert.deepEqual(await exitedOk(next, "the next locker"), [
      "locked ownerDied=false",
    ]);
  },
  children,
);

test(
  "a lock word naming a dead process, a live process with another start time (a recycled pid), or an earlier process with this pid is taken over with ownerDied",
  async () => {
    using mem = SharedMemory.create(4096);
    const mutex = Mutex.create(mem, 0);
    const me = selfId();

    // This process, as itself: held here, tryLock() says no.
    forgeHolder(mem, me.pid, me.start);
    assert.equal(mutex.tryLock(), undefined);

    // An earlier process that had this pid.
    forgeHolder(mem, me.pid, me.start + 1);
    const mine = await withTimeout(mutex.lock(), 5000, "an earlier self");
    assert.equal(mine.ownerDied, true);
    mine.unlock();

    // A process that has exited and been reaped.
    const gone = spawn("true", {});
    await withTimeout(gone.status, 10_000, "true");
    forgeHolder(mem, gone.pid, 12345);
    const reaped = mutex.tryLock();
    assert.equal(reaped?.ownerDied, true);
    reaped!.unlock();

    // A live process whose start time is not the holder's: the pid was
    // recycled, and that process must not be taken for the holder.
    await using sleeper = spawn("sleep", { args: ["30"] });
    const stat = procStat(sleeper.pid);
    assert.ok(stat !== undefined);
    forgeHolder(mem, sleeper.pid, stat.start + 1);
    const recycled = await withTimeout(
      mutex.lock(),
      5000,
      "a recycled pid's lock",
    );
    assert.equal(recycled.ownerDied, true);
    recycled.unlock();

    // The same live process with its own start time holds the lock.
    forgeHolder(mem, sleeper.pid, stat.start);
    assert.equal(mutex.tryLock(), undefined);
    const blocked = mutex.lock();
    assert.ok(await stillPending(blocked, 60));
    sleeper.kill("SIGKILL");
    const after = await withTimeout(blocked, 10_000, "the lock after sleep");
    assert.equal(after.ownerDied, true);
    after.unlock();
  },
  children,
);

test(
  "a corrupt lock word fails lock(), tryLock() and unlock() with InvalidData instead of hanging",
  async () => {
    using mem = SharedMemory.create(4096);
    const mutex = Mutex.create(mem, 0);
    forgeHolder(mem, 0x7fff_ffff, 1);
    assert.throws(() => mutex.tryLock(), Deno.errors.InvalidData);
    await assert.rejects(mutex.lock(), Deno.errors.InvalidData);
    forgeHolder(mem, 0, 0);
    const guard = mutex.tryLock()!;
    forgeHolder(mem, 1, 1); // Someone wrote over the lock.
    assert.throws(() => guard.unlock(), Deno.errors.InvalidData);
    // A waiter parked on it gives up on its signal, not never.
    forgeHolder(mem, selfId().pid, selfId().start);
    await assert.rejects(
      mutex.lock({ signal: AbortSignal.timeout(50) }),
      (e: Error) => e.name === "TimeoutError",
    );
  },
  local,
);

test(
  "Semaphore: acquire() waits for units another process releases; counts are checked",
  async () => {
    using mem = SharedMemory.create(4096);
    assert.throws(
      () => Semaphore.create(mem, 0, { value: 3, max: 2 }),
      RangeError,
    );
    const semaphore = Semaphore.create(mem, 0, { value: 1, max: 5 });
    assert.equal(semaphore.tryAcquire(), true);
    assert.equal(semaphore.tryAcquire(), false);
    const waiting = semaphore.acquire();
    assert.ok(await stillPending(waiting, 20));
    await using child = syncChild(mem, "release", "0", "2");
    assert.deepEqual(await exitedOk(child, "the releasing child"), [
      "released",
    ]);
    await withTimeout(waiting, 10_000, "the acquire");
    assert.equal(semaphore.value, 1);
    assert.throws(() => semaphore.release(5), RangeError);
    assert.equal(semaphore.value, 1);

    // The other way round: a child waits for three units.
    semaphore.tryAcquire();
    await using taker = syncChild(mem, "acquire", "0", "3");
    for (let i = 0; i < 3; i++) {
      semaphore.release();
      await until(() => semaphore.value === 0, 20_000, "a unit taken");
    }
    assert.deepEqual(await exitedOk(taker, "the acquiring child"), [
      "acquired 3",
    ]);

    Atomics.store(new Int32Array(mem.buffer), 0, -5);
    assert.throws(() => semaphore.tryAcquire(), Deno.errors.InvalidData);
    await assert.rejects(semaphore.acquire(), Deno.errors.InvalidData);
    assert.throws(() => semaphore.release(), Deno.errors.InvalidData);
  },
  children,
);

test(
  "Event: a wait ends when another process sets it, or pulses it (set then clear) while it waits",
  async () => {
    using mem = SharedMemory.create(4096);
    const event = Event.create(mem, 32);
    const waiting = event.wait();
    await until(() => waitPoolBusy(), 5000, "the wait in the kernel");
    await using pulser = syncChild(mem, "pulse", "32");
    assert.deepEqual(await exitedOk(pulser, "the pulsing child"), ["pulsed"]);
    await withTimeout(waiting, 10_000, "the wait through a pulse");
    assert.equal(event.isSet, false);

    const second = event.wait();
    assert.ok(await stillPending(second, 20));
    await using setter = syncChild(mem, "set", "32");
    assert.deepEqual(await exitedOk(setter, "the setting child"), ["set"]);
    await withTimeout(second, 10_000, "the wait through a set");
    assert.equal(event.isSet, true);
    await event.wait(); // Set: returns at once.
    event.clear();
    await assert.rejects(
      event.wait({ signal: AbortSignal.timeout(20) }),
      (e: Error) => e.name === "TimeoutError",
    );
  },
  children,
);

test(
  "Barrier: three processes pass it three rounds together; an abandoned wait takes its arrival back",
  async () => {
    using mem = SharedMemory.create(4096);
    const barrier = Barrier.create(mem, 8, 3);
    const kids = [
      syncChild(mem, "barrier", "8", "3"),
      syncChild(mem, "barrier", "8", "3"),
    ];
    try {
      const places: number[][] = [[], [], []];
      for (let round = 0; round < 3; round++) {
        places[round].push(
          await barrier.wait({ signal: AbortSignal.timeout(30_000) }),
        );
      }
      for (const kid of kids) {
        const lines = await exitedOk(kid, "a barrier child");
        for (const line of lines) {
          const [, round, place] = line.match(/^round (\d) place (\d)$/)!;
          places[Number(round)].push(Number(place));
        }
      }
      for (const round of places) {
        assert.deepEqual(round.sort(), [0, 1, 2]);
      }
    } finally {
      for (const kid of kids) await kid[Symbol.asyncDispose]();
    }

    using two = SharedMemory.create(4096);
    const pair = Barrier.create(two, 0, 2);
    const reason = new Error("gave up");
    await assert.rejects(
      pair.wait({ signal: AbortSignal.abort(reason) }),
      (e) => e === reason,
    );
    const controller = new AbortController();
    const abandoned = pair.wait({ signal: controller.signal });
    assert.ok(await stillPending(abandoned, 20));
    controller.abort(reason);
    await assert.rejects(abandoned, (e) => e === reason);
    // Had the arrival stayed, this wait would pass alone.
    const first = pair.wait();
    assert.ok(await stillPending(first, 20));
    const places = await Promise.all([first, pair.wait()]);
    assert.deepEqual(places.sort(), [0, 1]);

    Atomics.store(new Int32Array(two.buffer), 0, 5);
    await assert.rejects(pair.wait(), Deno.errors.InvalidData);
  },
  children,
);

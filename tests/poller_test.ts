import assert from "node:assert/strict";
import { type Pipe, pipe } from "../pipe.ts";
import { libc } from "../ffi/libc.ts";
import { poller, type PollHandle } from "../ffi/poller.ts";
import { cstr } from "../ffi/mem.ts";
import { F, O } from "../ffi/layout.ts";
import {
  delay,
  EPOLL_WAIT_SYSCALLS,
  fixture,
  listDir,
  pollerIdle,
  pollerInterest,
  pollerWaits,
  readProcText,
  runDeno,
  stillPending,
  test,
  until,
  withTimeout,
} from "./_util.ts";

/** Closes both ends of every pipe in `pipes`. */
function closePipes(pipes: Pipe[]): void {
  for (const p of pipes) {
    p.reader.close();
    p.writer.close();
  }
}

const THIS_FILE = new URL(import.meta.url).pathname;
/** The wake path the suite was asked to use (read with the file's permissions). */
const FORCED = Deno.env.get("CONDUIT_IPC_WAKE");

test(
  "1,000 readers waiting at once in one process are all served, and Deno.readTextFile completes while they all wait",
  async () => {
    const count = 1000;
    const pipes = Array.from({ length: count }, () => pipe());
    try {
      const buffers = pipes.map(() => new Uint8Array(4));
      const reads = pipes.map((p, i) => p.reader.read(buffers[i]));
      for (const read of reads) read.catch(() => {});
      assert.ok(await stillPending(Promise.race(reads), 30), "a read resolved");
      assert.equal(poller().size, count);
      assert.equal(pollerInterest().length, count, "not every fd is in epoll");
      assert.ok(pollerWaits() <= 1, `${pollerWaits()} waits in flight`);

      // With one pool thread per waiter, the waits would take every thread
      // of Deno's blocking pool and async file reads would queue behind them
      // until some pipe got data; none gets any before the file is read.
      const text = await withTimeout(
        Deno.readTextFile(THIS_FILE),
        10_000,
        "Deno.readTextFile while 1,000 reads wait",
      );
      assert.ok(text.includes("1,000 readers waiting"));
      assert.ok(await stillPending(Promise.race(reads), 0), "a read resolved");

      for (let i = 0; i < count; i++) {
        const tag = i & 0xff;
        pipes[i].writer.writeSync(new Uint8Array([tag, 255 - tag]));
      }
      const results = await withTimeout(
        Promise.all(reads),
        10_000,
        "all 1,000 reads",
      );
      for (let i = 0; i < count; i++) {
        const tag = i & 0xff;
        assert.equal(results[i], 2, `read ${i}`);
        assert.deepEqual([...buffers[i].subarray(0, 2)], [tag, 255 - tag]);
      }
    } finally {
      closePipes(pipes);
    }
    assert.equal(poller().size, 0);
  },
  { read: [THIS_FILE] },
);

test("the poller keeps at most one epoll_wait in flight, however many fds wait", async () => {
  const count = 64;
  const pipes = Array.from({ length: count }, () => pipe({ capacity: 4096 }));
  let maxWaits = 0;
  let samples = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const waits = pollerWaits();
      maxWaits = Math.max(maxWaits, waits);
      if (waits > 0) samples++;
      await delay(2);
    }
  })();
  try {
    // Every reader and every writer waits at some point: 64 KiB each way
    // through pipes that hold 4 KiB.
    const total = 64 * 1024;
    const work = pipes.flatMap((p, i) => [
      p.writer.write(new Uint8Array(total).fill(i)),
      (async () => {
        const buffer = new Uint8Array(1000);
        let got = 0;
        while (got < total) {
          const n = await p.reader.read(buffer);
          assert.ok(n !== null);
          assert.ok(buffer.subarray(0, n).every((b) => b === i));
          got += n;
          if (got % 7 === 0) await delay(1);
        }
      })(),
    ]);
    await withTimeout(Promise.all(work), 10_000, "64 pipes each way");
    // Park every reader at once and sample the steady state.
    const reads = pipes.map((p) => p.reader.read(new Uint8Array(1)));
    await until(() => pollerWaits() === 1, 2000, "the one wait to start");
    for (let i = 0; i < 20; i++) {
      maxWaits = Math.max(maxWaits, pollerWaits());
      await delay(2);
    }
    for (const p of pipes) p.writer.writeSync(new Uint8Array([1]));
    await withTimeout(Promise.all(reads), 2000, "the parked reads");
  } finally {
    sampling = false;
    await sampler;
    closePipes(pipes);
  }
  assert.ok(samples > 0, "the sampler never saw the poller wait");
  assert.equal(maxWaits, 1, `${maxWaits} epoll_wait calls were in flight`);
});

test("300 fds ready at once (more than one epoll_wait returns) all wake their readers", async () => {
  const count = 300;
  const pipes = Array.from({ length: count }, () => pipe());
  try {
    const reads = pipes.map((p) => p.reader.read(new Uint8Array(1)));
    for (const read of reads) read.catch(() => {});
    await until(() => pollerWaits() === 1, 2000, "the poller to wait");
    for (const p of pipes) p.writer.writeSync(new Uint8Array([7]));
    const results = await withTimeout(Promise.all(reads), 5000, "300 reads");
    assert.ok(results.every((n) => n === 1));
  } finally {
    closePipes(pipes);
  }
});

test("every fd in one batch of events wakes its reader, round after round", async () => {
  // A wait started while a batch is being dispatched would overwrite the
  // events buffer and lose the rest of the batch (one-shot interest is then
  // disarmed, so those readers would wait forever).
  const pipes = Array.from({ length: 50 }, () => pipe());
  try {
    for (let round = 0; round < 100; round++) {
      let woken = 0;
      const reads = pipes.map((p) =>
        p.reader.read(new Uint8Array(1)).then((n) => {
          woken++;
          return n;
        })
      );
      for (const read of reads) read.catch(() => {});
      await until(() => pollerWaits() === 1, 2000, "the poller to wait");
      for (const p of pipes) p.writer.writeSync(new Uint8Array([round]));
      const results = await withTimeout(
        Promise.all(reads),
        2000,
        `round ${round}`,
      ).catch(() => {
        throw new Error(
          `Round ${round}: ${pipes.length - woken} of ${pipes.length} ` +
            "readers were never woken",
        );
      });
      assert.ok(results.every((n) => n === 1));
    }
  } finally {
    closePipes(pipes);
  }
});

test("once every endpoint is closed the poller registers nothing and stops waiting", async () => {
  const pipes = Array.from({ length: 20 }, () => pipe({ capacity: 4096 }));
  try {
    const waits: Promise<unknown>[] = [];
    for (const [i, p] of pipes.entries()) {
      if (i % 2 === 0) {
        waits.push(p.reader.read(new Uint8Array(16)));
      } else {
        waits.push(p.writer.write(new Uint8Array(8192)));
      }
    }
    for (const wait of waits) wait.catch(() => {});
    await until(() => pollerWaits() === 1, 2000, "the poller to wait");
    assert.equal(poller().size, 20);
    assert.equal(poller().busy, true);
    assert.equal(pollerInterest().length, 20);

    closePipes(pipes);
    const results = await withTimeout(
      Promise.allSettled(waits),
      1000,
      "the waits to be rejected",
    );
    assert.ok(results.every((r) => r.status === "rejected"));
    assert.equal(poller().size, 0);
    assert.deepEqual(pollerInterest(), []);
    await pollerIdle(1000);
    assert.equal(pollerWaits(), 0);
  } finally {
    closePipes(pipes);
  }

  // The poller serves the next waiter as before.
  using p = pipe();
  const buffer = new Uint8Array(4);
  const read = p.reader.read(buffer);
  await delay(5);
  p.writer.writeSync(new Uint8Array([9]));
  assert.equal(await withTimeout(read, 2000, "a read after idling"), 1);
  assert.equal(buffer[0], 9);
});

test("a ref'd wait that starts while the poller cancels its wait is still served", async () => {
  using a = pipe();
  using b = pipe();
  const first = a.reader.read(new Uint8Array(4));
  first.catch(() => {});
  await until(() => pollerWaits() === 1, 2000, "the poller to wait");
  // Closing the only waiter kicks the in-flight wait; the next waiter
  // arrives before that wait has returned.
  a.reader.close();
  // On the ffi path the kicked call takes a moment to return; an AIO poll
  // is simply left unref'd.
  if (poller().wakePath.path === "ffi") {
    assert.equal(poller().busy, true, "the cancelled wait returned at once");
  }
  const buffer = new Uint8Array(4);
  const second = b.reader.read(buffer);
  await assert.rejects(first, Deno.errors.BadResource);
  await delay(20);
  assert.equal(poller().busy, true, "nothing waits for the second reader");
  b.writer.writeSync(new Uint8Array([42]));
  assert.equal(await withTimeout(second, 2000, "the second read"), 1);
  assert.equal(buffer[0], 42);
});

test("unref'd waiters are served by zero-timeout polls with no epoll_wait in flight", async () => {
  const pipes = Array.from({ length: 10 }, () => pipe());
  try {
    for (const p of pipes) p.reader.unref();
    const buffers = pipes.map(() => new Uint8Array(4));
    const reads = pipes.map((p, i) => p.reader.read(buffers[i]));
    for (const read of reads) read.catch(() => {});
    assert.ok(await stillPending(Promise.race(reads), 30));
    assert.equal(poller().busy, false);
    assert.equal(pollerWaits(), 0);
    pipes.forEach((p, i) => p.writer.writeSync(new Uint8Array([i])));
    const results = await withTimeout(
      Promise.all(reads),
      2000,
      "unref'd reads",
    );
    results.forEach((n, i) => {
      assert.equal(n, 1);
      assert.equal(buffers[i][0], i);
    });
    assert.equal(poller().busy, false);
  } finally {
    closePipes(pipes);
  }
});

test("closing an unref'd waiter leaves no poll timer behind", async () => {
  // Runs with the op sanitizer on: a leftover timer fails the test.
  using p = pipe();
  p.reader.unref();
  const read = p.reader.read(new Uint8Array(4));
  read.catch(() => {});
  assert.ok(await stillPending(read, 15));
  p.reader.close();
  await assert.rejects(read, Deno.errors.BadResource);
});

test("a script whose endpoints are all closed exits by itself", async () => {
  const run = await runDeno(
    ["run", "--allow-ffi", fixture("pending_read.ts"), "closed"],
    10_000,
    "the script with closed endpoints",
  );
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stdout, "rejected 50 size 0\n");
  assert.ok(run.ms < 5000, `took ${run.ms} ms`);
}, { run: true });

test("the uring wake path is used where the kernel and Deno allow it, unless CONDUIT_IPC_WAKE forces one", async () => {
  const { path, reason } = poller().wakePath;
  if (FORCED === "ffi") {
    assert.equal(path, "ffi");
    assert.match(reason, /forced by CONDUIT_IPC_WAKE=ffi/);
    return;
  }
  // These machines run Linux 6 with io_uring and AIO poll allowed: uring
  // must be chosen, or aio where forced.
  assert.equal(path, FORCED === "aio" ? "aio" : "uring", reason);
  if (FORCED === "aio") assert.match(reason, /forced by CONDUIT_IPC_WAKE=aio/);
  using p = pipe();
  const buffer = new Uint8Array(4);
  const read = p.reader.read(buffer);
  await until(() => poller().busy, 2000, "the poll to be armed");
  // One hand-off: no thread of this process sits in epoll_wait on the set.
  const epfd = poller().epollFd;
  for (const tid of listDir("/proc/self/task")) {
    const fields = (readProcText(`/proc/self/task/${tid}/syscall`) ?? "")
      .split(" ");
    assert.ok(
      !(EPOLL_WAIT_SYSCALLS.includes(Number(fields[0])) &&
        Number(fields[1]) === epfd),
      `thread ${tid} waits in epoll_wait on the poller's set`,
    );
  }
  p.writer.writeSync(new Uint8Array([7]));
  assert.equal(await withTimeout(read, 2000, "the read"), 1);
  assert.equal(buffer[0], 7);
});

test("a wait that epoll refuses (a regular file, here a memfd) rejects, and leaves the poller serving other waits", async () => {
  using p = pipe();
  const buffer = new Uint8Array(4);
  const pending = p.reader.read(buffer);
  pending.catch(() => {});
  // A memfd is a regular file: epoll refuses it with EPERM.
  const fd = libc().memfd_create(cstr("not-pollable"), 1);
  assert.ok(fd >= 0);
  try {
    const handle = poller().register(fd);
    const before = poller().size;
    await assert.rejects(
      () => handle.wait("read"),
      (error: Error) =>
        error instanceof Deno.errors.PermissionDenied &&
        /epoll_ctl.*fd \d+ cannot be waited on/.test(error.message),
    );
    assert.equal(handle.pending, 0, "the refused waiter stayed queued");
    assert.equal(poller().size, before);
    // Closing the handle rejects nothing (no unhandled rejection).
    handle.close();
    p.writer.writeSync(new Uint8Array([5]));
    assert.equal(await withTimeout(pending, 2000, "the pipe's read"), 1);
    assert.equal(buffer[0], 5);
  } finally {
    libc().close(fd);
  }
});

test("a second registration of one fd number is refused while the first lives", async () => {
  using p = pipe();
  const fd = p.reader.rawFd;
  const buffer = new Uint8Array(4);
  const read = p.reader.read(buffer);
  read.catch(() => {});
  assert.throws(
    () => poller().register(fd),
    (error: Error) =>
      error instanceof Deno.errors.AlreadyExists &&
      error.message.includes(`fd ${fd}`),
  );
  p.writer.writeSync(new Uint8Array([3]));
  assert.equal(await withTimeout(read, 2000, "the first owner's read"), 1);
});

test("an fd that epoll takes but an AIO poll refuses (a pipe opened for reading and writing polls two queues) is still waited on", async () => {
  using p = pipe();
  // Reopening the read end through /proc gives a description with both
  // modes: its poll waits on two queues, which epoll takes and AIO does not.
  const fd = libc().open(
    cstr(`/proc/self/fd/${p.reader.rawFd}`),
    O.RDWR | O.CLOEXEC,
    0,
  );
  assert.ok(fd >= 0);
  const handle = poller().register(fd);
  try {
    const woken = handle.wait("read");
    assert.ok(
      await stillPending(woken, 20),
      "the wait settled (or was refused) with nothing to read",
    );
    p.writer.writeSync(new Uint8Array([7]));
    await withTimeout(woken, 2000, "the wait on the two-mode pipe");
  } finally {
    handle.close();
    libc().close(fd);
  }
});

test("waits on an fd that stays ready let timers run: completions taken at submit give way to the event loop after a run of them", async () => {
  // A pipe with data nobody reads: every wait on it finds it ready.
  const p = pipe();
  await p.writer.write(new Uint8Array([1]));
  const handle = poller().register(dupOf(p.reader.rawFd));
  let ticks = 0;
  const timer = setInterval(() => ticks++, 0);
  try {
    for (let i = 0; i < 2_000 && ticks === 0; i++) {
      await withTimeout(handle.wait("read"), 5000, `wait ${i}`);
    }
    assert.ok(ticks > 0, "2,000 waits on a ready fd never let a timer run");
  } finally {
    clearInterval(timer);
    const fd = handle.fd;
    handle.close();
    libc().close(fd);
    closePipes([p]);
  }
});

/** A CLOEXEC duplicate of `fd` (the poller refuses a second handle on one number). */
function dupOf(fd: number): number {
  const copy = libc().fcntl(fd, F.DUPFD_CLOEXEC, 0);
  assert.ok(copy >= 0, "fcntl(F_DUPFD_CLOEXEC) failed");
  return copy;
}

test("waitThen calls ready from the wake-up itself, before the microtasks it queues; a closed handle or an aborted signal calls fail, once", async () => {
  const p = pipe();
  const handle = poller().register(dupOf(p.reader.rawFd));
  const seen: string[] = [];
  try {
    const { promise: woke, resolve } = Promise.withResolvers<void>();
    handle.waitThen("read", () => {
      // Called by the dispatch itself, not from a microtask after it.
      seen.push(
        /PollHandle\.dispatch/.test(new Error().stack ?? "")
          ? "ready"
          : "ready later",
      );
      // The promise wait queued with it settles only after ready() ran.
      resolve();
    }, () => seen.push("fail"));
    const byPromise = handle.wait("read").then(() => seen.push("promise"));
    assert.equal(seen.length, 0);
    p.writer.writeSync(new Uint8Array([1]));
    await withTimeout(Promise.all([woke, byPromise]), 2000, "the wake-up");
    assert.equal(seen.join(), "ready,promise");

    // An aborted signal: fail with its reason, at once or on abort.
    const before = new AbortController();
    before.abort(new Error("before"));
    const failures: unknown[] = [];
    handle.waitThen(
      "write",
      () => seen.push("late"),
      (e) => failures.push(e),
      before.signal,
    );
    const during = new AbortController();
    handle.waitThen(
      "read",
      () => seen.push("late"),
      (e) => failures.push(e),
      during.signal,
    );
    during.abort(new Error("during"));
    assert.deepEqual(failures.map((e) => (e as Error).message), [
      "before",
      "during",
    ]);
    assert.equal(handle.pending, 0, "the aborted wait left the handle");
  } finally {
    const fd = handle.fd;
    handle.close();
    libc().close(fd);
    closePipes([p]);
  }
  // Closed: fail at once with BadResource.
  const failures: unknown[] = [];
  handle.waitThen("read", () => seen.push("late"), (e) => failures.push(e));
  assert.equal(failures.length, 1);
  assert.ok(failures[0] instanceof Deno.errors.BadResource);
  assert.ok(!seen.includes("late"));
});

test("60 fds, more than take a direct poll each: ready callbacks that wait again, close other fds (whose numbers new fds take), or abort other waits leave every wait settled once and every byte read once", async () => {
  const lib = libc();
  let seed = 1;
  const random = () =>
    (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  interface End {
    r: number;
    w: number;
    handle: PollHandle;
    closed: boolean;
    sent: number;
    got: number;
  }
  const fds = new Int32Array(2);
  const open = (): End => {
    assert.equal(lib.pipe2(fds, O.NONBLOCK | O.CLOEXEC), 0, "pipe2");
    const [r, w] = fds;
    const handle = poller().register(r);
    return { r, w, handle, closed: false, sent: 0, got: 0 };
  };
  const shut = (end: End) => {
    if (end.closed) return;
    end.closed = true;
    end.handle.close();
    lib.close(end.r);
    lib.close(end.w);
  };
  const scratch = new Uint8Array(4096);
  const drain = (end: End) => {
    for (;;) {
      const n = Number(lib.read(end.r, scratch, BigInt(scratch.length)));
      if (n <= 0) return;
      end.got += n;
    }
  };
  const put = (end: End, n: number) => {
    if (Number(lib.write(end.w, scratch, BigInt(n))) === n) end.sent += n;
  };
  let ends = Array.from({ length: 60 }, open);
  let issued = 0;
  let settled = 0;
  let twice = 0;
  let aborts: AbortController[] = [];
  const waitOn = (end: End, depth: number): void => {
    if (end.closed) return;
    issued++;
    let done = false;
    const settle = () => {
      if (done) twice++;
      done = true;
      settled++;
    };
    const abort = new AbortController();
    aborts.push(abort);
    end.handle.waitThen(
      "read",
      () => {
        settle();
        drain(end);
        const x = random();
        if (depth > 20) return;
        if (x < 0.3) waitOn(end, depth + 1);
        else if (x < 0.4) shut(ends[Math.floor(random() * ends.length)]);
        else if (x < 0.5) aborts[Math.floor(random() * aborts.length)].abort();
        else if (x < 0.6) {
          waitOn(end, depth + 1);
          waitOn(end, depth + 1);
        } else if (x < 0.65) shut(end);
      },
      settle,
      random() < 0.5 ? abort.signal : undefined,
    );
  };
  try {
    for (let round = 0; round < 12; round++) {
      ends = ends.map((end) => end.closed ? open() : end);
      for (const end of ends) {
        for (let k = Math.floor(random() * 3); k >= 0; k--) waitOn(end, 0);
      }
      if (round === 0 && poller().canPollDirect) {
        // Where fds take direct polls, their slots ran out: both kinds wait.
        assert.ok(poller().directPolls.length > 0, "no fd polled directly");
        assert.ok(ends.some((end) => end.handle.viaSet), "no fd in the set");
      }
      for (const end of ends) {
        if (random() < 0.7) put(end, 1 + Math.floor(random() * 150));
      }
      // A byte to each fd still waited on, until every wait has settled.
      const deadline = performance.now() + 10_000;
      while (settled < issued) {
        if (performance.now() > deadline) {
          assert.fail(
            `round ${round}: ${issued - settled} waits never settled`,
          );
        }
        await delay(0);
        for (const end of ends) {
          if (!end.closed && end.handle.pending > 0) put(end, 1);
        }
      }
      assert.equal(twice, 0, `round ${round}: a wait settled twice`);
      aborts = [];
      for (const end of ends) {
        if (end.closed) continue;
        drain(end);
        assert.equal(end.got, end.sent, `round ${round}: bytes of fd ${end.r}`);
      }
    }
  } finally {
    for (const end of ends) shut(end);
  }
  assert.ok(issued > 1000, `only ${issued} waits`);
  assert.equal(poller().size, 0);
});

// A parked shmQueue end and its doorbell: on the aio wake path Deno's event
// loop reads a duplicate of the doorbell (shm/_bell.ts), on the ffi path the
// poller waits on it. Every test holds on both paths; where it says which
// one parks, it asks the wake path first.
import assert from "node:assert/strict";
import {
  fromFd,
  settled,
  type ShmQueue,
  shmQueue,
  ShmReceiver,
  socketpair,
  spawn,
  wakePath,
} from "../mod.ts";
import { releaseFd } from "../_keys.ts";
import { parkedOn, ringViews } from "../shm/_keys.ts";
import { RECEIVER_WAITING } from "../shm/_ring.ts";
import { message, messageSizes } from "./fixtures/_shm_messages.ts";
import { ERRNO } from "../ffi/errors.ts";
import { libc } from "../ffi/libc.ts";
import { dupCloexec } from "../ffi/fd.ts";
import { F, MSG, O, STAT } from "../ffi/layout.ts";
import { peekHello } from "../shm/_carrier.ts";
import {
  DENO,
  failLibcCall,
  fixture,
  openFds,
  stillPending,
  test,
  until,
  withTimeout,
} from "./_util.ts";

const PEER = fixture("shm_peer.ts");
const local = { ffi: true } as const;
const perms = { ffi: true, read: true, run: true } as const;

/** Where this thread parks a queue end's wait. */
function expectedPark(): "bell" | "poller" {
  return wakePath().path !== "ffi" ? "bell" : "poller";
}

/** Resolves once `end` has a wait parked; throws after 5 s. */
async function parked(end: { [parkedOn](): string | undefined }) {
  await until(() => end[parkedOn]() !== undefined, 5_000, "the park");
  return end[parkedOn]();
}

/** Starts the peer fixture in `mode` with `fds` as fd 3 on. */
function peer(mode: string[], fds: { rawFd: number }[]) {
  return spawn(DENO, {
    args: ["run", "--allow-ffi", "--allow-read", PEER, ...mode],
    fds,
    stdout: "piped",
    stderr: "piped",
  });
}

/** The first chunk a child writes to stdout, trimmed; throws after 20 s. */
async function firstWords(
  lines: ReadableStreamDefaultReader<string>,
  what: string,
): Promise<string> {
  const first = await withTimeout(lines.read(), 20_000, what);
  return first.value?.trim() ?? "";
}

test(
  "after the receiver died parked in recv(), sends that find room still resolve; the one that must wait for room fails with BrokenPipe",
  async () => {
    const [tx, rx] = shmQueue({ bytes: 1024 });
    const child = peer(["park"], [rx]);
    rx.close();
    const lines = child.stdout.pipeThrough(new TextDecoderStream())
      .getReader();
    try {
      assert.match(await firstWords(lines, "the park"), /^parked /);
      child.kill("SIGKILL");
      await withTimeout(child.status, 20_000, "the receiver's death");
      // The first rings the dead receiver's doorbell and finds it gone.
      for (let i = 0; i < 3; i++) {
        await withTimeout(tx.send(new Uint8Array(100)), 5_000, `send ${i}`);
      }
      await assert.rejects(
        withTimeout(tx.send(new Uint8Array(900)), 5_000, "the send that waits"),
        (e: Error) =>
          e instanceof Deno.errors.BrokenPipe &&
          /receiver is gone/.test(e.message),
      );
    } finally {
      await lines.cancel();
      await child.stderr.cancel();
      tx.close();
    }
  },
  perms,
);

test(
  "an aborted receive leaves the doorbell and the flag as they were: the next receive parks and wakes",
  async () => {
    using q = shmQueue({ bytes: 1024 });
    const [tx, rx] = q;
    const controller = new AbortController();
    const pending = rx.recv({ signal: controller.signal });
    assert.equal(await parked(rx), expectedPark());
    const reason = new Error("no longer wanted");
    controller.abort(reason);
    await assert.rejects(
      withTimeout(pending, 5_000, "abort"),
      (e) => e === reason,
    );
    assert.equal(rx[parkedOn](), undefined);
    assert.equal(Atomics.load(rx[ringViews]().header, RECEIVER_WAITING), 0);
    for (let i = 1; i <= 3; i++) {
      const next = rx.recv();
      assert.equal(await parked(rx), expectedPark());
      await tx.send(new Uint8Array([i]));
      assert.deepEqual(
        await withTimeout(next, 5_000, `receive ${i}`),
        new Uint8Array([i]),
      );
    }
  },
  local,
);

/**
 * Parks a receive on `rx`, then sends `[byte]` on `tx` while libc's `send`
 * (the doorbell's) fails `times` times with `code`: the send must succeed
 * and the receive get the byte.
 */
async function wakeThroughFailures(
  [tx, rx]: ShmQueue,
  byte: number,
  times: number,
  code: number,
): Promise<void> {
  const next = rx.recv();
  assert.equal(await parked(rx), expectedPark());
  const undo = failLibcCall("send", times, code);
  try {
    await tx.send(new Uint8Array([byte]));
    assert.deepEqual(
      await withTimeout(next, 5_000, "the woken receive"),
      new Uint8Array([byte]),
    );
  } finally {
    undo();
  }
}

test(
  "a doorbell send whose errno was overwritten is made again: the send succeeds and the parked receiver wakes",
  async () => {
    using q = shmQueue({ bytes: 1024 });
    await wakeThroughFailures(q, 7, 2, ERRNO.ENOENT);
  },
  local,
);

test(
  "a doorbell the kernel refuses for lack of memory (ENOBUFS) is rung again a moment later: neither the send nor the receive that rings it fails",
  async () => {
    using q = shmQueue({ bytes: 64 });
    const [tx, rx] = q;
    // The send that wakes a parked receiver meets ENOBUFS three times.
    await wakeThroughFailures(q, 1, 3, ERRNO.ENOBUFS);
    // A sender parks on a full ring; the receive that makes room rings it
    // through the same refusals.
    await tx.send(new Uint8Array(56));
    const blocked = tx.send(new Uint8Array(56));
    assert.equal(await parked(tx), expectedPark());
    const undo = failLibcCall("send", 3, ERRNO.ENOBUFS);
    try {
      assert.equal((await rx.recv())?.byteLength, 56);
      await withTimeout(blocked, 5_000, "the woken send");
    } finally {
      undo();
    }
    assert.equal((await rx.recv())?.byteLength, 56);
  },
  local,
);

test(
  "closing a receiver with a receive parked rejects it with BadResource and closes every fd it had, the doorbell's duplicate too",
  async () => {
    const before = openFds();
    const [tx, rx] = shmQueue({ bytes: 1024 });
    const pending = rx.recv();
    assert.equal(await parked(rx), expectedPark());
    rx.close();
    await assert.rejects(
      withTimeout(pending, 5_000, "close"),
      Deno.errors.BadResource,
    );
    tx.close();
    // The ffi path's poller lets go of its epoll fd once its wait returns.
    await settled();
    assert.deepEqual(openFds(), before);
  },
  local,
);

test(
  "an end handed over while its receive is parked: that receive rejects, and the new owner is woken by the next send (the old wait takes no ring)",
  async () => {
    const [tx, rx] = shmQueue({ bytes: 1024 });
    const old = rx.recv();
    assert.equal(await parked(rx), expectedPark());
    const moved = fromFd(rx[releaseFd](), { allowCloexec: true });
    try {
      await assert.rejects(
        withTimeout(old, 5_000, "release"),
        Deno.errors.BadResource,
      );
      assert.ok(moved instanceof ShmReceiver);
      for (let i = 1; i <= 3; i++) {
        const next = moved.recv();
        assert.equal(await parked(moved), expectedPark());
        await tx.send(new Uint8Array([i]));
        assert.deepEqual(
          await withTimeout(next, 5_000, `receive ${i} by the new owner`),
          new Uint8Array([i]),
        );
      }
    } finally {
      moved.close();
      tx.close();
    }
  },
  local,
);

test(
  "a receive parked while the sending process is killed wakes with null",
  async () => {
    const [tx, rx] = shmQueue({ bytes: 1024 });
    const child = peer(["hold"], [tx]);
    tx.close();
    try {
      const reader = child.stdout!.pipeThrough(new TextDecoderStream())
        .getReader();
      assert.equal(await firstWords(reader, "child start"), "holding");
      reader.releaseLock();
      const pending = rx.recv();
      assert.equal(await parked(rx), expectedPark());
      assert.ok(await stillPending(pending, 20));
      child.kill("SIGKILL");
      assert.equal(await withTimeout(pending, 10_000, "the end"), null);
      assert.equal((await child.status).signal, "SIGKILL");
    } finally {
      rx.close();
      await child[Symbol.asyncDispose]();
    }
  },
  perms,
);

test(
  "a receiver that parked here and was then handed to a child (spawn, or a socket without closeSent) while this copy stays open: the copy takes none of the child's rings",
  async () => {
    for (const way of ["spawn", "socket"]) {
      const [tx, rx] = shmQueue({ bytes: 1024 });
      // A receive parked here and woken: this end's wait path is set up.
      const first = rx.recv();
      assert.equal(await parked(rx), expectedPark());
      await tx.send(new Uint8Array([9]));
      assert.deepEqual(
        await withTimeout(first, 5_000, "receive here"),
        new Uint8Array([9]),
      );
      const count = 6;
      let child;
      if (way === "spawn") {
        child = peer(["verify", `${count}`, "16"], [rx]);
      } else {
        const [mine, theirs] = socketpair({ type: "seqpacket" });
        child = peer(["via-socket", `${count}`, "16"], [theirs]);
        theirs.close();
        await mine.send(new Uint8Array([1]), { fds: [rx] });
        mine.close();
      }
      try {
        // rx stays open here until the child is done. Each message is sent
        // once the child has parked for it, so each needs its ring.
        const { header } = tx[ringViews]();
        const sizes = messageSizes(count, 16);
        for (let i = 0; i < count; i++) {
          await until(
            () => Atomics.load(header, RECEIVER_WAITING) === 1,
            20_000,
            `the child parked for message ${i} (${way})`,
          );
          await tx.send(message(i, sizes[i]));
        }
        tx.close();
        const out = await withTimeout(child.output(), 20_000, "child");
        assert.equal(
          new TextDecoder().decode(out.stdout),
          `verified ${count}\n`,
        );
        assert.equal(out.code, 0);
      } finally {
        tx.close();
        rx.close();
        await child[Symbol.asyncDispose]();
      }
    }
  },
  perms,
);

/** Runs the peer's `park` mode on a receiver, sending `value` if given. */
async function park(mode: string[], value?: number) {
  const [tx, rx] = shmQueue({ bytes: 1024 });
  const child = peer(["park", ...mode], [rx]);
  rx.close();
  try {
    const lines = child.stdout!.pipeThrough(new TextDecoderStream())
      .getReader();
    const said = (await firstWords(lines, "child parks")).split(" ");
    if (value !== undefined) await tx.send(new Uint8Array([value]));
    let rest = "";
    for (;;) {
      const { done, value: text } = await withTimeout(
        lines.read(),
        20_000,
        "child output",
      );
      if (done) break;
      rest += text;
    }
    const status = await withTimeout(child.status, 20_000, "child exit");
    return { said, rest: rest.trim(), code: status.code };
  } finally {
    tx.close();
    await child[Symbol.asyncDispose]();
  }
}

test(
  "unref() lets a process end whose only work is a parked receive; a ref'd receive keeps it until the message comes",
  async () => {
    for (const when of ["unref", "unref-parked"]) {
      const unrefd = await park([when]);
      // The child's wake path is its default one (it cannot read the env).
      assert.equal(unrefd.said[0], "parked");
      assert.equal(
        unrefd.said[1],
        unrefd.said[3] !== "ffi" ? "bell" : "poller",
      );
      assert.equal(unrefd.code, 0);
      assert.equal(unrefd.rest, "");
    }
    const refd = await park([], 42);
    assert.equal(refd.said[1], refd.said[3] !== "ffi" ? "bell" : "poller");
    assert.equal(refd.rest, "got 42");
    assert.equal(refd.code, 0);
  },
  perms,
);

/** The inode of the file behind `fd`. */
function inode(fd: number): bigint {
  const stat = new Uint8Array(STAT.size);
  assert.equal(libc().fstat(fd, stat), 0);
  return new DataView(stat.buffer).getBigUint64(STAT.ino, true);
}

/** `end` as it arrives in a message: sent over a socket to this process. */
async function receivedEnd(end: ShmReceiver): Promise<ShmReceiver> {
  using pair = socketpair({ type: "seqpacket" });
  await pair[0].send(new Uint8Array([1]), { fds: [end], closeSent: true });
  const got = await withTimeout(pair[1].recv(), 5_000, "the end");
  assert.ok(got !== null && got.fds[0] instanceof ShmReceiver);
  return got.fds[0];
}

test(
  "an end received in a message waits through the poller: its maker clearing O_NONBLOCK on the doorbell's open file, which it shares, blocks nothing",
  async () => {
    const [tx, rx] = shmQueue({ bytes: 1024 });
    // The maker's copies of what the hellos carry: the memfd, the
    // receiver's doorbell (the same open file the child will read) and the
    // sender's, which rings it.
    const lib = libc();
    const rxHello = peekHello(rx.rawFd)!;
    const txHello = peekHello(tx.rawFd)!;
    lib.close(rxHello.fds[0]);
    lib.close(txHello.fds[0]);
    const [doorbell, ringer] = [rxHello.fds[1], txHello.fds[1]];
    const [mine, theirs] = socketpair({ type: "seqpacket" });
    const child = peer(["park-abort"], [theirs]);
    theirs.close();
    try {
      await mine.send(new Uint8Array([1]), { fds: [rx], closeSent: true });
      const lines = child.stdout!.pipeThrough(new TextDecoderStream())
        .getReader();
      assert.equal(await firstWords(lines, "child parks"), "parked poller");
      // Once the wait is set up: a ring with no message wakes it, and it
      // parks again, now on a blocking open file.
      const flags = lib.fcntl(doorbell, F.GETFL, 0);
      assert.equal(lib.fcntl(doorbell, F.SETFL, flags & ~O.NONBLOCK), 0);
      assert.equal(
        Number(lib.send(ringer, new Uint8Array(1), 1n, MSG.DONTWAIT)),
        1,
      );
      // Its signal still ends the receive: the thread was never blocked.
      assert.equal(await firstWords(lines, "the abort"), "aborted");
      lines.releaseLock();
      assert.equal((await withTimeout(child.status, 20_000, "exit")).code, 0);
    } finally {
      lib.close(doorbell);
      lib.close(ringer);
      mine.close();
      rx.close();
      tx.close();
      await child[Symbol.asyncDispose]();
    }
  },
  perms,
);

test(
  "an empty packet on the doorbell is no hang-up: later messages arrive, on the event loop's bell and through the poller",
  async () => {
    for (const received of [false, true]) {
      const [tx, made] = shmQueue({ bytes: 1024 });
      const rx = received ? await receivedEnd(made) : made;
      // The sender's doorbell: what it writes, the receiver's reads.
      const hello = peekHello(tx.rawFd)!;
      const lib = libc();
      lib.close(hello.fds[0]);
      let ringer = hello.fds[1];
      try {
        for (let i = 1; i <= 3; i++) {
          const next = rx.recv();
          // A bell that read an empty packet has stopped: the poller
          // waits from then on.
          assert.equal(
            await parked(rx),
            received || i > 1 ? "poller" : expectedPark(),
          );
          assert.equal(
            Number(lib.send(ringer, new Uint8Array(1), 0n, MSG.DONTWAIT)),
            0,
          );
          assert.ok(await stillPending(next, 20), `receive ${i}`);
          await tx.send(new Uint8Array([i]));
          assert.deepEqual(
            await withTimeout(next, 5_000, `receive ${i}`),
            new Uint8Array([i]),
          );
        }
        // The copy of the doorbell goes first: it would hold it open.
        lib.close(ringer);
        ringer = -1;
        tx.close();
        assert.equal(await withTimeout(rx.recv(), 5_000, "the end"), null);
      } finally {
        if (ringer !== -1) lib.close(ringer);
        tx.close();
        rx.close();
      }
    }
  },
  local,
);

test(
  "an end received in a message stays marked when handed on: adopted again with fromFd(), here or in a child, it waits through the poller",
  async () => {
    // Here: released and adopted again, as a child adopts an inherited fd.
    {
      const [tx, made] = shmQueue({ bytes: 1024 });
      const received = await receivedEnd(made);
      const again = fromFd(received[releaseFd](), { allowCloexec: true });
      try {
        assert.ok(again instanceof ShmReceiver);
        const next = again.recv();
        assert.equal(await parked(again), "poller");
        await tx.send(new Uint8Array([5]));
        assert.deepEqual(
          await withTimeout(next, 5_000, "the receive"),
          new Uint8Array([5]),
        );
      } finally {
        again.close();
        tx.close();
      }
    }
    // An end whose hello says it is marked already gets a carrier of this
    // process's own all the same: its sender may hold the old one.
    {
      const [tx, made] = shmQueue({ bytes: 1024 });
      const first = await receivedEnd(made);
      const old = dupCloexec(first.rawFd);
      try {
        const second = await receivedEnd(first);
        assert.notEqual(inode(second.rawFd), inode(old));
        second.close();
      } finally {
        libc().close(old);
        tx.close();
      }
    }
    // In a child: handed on with spawn().
    const [tx, made] = shmQueue({ bytes: 1024 });
    const received = await receivedEnd(made);
    const child = peer(["park"], [received]);
    received.close();
    try {
      const lines = child.stdout!.pipeThrough(new TextDecoderStream())
        .getReader();
      const said = (await firstWords(lines, "child parks")).split(" ");
      assert.equal(said[1], "poller");
      await tx.send(new Uint8Array([42]));
      assert.equal(await firstWords(lines, "the message"), "got 42");
      lines.releaseLock();
      assert.equal((await withTimeout(child.status, 20_000, "exit")).code, 0);
    } finally {
      tx.close();
      await child[Symbol.asyncDispose]();
    }
  },
  perms,
);

// Deno.test, not test(): the runtime opens and closes fds of its own for a
// Worker.
Deno.test({
  name:
    "a queue end in a Worker parks in the Worker's poller (a terminated Worker runs no code to close an event loop handle) and wakes",
  permissions: { ffi: true, read: true },
  async fn() {
    const worker = new Worker(
      new URL("./fixtures/worker_shm.ts", import.meta.url),
      { type: "module" },
    );
    try {
      const said = new Promise<unknown>((resolve, reject) => {
        worker.onmessage = (e) => resolve(e.data);
        worker.onerror = (e) => reject(new Error(e.message));
      });
      assert.deepEqual(await withTimeout(said, 20_000, "worker"), {
        parked: "poller",
        got: 7,
      });
    } finally {
      worker.terminate();
    }
  },
});

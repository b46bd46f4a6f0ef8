import assert from "node:assert/strict";
import {
  type Endpoint,
  pipe,
  PipeReader,
  PipeWriter,
  socketpair,
  type SocketType,
  spawn,
  UnixSocket,
} from "../mod.ts";
import { libc } from "../ffi/libc.ts";
import { F, O } from "../ffi/layout.ts";
import { cstr } from "../ffi/mem.ts";
import { receiveMessage, sendNoWait } from "../_scm.ts";
import {
  assertNoFdLeak,
  fdInode,
  fixture,
  runDeno,
  stillPending,
  test,
  withTimeout,
} from "./_util.ts";
import { lineOf, readAllText, socketChild } from "./_socket_util.ts";

const PYTHON_PEER = fixture("fd_peer.py");
const TYPES: SocketType[] = ["stream", "dgram", "seqpacket"];
const perms = { ffi: true, read: true } as const;
const childPerms = { ffi: true, read: true, run: true } as const;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function closeAll(endpoints: Endpoint[]): void {
  for (const endpoint of endpoints) endpoint.close();
}

/** Sends "ping" over a socket of any type and returns the 4-byte answer. */
async function pingPong(socket: UnixSocket): Promise<string> {
  await socket.send(encoder.encode("ping"));
  if (socket.type !== "stream") {
    const answer = await withTimeout(socket.recv(), 10_000, "pong");
    return decoder.decode(answer!.data);
  }
  const buf = new Uint8Array(4);
  let got = 0;
  while (got < 4) {
    const n = await withTimeout(socket.read(buf.subarray(got)), 10_000, "pong");
    if (n === null) break;
    got += n;
  }
  return decoder.decode(buf.subarray(0, got));
}

for (const type of TYPES) {
  test(
    `${type}: send({ fds }) passes live endpoints; the sender keeps its copies unless closeSent`,
    async () => {
      using pair = socketpair({ type });
      const [a, b] = pair;
      const p = pipe();
      using extra = socketpair({ type: "seqpacket" });
      await a.send(encoder.encode("two ends"), { fds: [p.writer, extra[0]] });
      // Not asked to close: both still work here.
      assert.equal(p.writer.closed, false);
      assert.equal(extra[0].closed, false);
      const message = await withTimeout(b.recv(), 5_000, "recv");
      assert.ok(message !== null);
      assert.equal(decoder.decode(message.data), "two ends");
      const [writer, socket] = message.fds;
      assert.ok(writer instanceof PipeWriter);
      assert.ok(socket instanceof UnixSocket);
      assert.equal(socket.type, "seqpacket");
      // The same open files, now at new fd numbers of this process.
      assert.equal(fdInode(writer.rawFd), fdInode(p.writer.rawFd));
      assert.notEqual(writer.rawFd, p.writer.rawFd);
      for (const fd of [writer.rawFd, socket.rawFd]) {
        const flags = libc().fcntl(fd, F.GETFD, 0);
        assert.equal(flags & F.FD_CLOEXEC, F.FD_CLOEXEC, "CLOEXEC");
        assert.equal(libc().fcntl(fd, F.GETFL, 0) & O.NONBLOCK, 0);
      }
      await writer.write(encoder.encode("via the received end"));
      writer.close();
      p.writer.close();
      assert.equal(
        await readAllText(p.reader, "pipe"),
        "via the received end",
      );
      await socket.send(encoder.encode("via the received socket"));
      const got = await extra[1].recv();
      assert.equal(decoder.decode(got!.data), "via the received socket");
      socket.close();

      // Asked to close: the sender's copies are closed once sent.
      const q = pipe();
      await a.send(encoder.encode("x"), { fds: [q.reader], closeSent: true });
      assert.equal(q.reader.closed, true);
      const moved = await b.recv();
      assert.ok(moved!.fds[0] instanceof PipeReader);
      await q.writer.write(encoder.encode("moved"));
      q.writer.close();
      assert.equal(
        await readAllText(moved!.fds[0] as PipeReader, "moved"),
        "moved",
      );
      closeAll(moved!.fds);
      p.reader.close();
    },
    perms,
  );
}

test(
  "fds arrive CLOEXEC from the start (MSG_CMSG_CLOEXEC), before any endpoint wraps them",
  () => {
    using pair = socketpair({ type: "seqpacket" });
    const [a, b] = pair;
    using p = pipe();
    a.sendSync(encoder.encode("raw"), { fds: [p.reader, p.writer] });
    // The module's own receive step, below fromFd(), which would set
    // CLOEXEC itself (too late for a spawn on another thread).
    const got = receiveMessage(b.rawFd, new Uint8Array(3), 253, true);
    assert.ok(got !== null);
    assert.equal(got.fds.length, 2);
    for (const fd of got.fds) {
      assert.equal(libc().fcntl(fd, F.GETFD, 0) & F.FD_CLOEXEC, F.FD_CLOEXEC);
      libc().close(fd);
    }
  },
  perms,
);

test(
  "a stream socket receive whose fds are refused (too many, or one that fits no endpoint) keeps its bytes, earlier sends' included, for the next read or receive",
  async () => {
    const cases = [
      ["maxFds", false],
      ["no endpoint", false],
      // The refused receive waited first (its spinner then rests, and the
      // next receive would park without a look).
      ["no endpoint", true],
    ] as const;
    for (const [refusal, waited] of cases) {
      using pair = socketpair();
      const [a, b] = pair;
      const refused = waited ? b.recv({ maxFds: 1 }) : undefined;
      if (refused !== undefined) assert.ok(await stillPending(refused, 300));
      else await a.send(encoder.encode("AAAA"));
      const p = pipe();
      const devNull = libc().open(cstr("/dev/null"), O.RDONLY | O.CLOEXEC, 0);
      assert.ok(devNull >= 0);
      try {
        await a.send(encoder.encode("BBBB"), {
          fds: refusal === "maxFds" ? [p.reader, p.writer] : [devNull],
        });
      } finally {
        libc().close(devNull);
        p.reader.close();
        p.writer.close();
      }
      await assert.rejects(
        withTimeout(refused ?? b.recv({ maxFds: 1 }), 5_000, "recv"),
        refusal === "maxFds" ? RangeError : TypeError,
      );
      let text = "";
      if (waited) {
        // Nothing more is sent until the kept bytes come back.
        const kept = await withTimeout(b.recv(), 5_000, "the kept bytes");
        text += decoder.decode(kept!.data);
      } else {
        // The bytes come back: two through read(), the rest through recv().
        const two = new Uint8Array(2);
        assert.equal(await b.read(two), 2);
        text += decoder.decode(two);
      }
      await a.send(encoder.encode("CCCC"));
      a.close();
      for (;;) {
        const message = await withTimeout(b.recv(), 5_000, "recv");
        if (message === null) break;
        text += decoder.decode(message.data);
        for (const fd of message.fds) fd.close();
      }
      assert.equal(
        text,
        waited ? "BBBBCCCC" : "AAAABBBBCCCC",
        `${refusal}, waited ${waited}`,
      );
    }
  },
  perms,
);

test(
  "a message with more fds than maxFds fails (MSG_CTRUNC) and the fds that arrived are closed",
  async () => {
    using pair = socketpair({ type: "seqpacket" });
    const [a, b] = pair;
    const pipes = [pipe(), pipe(), pipe()];
    await a.send(encoder.encode("three"), {
      fds: pipes.map((p) => p.reader),
    });
    await assert.rejects(
      withTimeout(b.recv({ maxFds: 1 }), 5_000, "recv"),
      (error: Error) =>
        error instanceof RangeError &&
        /more fds than the 1 allowed/.test(error.message),
    );
    // The message is gone, and so is every fd that came with it: if any
    // copy of a read end were left open here, the writers would not see
    // EPIPE below.
    for (const p of pipes) {
      p.reader.close();
      await assert.rejects(
        p.writer.write(new Uint8Array(1)),
        Deno.errors.BrokenPipe,
      );
      p.writer.close();
    }
    // The socket still works.
    await a.send(encoder.encode("after"));
    assert.equal(decoder.decode((await b.recv())!.data), "after");
  },
  perms,
);

test(
  "an fd that fits no endpoint fails the recv with TypeError, and every fd of the message is closed",
  async () => {
    using pair = socketpair({ type: "dgram" });
    const [a, b] = pair;
    const devNull = libc().open(cstr("/dev/null"), O.RDONLY | O.CLOEXEC, 0);
    assert.ok(devNull >= 0);
    const p = pipe();
    try {
      await a.send(encoder.encode("odd"), { fds: [p.reader, devNull] });
    } finally {
      libc().close(devNull);
    }
    await assert.rejects(
      withTimeout(b.recv(), 5_000, "recv"),
      (error: Error) =>
        error instanceof TypeError && /fits no endpoint/.test(error.message),
    );
    p.reader.close();
    await assert.rejects(
      p.writer.write(new Uint8Array(1)),
      Deno.errors.BrokenPipe,
    );
    p.writer.close();
  },
  perms,
);

for (const type of TYPES) {
  test(
    `${type}: a pipe end goes to a child and a pipe end and a socket come back, all used after the trip`,
    async () => {
      const [mine, theirs] = socketpair({ type });
      await using child = socketChild(["fdpass"], theirs);
      const toChild = pipe();
      await mine.send(encoder.encode("hello from the parent"), {
        fds: [toChild.writer],
        closeSent: true,
      });
      assert.equal(toChild.writer.closed, true);
      // EOF comes once the child closes the only writer left: the one it
      // received.
      assert.equal(
        await readAllText(toChild.reader, "the child's write"),
        "child got: hello from the parent",
      );
      toChild.reader.close();
      const back = await withTimeout(mine.recv(), 10_000, "child's fds");
      assert.ok(back !== null);
      assert.equal(decoder.decode(back.data), "from the child");
      const [reader, socket] = back.fds;
      assert.ok(reader instanceof PipeReader, "a PipeReader came back");
      assert.ok(socket instanceof UnixSocket, "a UnixSocket came back");
      assert.equal(socket.type, type);
      assert.equal(
        await readAllText(reader, "the child's pipe"),
        "through the child's pipe",
      );
      assert.equal(await pingPong(socket), "pong");
      closeAll(back.fds);
      const status = await withTimeout(child.status, 10_000, "child exit");
      assert.equal(status.success, true);
      mine.close();
    },
    childPerms,
  );
}

test(
  "1,000 fds passed to a child and back in a loop leave both fd tables as they were",
  async () => {
    const count = 1000;
    const [mine, theirs] = socketpair({ type: "seqpacket" });
    await using child = socketChild(["fdloop", String(count)], theirs);
    const p = pipe();
    using spare = socketpair({ type: "dgram" });
    for (let i = 0; i < count; i++) {
      const end = i % 2 === 0 ? p.reader : spare[0];
      await mine.send(encoder.encode(String(i)), { fds: [end] });
      const back = await withTimeout(mine.recv(), 10_000, `fd ${i} back`);
      assert.equal(decoder.decode(back!.data), String(i));
      assert.equal(back!.fds.length, 1);
      assert.equal(fdInode(back!.fds[0].rawFd), fdInode(end.rawFd));
      closeAll(back!.fds);
    }
    const report = await withTimeout(mine.recv(), 10_000, "report");
    const [word, files, held] = decoder.decode(report!.data).split(" ");
    assert.equal(word, "done");
    assert.equal(files, "2", "the child got the pipe and the socket");
    assert.equal(held, "0", "fds the child still holds of what it received");
    const status = await withTimeout(child.status, 10_000, "child exit");
    assert.equal(status.success, true);
    p[Symbol.dispose]();
    mine.close();
  },
  childPerms,
);

let python: string | null | undefined;
async function findPython(): Promise<string | null> {
  if (python !== undefined) return python;
  try {
    const { success, stdout } = await new Deno.Command("python3", {
      args: [
        "-c",
        "import socket, sys; socket.send_fds; print(sys.executable)",
      ],
      stdout: "piped",
      stderr: "null",
    }).output();
    python = success ? decoder.decode(stdout).trim() : null;
  } catch {
    python = null;
  }
  return python;
}

for (const type of TYPES) {
  test(
    `${type}: a Python peer receives fds from us and sends fds to us (socket.send_fds/recv_fds)`,
    async () => {
      const exe = await findPython();
      if (exe === null) {
        console.log(
          "SKIPPED: python3 (3.9 or later, with socket.send_fds) is not on PATH here",
        );
        return;
      }
      await assertNoFdLeak(async () => {
        const [mine, theirs] = socketpair({ type });
        await using child = spawn(exe, {
          args: [PYTHON_PEER],
          fds: [theirs],
          stdout: "piped",
        });
        theirs.close();
        assert.equal(await lineOf(child.stdout), `python ${type}`);
        const toPython = pipe();
        await mine.send(encoder.encode("hello from deno"), {
          fds: [toPython.writer],
          closeSent: true,
        });
        assert.equal(
          await readAllText(toPython.reader, "python's write"),
          "python got: hello from deno",
        );
        toPython.reader.close();
        const back = await withTimeout(mine.recv(), 10_000, "python's fds");
        assert.ok(back !== null);
        assert.equal(decoder.decode(back.data), "from python");
        const [reader, socket] = back.fds;
        assert.ok(reader instanceof PipeReader);
        assert.ok(socket instanceof UnixSocket);
        assert.equal(socket.type, type);
        assert.equal(
          await readAllText(reader, "python's pipe"),
          "through the python pipe",
        );
        assert.equal(await pingPong(socket), "pong");
        closeAll(back.fds);
        const status = await withTimeout(child.status, 10_000, "python exit");
        assert.equal(status.success, true);
        mine.close();
      });
    },
    childPerms,
  );
}

/** Fills `socket` without blocking; returns how many messages it took. */
function fill(socket: UnixSocket): number {
  let count = 0;
  while (sendNoWait(socket.rawFd, new Uint8Array(8)) >= 0) count++;
  return count;
}

for (const type of TYPES) {
  test(
    `${type}: a queued send carries the fds named at the call, even once their numbers are closed and reused`,
    async () => {
      using pair = socketpair({ type });
      const [a, b] = pair;
      const filler = fill(a);
      assert.ok(filler > 0);
      const sent = pipe();
      const number = sent.reader.rawFd;
      const sending = a.send(encoder.encode("!"), { fds: [number] });
      assert.equal(await stillPending(sending), true, "the send waits");
      // The caller closes the fd it named, and a new pipe takes its number.
      sent.reader.close();
      const other = pipe();
      const reused = [other.reader, other.writer].find((e) =>
        e.rawFd === number
      );
      assert.ok(reused !== undefined, `fd ${number} was reused`);
      await sent.writer.write(encoder.encode("sent pipe"));
      await other.writer.write(encoder.encode("other pipe"));
      sent.writer.close();
      other.writer.close();
      // Take the filler; then the queued message and its fd.
      let fds: Endpoint[] = [];
      if (type === "stream") {
        const message = await withTimeout(
          readUntilFds(b, filler * 8 + 1),
          10_000,
          "the queued send",
        );
        fds = message;
      } else {
        for (let i = 0; i < filler; i++) {
          await withTimeout(b.recv(), 10_000, "filler");
        }
        const message = await withTimeout(b.recv(), 10_000, "the message");
        assert.equal(decoder.decode(message!.data), "!");
        fds = message!.fds;
      }
      await withTimeout(sending, 10_000, "the send settles");
      assert.equal(fds.length, 1);
      const [got] = fds;
      assert.ok(got instanceof PipeReader);
      assert.equal(await readAllText(got, "the received pipe"), "sent pipe");
      got.close();
      other.reader.close();
    },
    perms,
  );
}

/** Stream sockets: receives until `length` bytes came; returns their fds. */
async function readUntilFds(
  socket: UnixSocket,
  length: number,
): Promise<Endpoint[]> {
  const fds: Endpoint[] = [];
  let got = 0;
  while (got < length) {
    const message = await socket.recv();
    if (message === null) throw new Error(`EOF after ${got} bytes`);
    got += message.data.length;
    fds.push(...message.fds);
  }
  return fds;
}

test(
  "closeSent with a queued send: the endpoint closed meanwhile still travels, and the copy is not leaked",
  async () => {
    using pair = socketpair({ type: "seqpacket" });
    const [a, b] = pair;
    const filler = fill(a);
    const sent = pipe();
    const sending = a.send(encoder.encode("x"), {
      fds: [sent.reader],
      closeSent: true,
    });
    assert.equal(await stillPending(sending), true);
    sent.reader.close();
    await sent.writer.write(encoder.encode("still here"));
    sent.writer.close();
    for (let i = 0; i < filler; i++) {
      await withTimeout(b.recv(), 10_000, "filler");
    }
    const message = await withTimeout(b.recv(), 10_000, "the message");
    await sending;
    const [got] = message!.fds as PipeReader[];
    assert.equal(await readAllText(got, "the received pipe"), "still here");
    got.close();
  },
  perms,
);

test(
  "a send naming a closed fd fails at the call, whether it goes at once or waits",
  async () => {
    using pair = socketpair({ type: "dgram" });
    const [a] = pair;
    // A number no fd has (a closed one could be reused meanwhile).
    const number = 2 ** 30;
    await assert.rejects(
      a.send(new Uint8Array(1), { fds: [number] }),
      Deno.errors.BadResource,
    );
    // Behind a send that waits for room, it is refused at the call too.
    fill(a);
    const waiting = a.send(new Uint8Array(1));
    assert.equal(await stillPending(waiting), true);
    await assert.rejects(
      withTimeout(a.send(new Uint8Array(1), { fds: [number] }), 5_000, "send"),
      (error: unknown) =>
        error instanceof Deno.errors.BadResource &&
        error.message.includes(`fds[0] (fd ${number})`),
    );
    a.close();
    await assert.rejects(waiting, Deno.errors.BadResource);
  },
  perms,
);

test(
  "a message whose fds cannot be received because this process's fd table is full says so, and the next message arrives whole",
  async () => {
    const run = await runDeno(
      ["run", "--allow-ffi", fixture("recv_emfile.ts")],
      30_000,
      "a receive at the fd limit",
    );
    assert.equal(run.code, 0, run.stderr);
    assert.equal(
      run.stdout,
      "RangeError: Cannot receive on socket: not all of the message's fds could be received (this process may be out of fds: EMFILE) (control data truncated); the 0 fds that arrived were closed\n" +
        "after: 1 fd\n",
      run.stderr,
    );
  },
  { run: true, read: true },
);

test(
  "a shmQueue end received with too few fds free to take and mark it says the process may be out of fds, and the next one arrives marked",
  async () => {
    // 1 free: its hello's fds cannot be peeked; 3: they can, but the new
    // carrier that marks it cannot be made.
    for (const free of [1, 3]) {
      const run = await runDeno(
        ["run", "--allow-ffi", fixture("recv_shm_emfile.ts"), String(free)],
        30_000,
        `a queue end received with ${free} fds free`,
      );
      assert.equal(run.code, 0, run.stderr);
      assert.equal(
        run.stdout,
        "RangeError: Cannot receive on UnixSocket: fd 1 of 1 in the message could not be made an endpoint (this process may be out of fds: EMFILE); all 1 received fds were closed\n" +
          "after: ShmReceiver, flags 1\n",
        `${free} free: ${run.stderr}`,
      );
    }
  },
  { run: true, read: true },
);

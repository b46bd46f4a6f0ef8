import assert from "node:assert/strict";
import {
  channel,
  fromFd,
  listen,
  pipe,
  PipeWriter,
  SharedMemory,
  shmQueue,
  socketpair,
  spawn,
  UnixSocket,
} from "../mod.ts";
import { libc } from "../ffi/libc.ts";
import { F, O } from "../ffi/layout.ts";
import { cstr } from "../ffi/mem.ts";
import {
  DENO,
  fdTarget,
  fixture,
  openFds,
  runDeno,
  test,
  withTimeout,
} from "./_util.ts";

/** fcntl F_DUPFD: a copy without close-on-exec, as exec would pass it. */
const F_DUPFD = 0;

test(
  "fromFd() imported on its own recognises every kind of endpoint handed to the process",
  async () => {
    using s1 = socketpair({ type: "stream" });
    using s2 = socketpair({ type: "dgram" });
    using s3 = socketpair({ type: "seqpacket" });
    using p = pipe();
    using mem = SharedMemory.create(4096);
    using listener = listen({
      abstract: `conduit-from-fd-${crypto.randomUUID()}`,
      type: "seqpacket",
    });
    using q = shmQueue({ bytes: 4096 });
    using ch = channel<number>();
    const fds = [
      s1[1],
      s2[1],
      s3[1],
      listener,
      p.reader,
      p.writer,
      mem,
      q[0],
      q[1],
      ch[0],
      ch[1],
    ];
    await using child = spawn(DENO, {
      args: [
        "run",
        "--allow-ffi",
        fixture("from_fd_alone.ts"),
        String(fds.length),
      ],
      fds,
      stdout: "piped",
      stderr: "piped",
    });
    const [status, stdout, stderr] = await withTimeout(
      Promise.all([
        child.status,
        new Response(child.stdout).text(),
        new Response(child.stderr).text(),
      ]),
      20_000,
      "from_fd_alone.ts",
    );
    assert.equal(status.code, 0, stderr);
    assert.equal(
      stdout.trim(),
      "UnixSocket:stream UnixSocket:dgram UnixSocket:seqpacket " +
        "UnixListener:seqpacket PipeReader PipeWriter SharedMemory " +
        "ShmSender ShmReceiver Sender Receiver",
    );
  },
  { read: true, run: true },
);

for (const entry of ["socketpair", "channel"]) {
  test(
    `the ${entry} entry point imported on its own makes received fds endpoints`,
    async () => {
      const run = await runDeno(
        ["run", "--allow-ffi", fixture("recv_alone.ts"), entry],
        20_000,
        `recv_alone.ts ${entry}`,
      );
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stdout.trim(), "PipeReader");
    },
    { read: true, run: true },
  );
}

test(
  "fromFd() refuses a close-on-exec fd, names it, says it was not handed over, and leaves it open",
  async () => {
    using p = pipe();
    const fd = p.reader.rawFd;
    assert.throws(
      () => fromFd(fd),
      (error: unknown) =>
        error instanceof TypeError &&
        error.message.includes(`fd ${fd}:`) &&
        /close-on-exec/.test(error.message) &&
        /not handed to this process/.test(error.message) &&
        /spawn\(\.\.\., \{ fds: \[\.\.\.\] \}\)/.test(error.message),
    );
    // Still the pipe's, still working.
    await p.writer.write(new Uint8Array([7]));
    const buf = new Uint8Array(1);
    assert.equal(await p.reader.read(buf), 1);
    assert.equal(buf[0], 7);
  },
);

test(
  "fromFd() says what an fd that fits no endpoint is, and leaves it open",
  () => {
    // /dev/null (a device) and a regular file, opened without O_CLOEXEC as
    // an inherited fd would be.
    for (
      const [path, said] of [
        ["/dev/null", /neither a pipe, a socket nor a regular file/],
        ["/proc/self/stat", /a regular file/],
      ] as const
    ) {
      const fd = libc().open(cstr(path), O.RDONLY, 0);
      assert.ok(fd >= 0, path);
      try {
        assert.throws(
          () => fromFd(fd),
          (error: unknown) =>
            error instanceof TypeError &&
            error.message.includes(`fd ${fd}: it is `) &&
            said.test(error.message) &&
            /fromFd\(\) takes pipe ends, unix sockets/.test(error.message),
          path,
        );
        assert.notEqual(libc().fcntl(fd, F.GETFD, 0), -1, "left open");
      } finally {
        libc().close(fd);
      }
    }
  },
);

test("fromFd() refuses every fd Deno opened for itself", () => {
  // The runtime's reactor (epoll, eventfd) and its internal sockets; the
  // poller's epoll fd and eventfd are close-on-exec as well.
  const theirs = openFds().filter((fd) =>
    /^(anon_inode|socket):/.test(fdTarget(fd) ?? "")
  );
  assert.ok(theirs.length > 0, "the runtime holds some fds");
  for (const fd of theirs) {
    assert.throws(
      () => fromFd(fd),
      (error: unknown) =>
        error instanceof TypeError && /close-on-exec/.test(error.message),
      `fd ${fd} (${fdTarget(fd)})`,
    );
  }
});

test(
  "fromFd() adopts an inherited (not close-on-exec) fd, makes it close-on-exec, and refuses it a second time",
  async () => {
    using p = pipe();
    const inherited = libc().fcntl(p.writer.rawFd, F_DUPFD, 3);
    assert.ok(inherited >= 0);
    assert.equal(libc().fcntl(inherited, F.GETFD, 0) & F.FD_CLOEXEC, 0);
    using writer = fromFd(inherited);
    assert.ok(writer instanceof PipeWriter);
    assert.equal(
      libc().fcntl(inherited, F.GETFD, 0) & F.FD_CLOEXEC,
      F.FD_CLOEXEC,
    );
    assert.throws(
      () => fromFd(inherited),
      /close-on-exec, .* or fromFd\(\) adopted it already/,
    );
    await writer.write(new Uint8Array([1, 2]));
    assert.equal(await p.reader.read(new Uint8Array(4)), 2);
  },
);

test("fromFd(fd, { allowCloexec: true }) adopts a close-on-exec fd", () => {
  using pair = socketpair({ type: "dgram" });
  const copy = libc().fcntl(pair[0].rawFd, F.DUPFD_CLOEXEC, 3);
  using adopted = fromFd(copy, { allowCloexec: true });
  assert.ok(adopted instanceof UnixSocket);
  assert.equal(adopted.type, "dgram");
});

test("fromFd() of an fd that is not open is BadResource naming the fd", () => {
  const fd = 4000; // above anything this test process opens
  assert.equal(fdTarget(fd), undefined, "fd 4000 is free");
  assert.throws(
    () => fromFd(fd),
    (error: unknown) =>
      error instanceof Deno.errors.BadResource &&
      error.message === `Cannot adopt fd ${fd}: it is not open in this process`,
  );
});

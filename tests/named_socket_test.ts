import assert from "node:assert/strict";
import {
  connect,
  fromFd,
  listen,
  type ListenType,
  UnixListener,
  type UnixSocket,
} from "../mod.ts";
import { libc } from "../ffi/libc.ts";
import { SOCK, SOCKADDR_UN } from "../ffi/layout.ts";
import { dupCloexec } from "../ffi/fd.ts";
import {
  assertNoFdLeak,
  pollerIdle,
  stillPending,
  test,
  withTimeout,
} from "./_util.ts";
import { lineOf, socketChild } from "./_socket_util.ts";
import {
  IMPOSTOR_LISTENER,
  lineReader,
  OTHER_UID,
  otherUserSkip,
  spawnOtherUser,
} from "./_other_user.ts";

const perms = { ffi: true, read: true, write: true } as const;
const childPerms = { ffi: true, read: true, write: true, run: true } as const;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Runs `fn` in a new temporary directory, then removes it and all in it. */
async function inTempDir(
  fn: (dir: string) => void | Promise<void>,
): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix: "conduit-sock-" });
  try {
    await fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function uniqueName(): string {
  return `conduit-test-${crypto.randomUUID()}`;
}

/** Lines the child prints, read one at a time. */
function lines(stream: ReadableStream<Uint8Array>): () => Promise<string> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  return async () => {
    while (!buffered.includes("\n")) {
      const { value, done } = await withTimeout(
        reader.read(),
        15_000,
        "a line from the child",
      );
      if (done) {
        reader.releaseLock();
        const rest = buffered;
        buffered = "";
        return rest;
      }
      buffered += value;
    }
    const at = buffered.indexOf("\n");
    const line = buffered.slice(0, at);
    buffered = buffered.slice(at + 1);
    return line;
  };
}

/** Binds a socket at `path` and closes it without removing the file. */
function leaveStaleSocket(path: string): void {
  const lib = libc();
  const fd = lib.socket(SOCK.AF_UNIX, SOCK.STREAM | SOCK.CLOEXEC, 0);
  const addr = new Uint8Array(SOCKADDR_UN.size);
  new DataView(addr.buffer).setUint16(0, SOCK.AF_UNIX, true);
  const name = encoder.encode(path);
  addr.set(name, SOCKADDR_UN.path);
  assert.equal(lib.bind(fd, addr, SOCKADDR_UN.path + name.length + 1), 0);
  assert.equal(lib.listen(fd, 1), 0);
  lib.close(fd);
}

async function serveOne(
  server: UnixListener,
  childPid: number,
): Promise<void> {
  const conn = await withTimeout(server.accept(), 15_000, "accept");
  try {
    const creds = conn.peerCredentials();
    assert.equal(creds.pid, childPid, "the client's pid (SO_PEERCRED)");
    assert.equal(creds.uid, libc().getuid());
    const hello = await withTimeout(conn.recv(), 10_000, "hello");
    assert.equal(decoder.decode(hello!.data), `pid ${childPid}`);
    await conn.send(encoder.encode("bye"));
  } finally {
    conn.close();
  }
}

for (const type of ["stream", "seqpacket"] as ListenType[]) {
  for (const kind of ["path", "abstract"] as const) {
    test(
      `listen({ ${kind} }) and connect() across processes (${type}), with peer credentials checked both ways`,
      async () => {
        await inTempDir(async (dir) => {
          await assertNoFdLeak(async () => {
            const name = kind === "path" ? `${dir}/server.sock` : uniqueName();
            using server = listen(
              kind === "path" ? { path: name, type } : { abstract: name, type },
            );
            assert.equal(server.type, type);
            if (kind === "path") assert.equal(server.path, name);
            else assert.equal(server.abstract, name);
            await using child = socketChild(
              ["connect", kind, name, type],
              undefined,
              kind === "path"
                ? [`--allow-read=${dir}`, `--allow-write=${dir}`]
                : [],
            );
            const line = lines(child.stdout);
            await serveOne(server, child.pid);
            const seen = JSON.parse(await line());
            assert.equal(
              seen.pid,
              Deno.pid,
              "the server's pid, as the client sees it",
            );
            assert.equal(seen.uid, libc().getuid());
            assert.equal(await line(), "bye");
            const status = await withTimeout(child.status, 10_000, "exit");
            assert.equal(status.success, true);
          });
          assert.equal(exists(`${dir}/server.sock`), false, "file removed");
        });
      },
      childPerms,
    );
  }
}

test(
  "a path socket is created owner-only (0600) unless mode says otherwise",
  async () => {
    await inTempDir((dir) => {
      const path = `${dir}/private.sock`;
      {
        using server = listen({ path });
        const info = Deno.lstatSync(path);
        assert.equal(info.isSocket, true);
        assert.equal(info.mode! & 0o777, 0o600);
        void server;
      }
      {
        using server = listen({ path, mode: 0o660 });
        assert.equal(Deno.lstatSync(path).mode! & 0o777, 0o660);
        void server;
      }
      // Nothing but the socket file appears in the directory.
      {
        using server = listen({ path });
        assert.deepEqual(
          [...Deno.readDirSync(dir)].map((e) => e.name),
          ["private.sock"],
        );
        void server;
      }
      assert.deepEqual([...Deno.readDirSync(dir)], []);
      assert.throws(() => listen({ path, mode: 0o1777 }), RangeError);
    });
  },
  perms,
);

test(
  "a socket file left by a crashed server is replaced, not AddrInUse forever",
  async () => {
    await inTempDir(async (dir) => {
      const path = `${dir}/crash.sock`;
      {
        await using child = socketChild(["listen", path], undefined, [
          `--allow-write=${dir}`,
        ]);
        assert.equal(await lineOf(child.stdout), "listening");
        child.kill("SIGKILL");
        assert.equal((await child.status).signal, "SIGKILL");
      }
      assert.equal(Deno.lstatSync(path).isSocket, true, "left behind");
      await assert.rejects(
        connect({ path }),
        Deno.errors.ConnectionRefused,
      );
      // And a socket closed without unlinking, in this process.
      const other = `${dir}/other.sock`;
      leaveStaleSocket(other);
      for (const stale of [path, other]) {
        using server = listen({ path: stale });
        using client = await withTimeout(connect({ path: stale }), 5_000, "c");
        using conn = await withTimeout(server.accept(), 5_000, "accept");
        await client.write(encoder.encode("hi"));
        const buf = new Uint8Array(2);
        assert.equal(await conn.read(buf), 2);
      }
      assert.deepEqual([...Deno.readDirSync(dir)], []);
      await pollerIdle();
    });
  },
  childPerms,
);

test(
  "a live server's socket is never taken over, in this or another process",
  async () => {
    await inTempDir(async (dir) => {
      const path = `${dir}/live.sock`;
      // A live server in another process.
      {
        await using child = socketChild(["listen", path], undefined, [
          `--allow-write=${dir}`,
        ]);
        assert.equal(await lineOf(child.stdout), "listening");
        const inode = Deno.lstatSync(path).ino;
        assert.throws(
          () => listen({ path }),
          (error: Error) =>
            error instanceof Deno.errors.AddrInUse &&
            /a live server is listening on it/.test(error.message),
        );
        assert.equal(Deno.lstatSync(path).ino, inode, "the file is untouched");
        // Still reachable: its queue takes the connection.
        const client = await withTimeout(connect({ path }), 5_000, "connect");
        client.close();
        child.kill("SIGKILL");
        await child.status;
      }
      // A live server in this process, of the other type.
      {
        using first = listen({ path, type: "seqpacket" });
        assert.throws(() => listen({ path }), Deno.errors.AddrInUse);
        assert.throws(
          () => listen({ path, type: "seqpacket" }),
          Deno.errors.AddrInUse,
        );
        // The probes reached it as connections; it still accepts real ones.
        const client = await connect({ path, type: "seqpacket" });
        await client.send(encoder.encode("still mine"));
        // Accept until the real client's message arrives.
        let conn: UnixSocket | undefined;
        for (;;) {
          conn = await withTimeout(first.accept(), 5_000, "accept");
          const message = await withTimeout(conn.recv(), 5_000, "recv");
          if (message !== null) {
            assert.equal(decoder.decode(message.data), "still mine");
            break;
          }
          conn.close();
        }
        conn.close();
        client.close();
      }
      await pollerIdle();
    });
  },
  childPerms,
);

test(
  "abstract names: AddrInUse while a server holds one, free once it closes",
  async () => {
    const name = uniqueName();
    const server = listen({ abstract: name });
    assert.throws(() => listen({ abstract: name }), Deno.errors.AddrInUse);
    server.close();
    using again = listen({ abstract: name });
    using client = await connect({ abstract: name });
    using conn = await again.accept();
    assert.equal(conn.peerCredentials().pid, Deno.pid);
    assert.equal(client.peerCredentials().pid, Deno.pid);
    await assert.rejects(
      connect({ abstract: uniqueName() }),
      Deno.errors.ConnectionRefused,
    );
  },
  perms,
);

test(
  "connect() waits while the server's queue is full, and honours its signal",
  async () => {
    const name = uniqueName();
    // A backlog of 0 queues one connection; the next has to wait.
    using server = listen({ abstract: name, backlog: 0 });
    using first = await withTimeout(connect({ abstract: name }), 5_000, "1");
    const second = connect({ abstract: name });
    assert.equal(await stillPending(second, 30), true);
    const controller = new AbortController();
    const third = connect({ abstract: name, signal: controller.signal });
    assert.equal(await stillPending(third, 10), true);
    const reason = new Error("gave up");
    controller.abort(reason);
    await assert.rejects(
      withTimeout(third, 5_000, "aborted connect"),
      (error) => error === reason,
    );
    // Taking the queued connection makes room: the second one gets in.
    using conn1 = await withTimeout(server.accept(), 5_000, "accept 1");
    using client2 = await withTimeout(second, 5_000, "second connect");
    using conn2 = await withTimeout(server.accept(), 5_000, "accept 2");
    await client2.write(encoder.encode("2"));
    assert.equal(await conn2.read(new Uint8Array(1)), 1);
    void first;
    void conn1;
  },
  perms,
);

test("accept() honours an AbortSignal and leaves nothing pending", async () => {
  using server = listen({ abstract: uniqueName() });
  const controller = new AbortController();
  const pending = server.accept({ signal: controller.signal });
  assert.equal(await stillPending(pending, 20), true);
  const reason = new Error("no longer needed");
  controller.abort(reason);
  await assert.rejects(pending, (error) => error === reason);
  await assert.rejects(
    server.accept({ signal: AbortSignal.abort(reason) }),
    (error) => error === reason,
  );
  // The listener still works afterwards.
  using client = await connect({ abstract: server.abstract! });
  using conn = await withTimeout(server.accept(), 5_000, "accept");
  assert.equal(conn.type, "stream");
  void client;
}, perms);

test(
  "closing a listener ends pending accepts and async iteration with BadResource handled",
  async () => {
    const server = listen({ abstract: uniqueName() });
    const accepted: UnixSocket[] = [];
    const loop = (async () => {
      for await (const conn of server) accepted.push(conn);
    })();
    const clients = [
      await connect({ abstract: server.abstract! }),
      await connect({ abstract: server.abstract! }),
    ];
    while (accepted.length < 2) await new Promise((r) => setTimeout(r, 1));
    const pending = server.accept();
    server.close();
    await assert.rejects(pending, /Cannot use UnixListener: it is closed/);
    await withTimeout(loop, 5_000, "iteration ends");
    for (const s of [...accepted, ...clients]) s.close();
    assert.throws(() => server.rawFd, Deno.errors.BadResource);
  },
  perms,
);

test(
  "close() removes the socket file, but never a file that replaced it or one in the way",
  async () => {
    await inTempDir((dir) => {
      const path = `${dir}/s.sock`;
      const server = listen({ path });
      Deno.removeSync(path);
      Deno.writeTextFileSync(path, "not a socket");
      server.close();
      assert.equal(Deno.readTextFileSync(path), "not a socket");
      assert.throws(
        () => listen({ path }),
        (error: Error) =>
          error instanceof Deno.errors.AlreadyExists &&
          error.message ===
            `Cannot listen on ${path}: a regular file is in the way, and only a socket file left by a server that died is replaced`,
      );
      assert.equal(Deno.readTextFileSync(path), "not a socket");
      assert.deepEqual(
        [...Deno.readDirSync(dir)].map((e) => e.name),
        ["s.sock"],
      );
    });
  },
  perms,
);

test(
  "listen() in a directory that does not exist names that directory, not the private one it would make",
  async () => {
    await inTempDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/file`, "");
      assert.throws(
        () => listen({ path: `${dir}/missing/s.sock` }),
        (error: Error) =>
          error instanceof Deno.errors.NotFound &&
          error.message ===
            `Cannot listen on ${dir}/missing/s.sock: directory ${dir}/missing/ does not exist`,
      );
      assert.throws(
        () => listen({ path: `${dir}/file/s.sock` }),
        (error: Error) =>
          error instanceof Deno.errors.NotADirectory &&
          error.message ===
            `Cannot listen on ${dir}/file/s.sock: ${dir}/file/ is a regular file, not a directory`,
      );
      assert.deepEqual(
        [...Deno.readDirSync(dir)].map((entry) => entry.name),
        ["file"],
      );
    });
  },
  perms,
);

test(
  "connect() names what failed: NotFound, ConnectionRefused, wrong type",
  async () => {
    await inTempDir(async (dir) => {
      await assert.rejects(
        connect({ path: `${dir}/missing.sock` }),
        (error: Error) =>
          error instanceof Deno.errors.NotFound &&
          error.message ===
            `Cannot connect to ${dir}/missing.sock: no socket exists there`,
      );
      leaveStaleSocket(`${dir}/stale.sock`);
      await assert.rejects(
        connect({ path: `${dir}/stale.sock` }),
        /Cannot connect to .*stale.sock: no server is listening/,
      );
      using server = listen({ path: `${dir}/t.sock`, type: "seqpacket" });
      await assert.rejects(
        connect({ path: `${dir}/t.sock` }),
        /the server's socket is of another type/,
      );
      void server;
      await assert.rejects(
        // deno-lint-ignore no-explicit-any
        connect({ path: "/tmp/x", abstract: "y" } as any),
        /give exactly one of path and abstract/,
      );
      assert.throws(
        () => listen({ path: `/tmp/${"x".repeat(120)}` }),
        RangeError,
      );
      assert.throws(
        () => listen({ abstract: "a", type: "dgram" as "stream" }),
        TypeError,
      );
    });
  },
  perms,
);

test(
  "fromFd() adopts a listening socket as a UnixListener",
  async () => {
    await inTempDir(async (dir) => {
      await assertNoFdLeak(async () => {
        const path = `${dir}/adopt.sock`;
        using server = listen({ path });
        const adopted = fromFd(dupCloexec(server.rawFd), {
          allowCloexec: true,
        });
        assert.ok(adopted instanceof UnixListener);
        assert.equal(adopted.path, path);
        using client = await connect({ path });
        using conn = await withTimeout(adopted.accept(), 5_000, "accept");
        await client.write(encoder.encode("x"));
        assert.equal(await conn.read(new Uint8Array(1)), 1);
        // An adopted listener does not own the file: closing it leaves it.
        adopted.close();
        assert.equal(exists(path), true);
      });
    });
  },
  perms,
);

test(
  "connect() checks the server's credentials: expectPid and expectUid refuse a mismatch with PermissionDenied and send nothing",
  async () => {
    using server = listen({ abstract: uniqueName(), type: "seqpacket" });
    const abstract = server.abstract!;
    await assert.rejects(
      connect({ abstract, type: "seqpacket", expectPid: Deno.pid + 1 }),
      (error: unknown) =>
        error instanceof Deno.errors.PermissionDenied &&
        error.message ===
          `Cannot connect to abstract name ${
            JSON.stringify(abstract)
          }: the server is process ${Deno.pid}, not the expected process ${
            Deno.pid + 1
          }; nothing was sent`,
    );
    const other = libc().getuid() + 1;
    await assert.rejects(
      connect({ abstract, type: "seqpacket", expectUid: other }),
      (error: unknown) =>
        error instanceof Deno.errors.PermissionDenied &&
        new RegExp(
          `runs as uid ${libc().getuid()}, not the expected uid ${other}`,
        )
          .test(error.message),
    );
    // The refused connections reached the queue, closed and empty.
    for (let i = 0; i < 2; i++) {
      using conn = await withTimeout(server.accept(), 5_000, "accept");
      assert.equal(await withTimeout(conn.recv(), 5_000, "recv"), null);
    }
    using client = await connect({
      abstract,
      type: "seqpacket",
      expectPid: Deno.pid,
      expectUid: libc().getuid(),
    });
    using conn = await withTimeout(server.accept(), 5_000, "accept");
    await client.send(encoder.encode("checked"));
    const got = await withTimeout(conn.recv(), 5_000, "recv");
    assert.equal(decoder.decode(got!.data), "checked");
    for (const bad of [-1, 1.5, "0", 2 ** 32]) {
      await assert.rejects(
        // deno-lint-ignore no-explicit-any
        connect({ abstract, expectUid: bad as any }),
        TypeError,
      );
    }
    await assert.rejects(connect({ abstract, expectPid: 0 }), TypeError);
  },
  perms,
);

for (const kind of ["path", "abstract"] as const) {
  test(
    `connect({ ${kind} }) refuses a listener of another user before sending anything, unless expectUid names that user`,
    async () => {
      await inTempDir(async (dir) => {
        await assertNoFdLeak(async () => {
          // The other user may create files here.
          Deno.chmodSync(dir, 0o777);
          const where = kind === "path"
            ? `${dir}/server.sock`
            : `@${uniqueName()}`;
          const address = kind === "path"
            ? { path: where }
            : { abstract: where.slice(1) };
          await using impostor = spawnOtherUser(IMPOSTOR_LISTENER, [
            "stream",
            where,
            "2",
          ]);
          const line = lineReader(impostor.stdout!, "the impostor");
          assert.equal(await line(), "listening");
          await assert.rejects(
            connect(address),
            (error: unknown) =>
              error instanceof Deno.errors.PermissionDenied &&
              error.message.includes(
                `the server runs as uid ${OTHER_UID}, not the expected uid ${libc().getuid()}; nothing was sent`,
              ),
          );
          assert.equal(await line(), "received 0");
          // Named explicitly, the same server is accepted.
          const trusted = await connect({ ...address, expectUid: OTHER_UID });
          await trusted.write(encoder.encode("hello"));
          trusted.close();
          assert.equal(await line(), "received 5");
          impostor.stdin!.close();
          const status = await withTimeout(impostor.status, 20_000, "exit");
          assert.equal(status.code, 0);
        });
      });
    },
    childPerms,
    { ignore: otherUserSkip !== undefined },
  );
}

/**
 * Holds a shared flock on the directory `argv[1]` until a line arrives on
 * stdin (or 20 s pass), then says which came first.
 */
const DIRECTORY_LOCKER = `
import fcntl, os, select, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_SH)
print("locked", flush=True)
ready, _, _ = select.select([sys.stdin], [], [], 20)
print("released on request" if ready else "timed out", flush=True)
`;

test(
  "listen({ path }) never waits on a lock another user holds on the directory",
  async () => {
    await inTempDir(async (dir) => {
      await assertNoFdLeak(async () => {
        Deno.chmodSync(dir, 0o755);
        await using locker = spawnOtherUser(DIRECTORY_LOCKER, [dir]);
        const line = lineReader(locker.stdout!, "the locker");
        assert.equal(await line(), "locked");
        // A fresh path, and a stale socket file to replace.
        leaveStaleSocket(`${dir}/stale.sock`);
        for (const name of ["fresh.sock", "stale.sock"]) {
          const path = `${dir}/${name}`;
          using server = listen({ path });
          using client = await connect({ path });
          using conn = await withTimeout(server.accept(), 5_000, "accept");
          await client.write(encoder.encode("x"));
          assert.equal(await conn.read(new Uint8Array(1)), 1);
        }
        // listen() returned while the lock was still held.
        const writer = locker.stdin!.getWriter();
        await writer.write(encoder.encode("done\n"));
        await writer.close();
        assert.equal(await line(), "released on request");
        const status = await withTimeout(locker.status, 20_000, "exit");
        assert.equal(status.code, 0);
      });
    });
  },
  childPerms,
  { ignore: otherUserSkip !== undefined },
);

// inotify, for the test below: its own small symbol table.
const inotify = Deno.dlopen(
  "libc.so.6",
  {
    // int inotify_init1(int flags);
    inotify_init1: { parameters: ["i32"], result: "i32" },
    // int inotify_add_watch(int fd, const char *pathname, uint32_t mask);
    inotify_add_watch: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  } as const,
).symbols;
const IN = {
  NONBLOCK: 0o4000,
  CLOEXEC: 0o2000000,
  ATTRIB: 0x004,
  CREATE: 0x100,
  MOVED_TO: 0x080,
} as const;

/** The inotify events queued on `fd`, as [mask, name] pairs. */
function inotifyEvents(fd: number): [number, string][] {
  const events: [number, string][] = [];
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    const n = Number(libc().read(fd, buf, BigInt(buf.length)));
    if (n <= 0) return events;
    const view = new DataView(buf.buffer, 0, n);
    // struct inotify_event: 0 wd i32, 4 mask u32, 8 cookie u32, 12 len u32,
    // 16 name (NUL-padded to len).
    for (let at = 0; at + 16 <= n;) {
      const mask = view.getUint32(at + 4, true);
      const len = view.getUint32(at + 12, true);
      const raw = buf.subarray(at + 16, at + 16 + len);
      const end = raw.indexOf(0);
      events.push([
        mask,
        decoder.decode(end === -1 ? raw : raw.subarray(0, end)),
      ]);
      at += 16 + len;
    }
  }
}

test(
  "listen({ path }) sets the socket's mode before the file appears, never through its public name",
  async () => {
    await inTempDir(async (dir) => {
      await assertNoFdLeak(() => {
        const watch = inotify.inotify_init1(IN.NONBLOCK | IN.CLOEXEC);
        assert.ok(watch >= 0);
        try {
          assert.ok(
            inotify.inotify_add_watch(
              watch,
              encoder.encode(`${dir}\0`),
              IN.ATTRIB | IN.CREATE | IN.MOVED_TO,
            ) >= 0,
          );
          leaveStaleSocket(`${dir}/stale.sock`);
          inotifyEvents(watch);
          for (const name of ["fresh.sock", "stale.sock"]) {
            // Modes the umask would cut, and the default.
            for (const mode of [0o666, 0o600]) {
              using server = listen({ path: `${dir}/${name}`, mode });
              assert.equal(
                Deno.lstatSync(`${dir}/${name}`).mode! & 0o777,
                mode,
              );
              void server;
            }
          }
          const events = inotifyEvents(watch);
          const published = events.filter(([mask, name]) =>
            name.endsWith(".sock") && (mask & (IN.CREATE | IN.MOVED_TO)) !== 0
          );
          assert.ok(published.length >= 4, JSON.stringify(events));
          // No change of attributes through a name in the shared directory:
          // a name another user could have replaced with a symlink.
          assert.deepEqual(
            events.filter(([mask]) => (mask & IN.ATTRIB) !== 0),
            [],
          );
        } finally {
          libc().close(watch);
        }
      });
    });
  },
  perms,
);

/**
 * Swaps `argv[1]` for a symlink to `argv[2]` over and over, until stdin
 * closes; says "swapping" after its first swap, and at the end how many
 * swaps it made.
 */
const SYMLINK_SWAPPER = `
import os, select, sys
path, target = sys.argv[1], sys.argv[2]
swaps = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    try:
        os.unlink(path)
    except OSError:
        pass
    try:
        os.symlink(target, path)
        swaps += 1
        if swaps == 1:
            print("swapping", flush=True)
    except OSError:
        pass
print("swaps", swaps, flush=True)
`;

test(
  "listen({ path, mode }) never changes the mode of a file another user swaps in by symlink",
  async () => {
    await inTempDir(async (dir) => {
      await assertNoFdLeak(async () => {
        // A directory the other user may change (no sticky bit), and a file
        // of this user's it must not reach.
        const shared = `${dir}/shared`;
        Deno.mkdirSync(shared);
        Deno.chmodSync(dir, 0o755);
        Deno.chmodSync(shared, 0o777);
        const target = `${dir}/secret`;
        Deno.writeTextFileSync(target, "mine");
        Deno.chmodSync(target, 0o600);
        const path = `${shared}/app.sock`;
        await using swapper = spawnOtherUser(SYMLINK_SWAPPER, [path, target]);
        const lines = lineReader(swapper.stdout!, "the swapper");
        // The listens start once the other user swaps (on a busy machine
        // it may take a while to get a CPU).
        assert.equal(await lines(), "swapping");
        let listened = 0;
        for (let i = 0; i < 200; i++) {
          try {
            using server = listen({ path, mode: 0o666 });
            void server;
            listened++;
          } catch (error) {
            // The other user's symlink was in the way, or took the name.
            if (
              !(error instanceof Deno.errors.AlreadyExists) &&
              !(error instanceof Deno.errors.AddrInUse) &&
              !(error instanceof Deno.errors.NotFound)
            ) {
              throw error;
            }
          }
          assert.equal(Deno.statSync(target).mode! & 0o777, 0o600);
        }
        swapper.stdin!.close();
        assert.match(await lines(), /^swaps [1-9]/);
        await withTimeout(swapper.status, 20_000, "the swapper exits");
        assert.ok(listened > 0, "some listens got through");
        assert.equal(Deno.statSync(target).mode! & 0o777, 0o600);
        assert.equal(Deno.readTextFileSync(target), "mine");
      });
    });
  },
  childPerms,
  { ignore: otherUserSkip !== undefined },
);

test(
  "connect() says what is at the path when it is no socket, and which directory is missing or not one",
  async () => {
    await inTempDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/file`, "");
      await Deno.mkdir(`${dir}/sub`);
      const cases: [string, new (message: string) => Error, string][] = [
        [
          `${dir}/file`,
          Deno.errors.ConnectionRefused,
          "it is a regular file, not a socket",
        ],
        [
          `${dir}/sub`,
          Deno.errors.ConnectionRefused,
          "it is a directory, not a socket",
        ],
        [
          `${dir}/missing/deeper/s.sock`,
          Deno.errors.NotFound,
          `directory ${dir}/missing/ does not exist`,
        ],
        [
          `${dir}/file/s.sock`,
          Deno.errors.NotADirectory,
          `${dir}/file/ is a regular file, not a directory`,
        ],
        [`${dir}/sub/s.sock`, Deno.errors.NotFound, "no socket exists there"],
      ];
      for (const [path, Class, detail] of cases) {
        await assert.rejects(
          connect({ path }),
          (error: Error) =>
            error instanceof Class &&
            error.message === `Cannot connect to ${path}: ${detail}`,
          path,
        );
      }
    });
  },
  perms,
);

test(
  "listen() says what is in the way of its path, and which directory on it is not one",
  async () => {
    await inTempDir(async (dir) => {
      await Deno.mkdir(`${dir}/sub`);
      await Deno.writeTextFile(`${dir}/file`, "");
      assert.throws(
        () => listen({ path: `${dir}/sub` }),
        (error: Error) =>
          error instanceof Deno.errors.AlreadyExists &&
          error.message ===
            `Cannot listen on ${dir}/sub: a directory is in the way, and only a socket file left by a server that died is replaced`,
      );
      assert.throws(
        () => listen({ path: `${dir}/file/deeper/s.sock` }),
        (error: Error) =>
          error instanceof Deno.errors.NotADirectory &&
          error.message ===
            `Cannot listen on ${dir}/file/deeper/s.sock: ${dir}/file/ is a regular file, not a directory`,
      );
      assert.deepEqual(
        [...Deno.readDirSync(dir)].map((entry) => entry.name).sort(),
        ["file", "sub"],
        "no private directory was left behind",
      );
    });
  },
  perms,
);

test(
  "listen() and connect() refuse options of the wrong type with a TypeError naming the option",
  async () => {
    // deno-lint-ignore no-explicit-any
    const any = (value: unknown) => value as any;
    const typeError = (message: string) => (error: unknown) =>
      error instanceof TypeError && (error as Error).message === message;
    const name = uniqueName();
    assert.throws(
      () => listen(any(undefined)),
      typeError(
        "Cannot listen: expected { path } or { abstract }, got undefined",
      ),
    );
    assert.throws(
      () => listen({ abstract: name, mode: any("0600") }),
      typeError("Cannot listen: mode must be a number, got string"),
    );
    assert.throws(
      () => listen({ abstract: name, backlog: any("16") }),
      typeError("Cannot listen: backlog must be a number, got string"),
    );
    await assert.rejects(
      connect(any(null)),
      typeError("Cannot connect: expected { path } or { abstract }, got null"),
    );
    await assert.rejects(
      connect({ abstract: name, signal: any("soon") }),
      typeError("Cannot connect: signal must be an AbortSignal, got string"),
    );
    using server = listen({ abstract: name });
    await assert.rejects(
      server.accept({ signal: any(5) }),
      typeError(
        "Cannot accept on UnixListener: signal must be an AbortSignal, got number",
      ),
    );
  },
  perms,
);

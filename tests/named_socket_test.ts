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
  SANITIZE,
  stillPending,
  test,
  withTimeout,
} from "./_util.ts";
import { lineOf, socketChild } from "./_socket_util.ts";

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
    Deno.test({
      name:
        `listen({ ${kind} }) and connect() across processes (${type}), with peer credentials checked both ways`,
      permissions: childPerms,
      ...SANITIZE,
      async fn() {
        await inTempDir(async (dir) => {
          await assertNoFdLeak(async () => {
            const name = kind === "path" ? `${dir}/server.sock` : uniqueName();
            using server = listen(
              kind === "path" ? { path: name, type } : { abstract: name, type },
            );
            assert.equal(server.type, type);
            if (kind === "path") assert.equal(server.path, name);
            else assert.equal(server.abstract, name);
            await using child = socketChild(["connect", kind, name, type]);
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
    });
  }
}

Deno.test({
  name: "a path socket is created owner-only (0600) unless mode says otherwise",
  permissions: perms,
  ...SANITIZE,
  async fn() {
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
});

Deno.test({
  name:
    "a socket file left by a crashed server is replaced, not AddrInUse forever",
  permissions: childPerms,
  ...SANITIZE,
  async fn() {
    await inTempDir(async (dir) => {
      const path = `${dir}/crash.sock`;
      {
        await using child = socketChild(["listen", path]);
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
});

Deno.test({
  name:
    "a live server's socket is never taken over, in this or another process",
  permissions: childPerms,
  ...SANITIZE,
  async fn() {
    await inTempDir(async (dir) => {
      const path = `${dir}/live.sock`;
      // A live server in another process.
      {
        await using child = socketChild(["listen", path]);
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
});

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

Deno.test({
  name:
    "close() removes the socket file, but never a file that replaced it or one in the way",
  permissions: perms,
  ...SANITIZE,
  async fn() {
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
          /a file that is not a socket is in the way/.test(error.message),
      );
      assert.equal(Deno.readTextFileSync(path), "not a socket");
      assert.deepEqual(
        [...Deno.readDirSync(dir)].map((e) => e.name),
        ["s.sock"],
      );
    });
  },
});

Deno.test({
  name: "connect() names what failed: NotFound, ConnectionRefused, wrong type",
  permissions: perms,
  ...SANITIZE,
  async fn() {
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
});

Deno.test({
  name: "fromFd() adopts a listening socket as a UnixListener",
  permissions: perms,
  ...SANITIZE,
  async fn() {
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
});

import assert from "node:assert/strict";
import {
  ChannelClosedError,
  ChannelServer,
  connectOneShot,
  OneShotServer,
  type Receiver,
  ReceiverSet,
  spawn,
} from "../mod.ts";
import { libc } from "../ffi/libc.ts";
import {
  assertNoFdLeak,
  DENO,
  fixture,
  listDir,
  readProcText,
  runDeno,
  stillPending,
  test,
  until,
  withTimeout,
  zombieChildren,
} from "./_util.ts";
import {
  IMPOSTOR_LISTENER,
  lineReader,
  OTHER_UID,
  otherUserSkip,
  spawnOtherUser,
} from "./_other_user.ts";

const CHILD = fixture("channel_child.ts");
const EXAMPLE = new URL("../examples/ipc_channel.ts", import.meta.url).pathname;

test(
  "OneShotServer.accept() returns the receiver and the first message, and the name leaves no file",
  async () => {
    const server = new OneShotServer<{ n: number }>();
    assert.match(server.name, /^conduit-oneshot\/[0-9a-f]{32}$/);
    using other = new OneShotServer();
    assert.notEqual(server.name, other.name);
    const listed = () => readProcText("/proc/net/unix") ?? "";
    assert.ok(listed().includes(`@${server.name}`), "listening");
    const accepting = server.accept({ timeout: 5000 });
    const tx = await connectOneShot<{ n: number }>(server.name);
    await tx.send({ n: 1 });
    await tx.send({ n: 2 });
    const [rx, first] = await accepting;
    assert.deepEqual(first, { n: 1 });
    assert.deepEqual(await rx.recv(), { n: 2 });
    tx.close();
    await assert.rejects(rx.recv(), ChannelClosedError);
    rx.close();
    // Used up: the name is free, nothing listens, no file anywhere.
    assert.ok(!listed().includes(`@${server.name}`), "not listening");
    await assert.rejects(
      connectOneShot(server.name),
      Deno.errors.ConnectionRefused,
    );
    await assert.rejects(server.accept(), Deno.errors.BadResource);
  },
  { ffi: true },
);

test(
  "a second OneShotServer.accept() while the first waits rejects at once, naming OneShotServer; the first still serves its client",
  async () => {
    using server = new OneShotServer<string>();
    const accepting = server.accept({ timeout: 5000 });
    await assert.rejects(
      server.accept({ timeout: 5000 }),
      (error: unknown) =>
        error instanceof Deno.errors.BadResource &&
        /OneShotServer/.test(error.message) &&
        /already called/.test(error.message),
    );
    using tx = await connectOneShot<string>(server.name);
    await tx.send("first");
    const [rx, first] = await accepting;
    assert.equal(first, "first");
    rx.close();
  },
  { ffi: true },
);

test(
  "OneShotServer.accept() honours its timeout and signal and leaves no fd",
  async () => {
    const timed = new OneShotServer();
    await assert.rejects(
      timed.accept({ timeout: 50 }),
      (error: unknown) =>
        error instanceof Deno.errors.TimedOut &&
        error.message ===
          "Cannot accept on OneShotServer: no client connected within 50 ms",
    );

    const aborted = new OneShotServer();
    const controller = new AbortController();
    const pending = aborted.accept({ signal: controller.signal });
    assert.ok(await stillPending(pending, 20));
    controller.abort();
    await assert.rejects(
      pending,
      (e: unknown) => e instanceof DOMException && e.name === "AbortError",
    );

    // A client that connects but never sends: the timeout still holds,
    // and says what was missing.
    const silent = new OneShotServer();
    const tx = await connectOneShot(silent.name);
    await assert.rejects(
      silent.accept({ timeout: 50 }),
      (error: unknown) =>
        error instanceof Deno.errors.TimedOut &&
        error.message ===
          "Cannot accept on OneShotServer: a client connected but sent no message within 50 ms",
    );
    tx.close();
    // A bad timeout is refused before the one accept is taken: the server
    // still serves its client after.
    const server = new OneShotServer<string>();
    await assert.rejects(server.accept({ timeout: -1 }), RangeError);
    // Past a timer's limit a timer would fire at once.
    for (const timeout of [2 ** 31, Infinity]) {
      await assert.rejects(
        server.accept({ timeout }),
        (error: unknown) =>
          error instanceof RangeError &&
          error.message ===
            `Cannot accept on OneShotServer: timeout must be between 0 and 2147483647 milliseconds (a timer's limit), got ${timeout}`,
      );
    }
    await assert.rejects(
      server.accept({ timeout: "5" as unknown as number }),
      (error: unknown) =>
        error instanceof TypeError &&
        error.message ===
          "Cannot accept on OneShotServer: timeout must be a number of milliseconds, got string",
    );
    const client = await connectOneShot<string>(server.name);
    await client.send("still here");
    const [rx, first] = await withTimeout(server.accept(), 5000, "accept");
    assert.equal(first, "still here");
    client.close();
    rx.close();
  },
  { ffi: true },
);

test(
  "the servers drop connections of users that allowUid refuses (unit seam)",
  async () => {
    const seen: number[] = [];
    const server = new OneShotServer<string>({
      allowUid: (uid) => {
        seen.push(uid);
        return false;
      },
    });
    const tx = await connectOneShot<string>(server.name);
    await tx.send("let me in");
    await assert.rejects(
      server.accept({ timeout: 200 }),
      Deno.errors.TimedOut,
    );
    assert.deepEqual(seen, [libc().getuid()]);
    await assert.rejects(tx.send("again"), ChannelClosedError);
    tx.close();
  },
  { ffi: true },
);

test(
  "OneShotServer drops a client of another user (a real process under setpriv)",
  async () => {
    await assertNoFdLeak(async () => {
      const server = new OneShotServer<string>();
      // nobody connects, says hello and sends "intruder", then reports
      // whether the server hung up on it.
      const script = `
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(b"\\0" + sys.argv[1].encode())
print("connected", flush=True)
# The server may hang up before the sends: that is a drop as well.
try:
    s.send(struct.pack("<BBHIII", 7, 1, 0, 4, 0, 0))
    s.send(struct.pack("<BBHIII", 1, 1, 0, 0, 11, 10) + bytes([7, 8]) + b"intruder" + bytes([0]))
    s.settimeout(10)
    print("dropped" if s.recv(64) == b"" else "answered", flush=True)
except (BrokenPipeError, ConnectionResetError):
    print("dropped", flush=True)
`;
      await using intruder = spawn("setpriv", {
        args: [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          "/usr/bin/python3",
          "-c",
          script,
          server.name,
        ],
        stdout: "piped",
      });
      const lines = intruder.stdout!.pipeThrough(new TextDecoderStream())
        .getReader();
      let output = "";
      const accepting = server.accept({ timeout: 10_000 });
      // The intruder is queued first; then this user connects.
      while (!output.includes("connected\n")) {
        const { value, done } = await withTimeout(
          lines.read(),
          10_000,
          "intruder connects",
        );
        if (done) break;
        output += value;
      }
      const tx = await connectOneShot<string>(server.name);
      await tx.send("friend");
      const [rx, first] = await accepting;
      assert.equal(first, "friend");
      const status = await withTimeout(intruder.status, 10_000, "intruder");
      for (;;) {
        const { value, done } = await lines.read();
        if (done) break;
        output += value;
      }
      assert.equal(output, "connected\ndropped\n");
      assert.equal(status.code, 0);
      tx.close();
      rx.close();
    });
    assert.deepEqual(zombieChildren(), []);
  },
  { ffi: true, run: true, read: true },
  {
    ignore: libc().getuid() !== 0 || listDir("/usr/bin").indexOf("setpriv") < 0,
  },
);

test(
  "OneShotServer.accept() of a client that closes before its first message fails with ChannelClosedError saying so",
  async () => {
    const server = new OneShotServer<string>();
    const tx = await connectOneShot<string>(server.name);
    tx.close();
    await assert.rejects(
      withTimeout(server.accept({ timeout: 10_000 }), 20_000, "accept"),
      (error: unknown) =>
        error instanceof ChannelClosedError &&
        error.message ===
          "Cannot accept on OneShotServer: the client closed its sender before its first message",
    );
    assert.equal(server.closed, true);
  },
);

/**
 * Connects to the abstract name `argv[1]` and hangs up, again and again
 * (a flood the server drops, one connection at a time), saying "flooding"
 * after the first thousand attempts. Stops at a line on stdin ("stopped")
 * or after 30 s ("capped").
 */
const CONNECT_FLOOD = `
import select, socket, sys, time
name = b"\\0" + sys.argv[1].encode()
end = time.time() + 30
n = 0
while time.time() < end:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.setblocking(False)
    try:
        s.connect(name)
    except OSError:
        pass
    s.close()
    n += 1
    if n == 1000:
        print("flooding", flush=True)
    if n % 256 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        print("stopped", flush=True)
        sys.exit(0)
print("capped", flush=True)
`;

test(
  "under another user's flood of connections, a ChannelServer's accept timeout fires while the flood goes on, and this user's client gets in",
  async () => {
    // How often the flood keeps the queue full depends on the machine; the
    // turn a listener yields between slices of accepts, without which such
    // a flood can starve the event loop, is shown to be needed by
    // read_fairness_test.ts, with connections queued before the loop.
    using server = new ChannelServer<string>();
    await using flooder = spawnOtherUser(CONNECT_FLOOD, [server.name]);
    const line = lineReader(flooder.stdout!, "the flooder");
    const writer = flooder.stdin!.getWriter();
    try {
      assert.equal(await line(), "flooding");
      // The timeout is a timer: it fires only if the event loop turns
      // while the server drops the flood's connections.
      await assert.rejects(
        server.accept({ timeout: 200 }),
        Deno.errors.TimedOut,
      );
      const accepting = server.accept({ timeout: 20_000 });
      const tx = await connectOneShot<string>(server.name);
      await tx.send("friend");
      using rx = await accepting;
      assert.equal(await rx.recv(), "friend");
      tx.close();
      await writer.write(new TextEncoder().encode("stop\n"));
      // The flood still ran when all of the above was done.
      assert.equal(await line(), "stopped");
    } finally {
      await writer.close().catch(() => {});
      await withTimeout(flooder.status, 40_000, "the flooder exits");
    }
  },
  { ffi: true, run: true, read: true },
  { ignore: otherUserSkip !== undefined },
);

test(
  "ChannelServer serves several concurrent client processes",
  async () => {
    await assertNoFdLeak(async () => {
      using server = new ChannelServer<{ pid: number; i: number }>();
      const clients = Array.from({ length: 4 }, () =>
        spawn(DENO, {
          args: ["run", "--allow-ffi", CHILD, "client", server.name, "25"],
          stdin: "null",
        }));
      try {
        using set = new ReceiverSet<{ pid: number; i: number }>();
        const receivers: Receiver<unknown>[] = [];
        for (let i = 0; i < clients.length; i++) {
          const rx = await server.accept({ timeout: 15_000 });
          receivers.push(rx);
          set.add(rx);
        }
        const counts = new Map<number, number[]>();
        let open = clients.length;
        while (open > 0) {
          const event = await withTimeout(set.select(), 15_000, "select");
          if (event.closed) {
            open--;
            continue;
          }
          const list = counts.get(event.value.pid) ?? [];
          list.push(event.value.i);
          counts.set(event.value.pid, list);
        }
        assert.deepEqual(
          [...counts.keys()].sort(),
          clients.map((c) => c.pid).sort(),
        );
        for (const list of counts.values()) {
          assert.deepEqual(list, Array.from({ length: 25 }, (_, i) => i));
        }
        for (const c of clients) {
          const status = await withTimeout(c.status, 15_000, "client");
          assert.equal(status.success, true);
        }
      } finally {
        for (const c of clients) await c[Symbol.asyncDispose]();
      }
      // Closing the server ends a pending iteration.
      const iterating = (async () => {
        for await (const rx of server) rx.close();
      })();
      server.close();
      await withTimeout(iterating, 2000, "iteration ends at close");
    });
    assert.deepEqual(zombieChildren(), []);
  },
  { ffi: true, run: true, read: true },
);

test(
  "the seed flow: examples/ipc_channel.ts talks to its child end to end",
  async () => {
    const run = await runDeno(
      ["run", "--allow-ffi", "--allow-run", EXAMPLE],
      30_000,
      "ipc_channel example",
    );
    assert.equal(run.code, 0, run.stderr);
    const lines = run.stdout.split("\n");
    for (
      const line of [
        "Parent process started",
        "Received from child: Child received: Hello from parent",
        "Received from child: Child received: How are you?",
        "Received from child: Child received: Goodbye!",
        "Child process finished.",
        "Child process started",
        "Received from parent: Hello from parent",
        "Received from parent: How are you?",
        "Received from parent: Goodbye!",
        "Received from parent: quit",
        "Child process exiting.",
      ]
    ) {
      assert.ok(
        lines.some((l) => l.endsWith(line)),
        `missing ${JSON.stringify(line)} in ${run.stdout}`,
      );
    }
    assert.match(
      run.stdout,
      /Crossed from the child: a Sender .* and a Receiver/,
    );
    assert.equal(
      lines.filter((l) => l.includes("Child received:")).length,
      3,
    );
  },
  { run: true, read: true },
);

test(
  "connectOneShot() refuses a released server name taken by another user, and sends it nothing",
  async () => {
    await assertNoFdLeak(async () => {
      // Names released both ways: an accept that timed out, a closed server.
      const oneShot = new OneShotServer<string>();
      await assert.rejects(
        oneShot.accept({ timeout: 1 }),
        Deno.errors.TimedOut,
      );
      const server = new ChannelServer<string>();
      server.close();
      for (const name of [oneShot.name, server.name]) {
        await using impostor = spawnOtherUser(IMPOSTOR_LISTENER, [
          "seqpacket",
          `@${name}`,
          "1",
        ]);
        const line = lineReader(impostor.stdout!, "the impostor");
        assert.equal(await line(), "listening");
        await assert.rejects(
          connectOneShot<string>(name),
          (error: unknown) =>
            error instanceof Deno.errors.PermissionDenied &&
            error.message.includes(`the server runs as uid ${OTHER_UID}`),
        );
        // Not even the hello reached it.
        assert.equal(await line(), "received 0");
        const status = await withTimeout(impostor.status, 20_000, "exit");
        assert.equal(status.code, 0);
      }
    });
    assert.deepEqual(zombieChildren(), []);
  },
  { ffi: true, run: true, read: true },
  { ignore: otherUserSkip !== undefined },
);

test(
  "connectOneShot() passes expectUid and expectPid on: a server of the expected process is accepted, another refused",
  async () => {
    using server = new ChannelServer<string>();
    await assert.rejects(
      connectOneShot(server.name, { expectPid: Deno.pid + 1 }),
      Deno.errors.PermissionDenied,
    );
    const tx = await connectOneShot<string>(server.name, {
      expectPid: Deno.pid,
      expectUid: libc().getuid(),
    });
    // The refused connection is dropped by the server; the accepted one
    // arrives with its message.
    await tx.send("expected");
    let rx: Receiver<string> | undefined;
    for (;;) {
      rx = await server.accept({ timeout: 5000 });
      try {
        assert.equal(await withTimeout(rx.recv(), 5000, "recv"), "expected");
        break;
      } catch (error) {
        rx.close();
        if (!(error instanceof ChannelClosedError)) throw error;
      }
    }
    tx.close();
    rx.close();
  },
  { ffi: true },
);

test(
  'connectOneShot({ mode: "bytes" }) makes a bytes channel, as the deprecated bytes: true still does; a disagreement is a TypeError',
  async () => {
    using server = new ChannelServer<Uint8Array>();
    for (const options of [{ mode: "bytes" }, { bytes: true }] as const) {
      using tx = await connectOneShot<Uint8Array>(server.name, options);
      // Only a bytes channel refuses what is not a Uint8Array.
      await assert.rejects(
        tx.send("text" as unknown as Uint8Array),
        /must be a Uint8Array/,
      );
      await tx.send(new Uint8Array([1, 2]));
      using rx = await server.accept({ timeout: 5000 });
      assert.deepEqual(
        await withTimeout(rx.recv(), 5000, "recv"),
        new Uint8Array([1, 2]),
      );
    }
    using values = await connectOneShot<unknown>(server.name, {
      mode: "values",
    });
    await values.send("text");
    using rx = await server.accept({ timeout: 5000 });
    assert.equal(await withTimeout(rx.recv(), 5000, "recv"), "text");
    await assert.rejects(
      connectOneShot(server.name, { mode: "bytes", bytes: false }),
      (error: unknown) =>
        error instanceof TypeError && /disagree/.test(error.message),
    );
    await assert.rejects(
      connectOneShot(server.name, {
        mode: "binary" as unknown as "bytes",
      }),
      (error: unknown) =>
        error instanceof TypeError && /mode must be/.test(error.message),
    );
  },
  { ffi: true },
);

test(
  "a closed server names itself, not its listener, in the BadResource of a pending or later accept",
  async () => {
    const many = new ChannelServer();
    const pending = many.accept();
    many.close();
    const closed = {
      name: "BadResource",
      message: "Cannot use ChannelServer: it is closed",
    };
    await assert.rejects(pending, closed);
    await assert.rejects(many.accept(), closed);
    const one = new OneShotServer();
    one.close();
    await assert.rejects(one.accept(), {
      name: "BadResource",
      message: "Cannot use OneShotServer: it is closed",
    });
  },
);

test(
  "a server's allowUid that is not a function is a TypeError at construction, not at the first client",
  () => {
    for (const Server of [OneShotServer, ChannelServer]) {
      assert.throws(
        () => new Server({ allowUid: 0 as unknown as () => boolean }),
        {
          name: "TypeError",
          message:
            "Cannot create server: allowUid must be a function of a uid, got number",
        },
      );
    }
  },
);

test(
  "OneShotServer unref() lets the process exit while accept() waits; ref() makes the wait keep it alive again",
  async () => {
    const mod = new URL("../mod.ts", import.meta.url).href;
    const script = (refAgain: boolean) =>
      `import { OneShotServer } from ${JSON.stringify(mod)};
      const server = new OneShotServer();
      server.unref();
      console.log(Deno.inspect(server).includes("ref: false"));
      ${refAgain ? "server.ref();" : ""}
      server.accept().catch(() => {});
      // A timer that does not keep the process alive: it fires only if the
      // accept does.
      Deno.unrefTimer(setTimeout(() => {
        console.log("alive");
        server.close();
      }, 300));`;
    for (
      const [refAgain, printed] of [[false, "true"], [
        true,
        "true\nalive",
      ]] as const
    ) {
      const run = await runDeno(
        ["eval", "--ext=ts", script(refAgain)],
        20_000,
        refAgain ? "an accept ref'd again" : "an unref'd accept",
        { CONDUIT_IPC_WAKE: Deno.env.get("CONDUIT_IPC_WAKE") ?? "" },
      );
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stdout.trim(), printed);
    }
  },
  { run: true, read: true, env: true },
);

for (const mode of ["server", "listener"] as const) {
  const what = mode === "server" ? "ChannelServer" : "UnixListener";
  test(
    `a for await loop over a ${what} waits out a full fd table (EMFILE) instead of ending; a plain accept() rejects; and a close() meanwhile ends the loop`,
    async () => {
      // The fixture queues a client, fills its fd table, and 50 ms after
      // its loop starts gives the fds back, or closes the server.
      for (
        const [then, expected] of [
          ["free", "explicit EMFILE\ngot hi\nexit\n"],
          ["close", "explicit EMFILE\nended quietly\nexit\n"],
        ]
      ) {
        const run = await runDeno(
          ["run", "--allow-ffi", fixture("accept_emfile.ts"), mode, then],
          30_000,
          `accept at the fd limit (${mode}, ${then})`,
        );
        assert.equal(run.code, 0, run.stderr);
        assert.equal(run.stdout, expected, `${then}: ${run.stderr}`);
      }
    },
    { run: true, read: true },
  );
}

test(
  "close() ends a pending accept() whose client connected and has not sent yet",
  async () => {
    const server = new OneShotServer<string>();
    const tx = await connectOneShot<string>(server.name);
    try {
      const accepting = server.accept();
      // The client is accepted once the accept stops listening.
      await until(() => server.closed, 5_000, "the client accepted");
      server.close();
      await assert.rejects(
        withTimeout(accepting, 5_000, "the accept after close()"),
        (error: unknown) =>
          error instanceof Deno.errors.BadResource &&
          error.message ===
            "Cannot accept on OneShotServer: it was closed while waiting for the client's first message",
      );
    } finally {
      tx.close();
      server.close();
    }
  },
);

test(
  "close() in the turn a large first message yields after it is taken: accept() resolves with it and an open receiver",
  async () => {
    const server = new OneShotServer<Uint8Array>();
    const tx = await connectOneShot<Uint8Array>(server.name);
    try {
      await tx.send(new Uint8Array(8 << 20));
      const accepting = server.accept();
      await new Promise((resolve) => setImmediate(resolve));
      server.close();
      const [rx, first] = await withTimeout(accepting, 5_000, "the accept");
      assert.equal(first.byteLength, 8 << 20);
      assert.equal(rx.closed, false);
      await tx.send(Uint8Array.of(2));
      assert.deepEqual(await rx.recv(), Uint8Array.of(2));
      rx.close();
    } finally {
      tx.close();
      server.close();
    }
  },
);

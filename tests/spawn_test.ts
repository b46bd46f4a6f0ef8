import assert from "node:assert/strict";
import {
  type ChildProcess,
  type ChildStatus,
  pipe,
  spawn,
  type SpawnOptions,
} from "../mod.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { libc } from "../ffi/libc.ts";
import {
  childPids,
  delay,
  DENO,
  fdTarget,
  fixture,
  openFds,
  pollerIdle,
  procFds,
  procFdTarget,
  readProcText,
  runDeno,
  stillPending,
  test,
  until,
  withTimeout,
  zombieChildren,
} from "./_util.ts";
import { readAllText } from "./_socket_util.ts";

const CHILD = new URL("./fixtures/spawn_child.ts", import.meta.url).pathname;
const perms = { ffi: true, read: true, run: true, env: true } as const;
const decoder = new TextDecoder();

test(
  "spawn() hands endpoints to the child as fd 3, 4, ... in order, even when fd numbers collide",
  async () => {
    // Target i gets writer i % 24, with as many targets as it takes to
    // cover every writer's own fd number: installing one target must not
    // clobber a source that a later target still needs.
    const pipes = Array.from({ length: 24 }, () => pipe());
    const top = Math.max(...pipes.map((p) => p.writer.rawFd));
    const count = top - 2;
    const fds = Array.from({ length: count }, (_, i) => pipes[i % 24].writer);
    const child = spawn(DENO, {
      args: ["run", "--allow-ffi", CHILD, "write-index", String(count)],
      fds,
    });
    for (const p of pipes) p.writer.close();
    const got = await Promise.all(
      pipes.map((p, i) => readAllText(p.reader, `pipe ${i}`)),
    );
    const expected = pipes.map((_, j) =>
      Array.from({ length: count }, (_, i) => i)
        .filter((i) => i % 24 === j).join("")
    );
    assert.deepEqual(got, expected);
    assert.deepEqual(await withTimeout(child.status, 10_000, "child"), {
      success: true,
      code: 0,
      signal: null,
    });
    for (const p of pipes) p.reader.close();
  },
  perms,
);

test(
  "spawn() passes the child nothing but stdio and the listed fds",
  async () => {
    const { reader, writer } = pipe();
    const extra = pipe(); // open in the parent, not listed: must not leak
    await using child = spawn("sleep", { args: ["30"], fds: [writer] });
    // sleep opens files while it starts (locale data); list its fds once
    // it sits in clock_nanosleep (syscall 230).
    await until(
      () =>
        readProcText(`/proc/${child.pid}/syscall`)?.startsWith("230 ") ===
          true,
      10_000,
      "the child to sleep",
    );
    assert.deepEqual(procFds(child.pid), [0, 1, 2, 3]);
    assert.equal(procFdTarget(child.pid, 3), fdTarget(writer.rawFd));
    writer.close();
    reader.close();
    extra[Symbol.dispose]();
  },
  perms,
);

test(
  "spawn() connects stdio as asked: piped streams, /dev/null, and an endpoint given as stdout",
  async () => {
    const child = spawn("sh", {
      args: ["-c", "cat; echo err >&2"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    });
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode("through stdin\n"));
    await w.close();
    const out = await withTimeout(child.output(), 10_000, "output");
    assert.equal(decoder.decode(out.stdout), "through stdin\n");
    assert.equal(decoder.decode(out.stderr), "err\n");
    assert.equal(out.success, true);

    const sink = pipe();
    const quiet = spawn("sh", {
      args: ["-c", "cat; echo to-endpoint"],
      stdin: "null",
      stdout: sink.writer,
    });
    sink.writer.close();
    assert.equal(
      await readAllText(sink.reader, "endpoint stdout"),
      "to-endpoint\n",
    );
    assert.equal((await quiet.status).code, 0);
    sink.reader.close();
    assert.throws(() => quiet.stdout, TypeError);

    // Output that was not piped is no empty array: reading it throws, as
    // Deno.CommandOutput's does.
    const half = await withTimeout(
      spawn("sh", {
        args: ["-c", "echo out; echo err >&2; exit 4"],
        stdout: "piped",
        stderr: "null",
      }).output(),
      10_000,
      "output with stderr not piped",
    );
    assert.equal(decoder.decode(half.stdout), "out\n");
    assert.equal(half.code, 4);
    assert.throws(() => half.stderr, {
      name: "TypeError",
      message: "Cannot get 'stderr': 'stderr' is not piped",
    });
    const none = await withTimeout(
      spawn("true", { stdout: "null" }).output(),
      10_000,
      "output with nothing piped",
    );
    assert.equal(none.success, true);
    assert.throws(() => none.stdout, {
      name: "TypeError",
      message: "Cannot get 'stdout': 'stdout' is not piped",
    });
  },
  perms,
);

test(
  "spawn() adds env to this environment, with clearEnv passes env alone, starts the child in cwd, and refuses a variable name with =",
  async () => {
    const a = await spawn("sh", {
      args: ["-c", 'printf "%s|%s|%s" "$CONDUIT_X" "$HOME" "$(pwd)"'],
      env: { CONDUIT_X: "one two" },
      cwd: "/tmp",
      stdout: "piped",
    }).output();
    assert.equal(
      decoder.decode(a.stdout),
      `one two|${Deno.env.get("HOME") ?? ""}|/tmp`,
    );
    const b = await spawn("/usr/bin/env", {
      clearEnv: true,
      env: { ONLY: "this" },
      stdout: "piped",
    }).output();
    assert.equal(decoder.decode(b.stdout), "ONLY=this\n");
    assert.throws(
      () => spawn("true", { env: { "A=B": "x" } }),
      TypeError,
    );
    await pollerIdle();
  },
  perms,
);

test(
  "spawn() of a command that does not exist throws NotFound and leaves no zombie or fd",
  () => {
    const p = pipe();
    assert.throws(
      () =>
        spawn("conduit-no-such-command", {
          fds: [p.writer],
          stdout: "piped",
        }),
      (e: unknown) =>
        e instanceof Deno.errors.NotFound &&
        e.message.includes("conduit-no-such-command"),
    );
    assert.deepEqual(childPids(), []);
    p[Symbol.dispose]();
  },
  perms,
);

test(
  "ChildProcess.kill() signals through the pidfd and status reports the signal",
  async () => {
    const child = spawn("sleep", { args: ["30"] });
    child.kill("SIGKILL");
    assert.deepEqual(await withTimeout(child.status, 5000, "status"), {
      success: false,
      code: 137,
      signal: "SIGKILL",
    });
    assert.throws(() => child.kill(), TypeError);
    assert.throws(() => spawn("true").kill("SIGNOPE" as "SIGTERM"), TypeError);
    const exit3 = await spawn("sh", { args: ["-c", "exit 3"] }).status;
    assert.deepEqual(exit3, { success: false, code: 3, signal: null });
    await pollerIdle();
  },
  perms,
);

test(
  "spawn() kills the child with SIGTERM when its AbortSignal fires",
  async () => {
    const controller = new AbortController();
    const child = spawn("sleep", { args: ["30"], signal: controller.signal });
    setTimeout(() => controller.abort(), 20);
    const status = await withTimeout(child.status, 5000, "aborted child");
    assert.equal(status.signal, "SIGTERM");
    assert.throws(
      () => spawn("true", { signal: AbortSignal.abort(new Error("early")) }),
      /early/,
    );
    await pollerIdle();
  },
  perms,
);

test(
  "await using ends a running child with SIGTERM and reaps it",
  async () => {
    let pid = 0;
    let status: Promise<ChildStatus> | undefined;
    {
      await using child = spawn("sleep", { args: ["30"], stdout: "piped" });
      pid = child.pid;
      status = child.status;
    }
    assert.equal((await status).signal, "SIGTERM");
    assert.ok(!childPids().includes(pid), "the child must be reaped");
    assert.equal(readProcText(`/proc/${pid}/stat`), undefined);
    await pollerIdle();
  },
  perms,
);

/**
 * Reads `stream` until `word` has come, then releases it (nobody reads it
 * any more).
 */
async function untilSaid(
  stream: ReadableStream<Uint8Array>,
  word: string,
): Promise<void> {
  const reader = stream.getReader();
  try {
    let text = "";
    while (!text.includes(word)) {
      const { value, done } = await withTimeout(
        reader.read(),
        10_000,
        `the child to say ${word}`,
      );
      if (done) {
        throw new Error(`The child ended before it said ${word}: ${text}`);
      }
      text += decoder.decode(value);
    }
  } finally {
    reader.releaseLock();
  }
}

test(
  "await using leaves an output that is being read to its reader, which gets the rest and the end; an output nobody reads is closed",
  async () => {
    // 10,000 bytes fit in the pipe: once stderr says "written", they are all
    // in it, and the scope's end kills the sleep that follows.
    let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
    let fds = 0;
    {
      await using child = spawn("sh", {
        args: [
          "-c",
          "head -c 10000 /dev/zero; echo written >&2; exec sleep 30",
        ],
        stdout: "piped",
        stderr: "piped",
      });
      reader = child.stdout.getReader();
      // Read, then released: stderr is not being read at the scope's end,
      // which closes it.
      await untilSaid(child.stderr, "written");
      fds = openFds().length;
    }
    let got = 0;
    for (;;) {
      const { value, done } = await withTimeout(
        reader.read(),
        10_000,
        "stdout to its end",
      );
      if (done) break;
      got += value.byteLength;
    }
    assert.equal(got, 10_000, "all of stdout, read after the scope ended");
    // Its end closed stdout; stderr was closed by the scope's end (test()
    // finds no fd left open).
    assert.ok(openFds().length < fds);
  },
  perms,
);

/** Reads the child's stdout until it has said `ready`. */
function untilReady(child: ChildProcess): Promise<void> {
  return untilSaid(child.stdout, "ready");
}

test(
  "await using a child that cleans up on SIGTERM lets it: the child exits by itself after its handler ran",
  async () => {
    using note = pipe();
    let status: Promise<ChildStatus> | undefined;
    {
      // The handler runs once the current short sleep has returned.
      await using child = spawn("sh", {
        args: [
          "-c",
          "trap 'echo cleaned up >&3; exit 7' TERM; echo ready; while :; do sleep 0.01; done",
        ],
        fds: [note.writer],
        stdout: "piped",
        killGrace: 60_000,
      });
      note.writer.close();
      status = child.status;
      await untilReady(child);
    }
    assert.deepEqual(await status, { success: false, code: 7, signal: null });
    assert.equal(
      await readAllText(note.reader, "the child's note"),
      "cleaned up\n",
    );
  },
  perms,
);

test(
  "a child that ignores SIGTERM: await using waits for it, and with killGrace SIGKILL follows, also after an abort",
  async () => {
    const stubborn = (options: SpawnOptions = {}) =>
      spawn("sh", {
        args: ["-c", "trap '' TERM; echo ready; exec sleep 60"],
        stdout: "piped",
        ...options,
      });

    // No killGrace: SIGTERM and a wait that lasts while the child runs.
    const patient = stubborn();
    await untilReady(patient);
    const disposed = patient[Symbol.asyncDispose]();
    assert.ok(await stillPending(disposed, 50), "dispose did not wait");
    assert.ok(childPids().includes(patient.pid));
    patient.kill("SIGKILL");
    await withTimeout(disposed, 10_000, "dispose after SIGKILL");
    assert.equal((await patient.status).signal, "SIGKILL");

    // killGrace: SIGKILL once it has passed.
    const graced = stubborn({ killGrace: 20 });
    await untilReady(graced);
    await withTimeout(
      graced[Symbol.asyncDispose](),
      10_000,
      "dispose with killGrace",
    );
    assert.equal((await graced.status).signal, "SIGKILL");

    // The same after an aborted signal.
    const controller = new AbortController();
    const aborted = stubborn({ killGrace: 20, signal: controller.signal });
    await untilReady(aborted);
    controller.abort();
    const status = await withTimeout(aborted.status, 10_000, "aborted");
    assert.equal(status.signal, "SIGKILL");
    await aborted.stdout.cancel();
    assert.deepEqual(childPids(), []);
  },
  perms,
);

test(
  "spawn() checks killGrace: a TypeError for a non-number, a RangeError out of range",
  () => {
    assert.throws(
      () => spawn("true", { killGrace: "5" as unknown as number }),
      TypeError,
    );
    for (const killGrace of [-1, NaN, 2 ** 31]) {
      assert.throws(() => spawn("true", { killGrace }), RangeError);
    }
    assert.deepEqual(childPids(), []);
  },
  perms,
);

test(
  "spawn() restores SIGPIPE's default, so `yes | head` ends quietly",
  async () => {
    const out = await withTimeout(
      spawn("sh", {
        args: ["-c", "yes | head -n 2"],
        stdout: "piped",
        stderr: "piped",
      }).output(),
      10_000,
      "yes | head",
    );
    assert.equal(decoder.decode(out.stdout), "y\ny\n");
    assert.equal(decoder.decode(out.stderr), "");
    await pollerIdle();
  },
  perms,
);

test(
  "1,000 spawn-and-reap cycles leave no zombie and no extra fd",
  async () => {
    for (let i = 0; i < 1000; i++) {
      const status = await withTimeout(
        spawn("/bin/true").status,
        5000,
        `spawn ${i}`,
      );
      assert.equal(status.success, true);
    }
    assert.deepEqual(childPids(), []);
  },
  perms,
);

test(
  "a child killed with SIGKILL mid-stream gives the parent EOF, and a writer BrokenPipe",
  async () => {
    // The child writes; the parent reads until the kill gives EOF.
    const down = pipe();
    const writer = spawn(DENO, {
      args: ["run", "--allow-ffi", CHILD, "stream-forever"],
      fds: [down.writer],
      stdout: "piped",
    });
    down.writer.close();
    const buf = new Uint8Array(64 * 1024);
    let total = 0;
    while (total < 1 << 20) {
      const n = await withTimeout(down.reader.read(buf), 10_000, "stream");
      assert.notEqual(n, null);
      total += n!;
    }
    writer.kill("SIGKILL");
    let n: number | null = 0;
    while (n !== null) {
      n = await withTimeout(down.reader.read(buf), 5000, "EOF after kill");
    }
    assert.equal((await writer.status).signal, "SIGKILL");
    down.reader.close();
    await writer.stdout.cancel();

    // The child reads; the parent's writes fail with BrokenPipe once killed.
    const up = pipe();
    const reader = spawn(DENO, {
      args: ["run", "--allow-ffi", CHILD, "read-forever"],
      fds: [up.reader],
      stdout: "piped",
    });
    up.reader.close();
    const started = reader.stdout.getReader();
    await withTimeout(started.read(), 10_000, "child start");
    started.releaseLock();
    reader.kill("SIGKILL");
    await reader.status;
    await assert.rejects(
      withTimeout(
        (async () => {
          for (;;) await up.writer.write(new Uint8Array(64 * 1024));
        })(),
        5000,
        "BrokenPipe after kill",
      ),
      Deno.errors.BrokenPipe,
    );
    up.writer.close();
    await reader.stdout.cancel();
  },
  perms,
);

test(
  "an unref'd child does not keep the process alive",
  async () => {
    const script = `
      import { spawn } from ${
      JSON.stringify(new URL("../mod.ts", import.meta.url).href)
    };
      const child = spawn("sleep", { args: ["30"], stdout: "null", stderr: "null" });
      child.unref();
      // Its piped output being read keeps nothing alive either.
      const piped = spawn("sleep", {
        args: ["30"], stdin: "null", stdout: "piped", stderr: "piped",
      });
      piped.stdout.pipeTo(new WritableStream());
      piped.stderr.pipeTo(new WritableStream());
      piped.unref();
      console.log(child.pid, piped.pid);
    `;
    const out = await runDeno(
      ["eval", script],
      10_000,
      "script with an unref'd child",
    );
    assert.equal(out.code, 0, out.stderr);
    const pids = out.stdout.trim().split(" ").map(Number);
    assert.equal(pids.length, 2);
    // The orphaned sleeps keep running; end them so they do not outlive the
    // test.
    for (const pid of pids) {
      assert.ok(pid > 0);
      Deno.kill(pid, "SIGKILL");
    }
    await pollerIdle();
  },
  perms,
);

test(
  "an unref'd child's piped stdin still takes a write that was awaited: the process stays for it, as in Deno",
  async () => {
    const out = await Deno.makeTempFile();
    try {
      const script = `
        import { spawn } from ${
        JSON.stringify(new URL("../mod.ts", import.meta.url).href)
      };
        const child = spawn("sh", {
          args: ["-c", "sleep 0.3; wc -c > ${out}"],
          stdin: "piped", stdout: "null", stderr: "null",
        });
        child.unref();
        const w = child.stdin.getWriter();
        await w.write(new Uint8Array(1 << 20));
        await w.close();
      `;
      const run = await runDeno(
        ["eval", script],
        20_000,
        "script writing to an unref'd child's stdin",
      );
      assert.equal(run.code, 0, run.stderr);
      // The child finishes on its own: wait for what it counted.
      let counted = "";
      for (let i = 0; i < 100 && counted === ""; i++) {
        await new Promise((r) => setTimeout(r, 50));
        counted = (await Deno.readTextFile(out)).trim();
      }
      assert.equal(counted, String(1 << 20));
    } finally {
      await Deno.remove(out);
    }
  },
  { ...perms, write: true },
);

test(
  "spawn() near the fd limit either fails before a child exists or watches it to the end: no child left, no fd leaked, no unhandled rejection",
  async () => {
    // The fixture lowers its own RLIMIT_NOFILE and, for 0, 1, 2, ... free
    // fd slots, fills the table and spawns `true` (plain, and with a piped
    // stdout plus one passed fd, which need more fds before the spawn).
    for (const mode of ["plain", "piped"]) {
      const run = await runDeno(
        [
          "run",
          "--allow-ffi",
          "--allow-run",
          fixture("spawn_fd_limit.ts"),
          mode,
          "12",
        ],
        60_000,
        `spawn at the fd limit (${mode})`,
      );
      assert.equal(run.code, 0, run.stderr);
      const lines = run.stdout.trim().split("\n").map((line) =>
        JSON.parse(line)
      );
      const { unhandled } = lines.pop();
      assert.deepEqual(unhandled, [], `${mode}: rejections nobody handled`);
      assert.equal(lines.length, 13, run.stdout);
      let started = false;
      for (const { free, outcome, children, leaked } of lines) {
        const what = `${mode}, ${free} free fds`;
        assert.deepEqual(children, [], `${what}: children left (${outcome})`);
        assert.deepEqual(leaked, [], `${what}: fds leaked`);
        if (outcome === "exited 0") {
          started = true;
        } else {
          assert.equal(outcome, "threw EMFILE", what);
          assert.ok(!started, `${what}: failed with more free fds than before`);
        }
      }
      assert.equal(lines[0].outcome, "threw EMFILE", `${mode}: a full table`);
      assert.ok(started, `${mode}: no spawn succeeded`);
    }
  },
  perms,
);

test(
  "a child that cannot be watched is killed and reaped, and status rejects only for whoever awaits it",
  async () => {
    const failure = new Error("injected wait failure");
    const wait = OwnedFd.prototype.wait;
    OwnedFd.prototype.wait = function (this: OwnedFd, ...args) {
      return this.what === "ChildProcess"
        ? Promise.reject(failure)
        : wait.apply(this, args);
    };
    let pid = 0;
    try {
      const child = spawn("sleep", { args: ["30"] });
      pid = child.pid;
      // A macrotask passes with no handler on `status`: a rejection
      // reported as unhandled would fail this test.
      await delay(0);
      await assert.rejects(withTimeout(child.status, 5000, "status"), failure);
      assert.ok(!childPids().includes(pid), "the child was not reaped");
      assert.deepEqual(zombieChildren(), []);
      assert.equal(readProcText(`/proc/${pid}/stat`), undefined);
    } finally {
      OwnedFd.prototype.wait = wait;
      if (pid !== 0 && childPids().includes(pid)) Deno.kill(pid, "SIGKILL");
    }
    await pollerIdle();
  },
  perms,
);

test(
  "spawn() that cannot open a pidfd once the child runs kills and reaps that child before it throws",
  () => {
    const lib = libc();
    const symbols = lib as { pidfd_open: typeof lib.pidfd_open };
    const pidfdOpen = lib.pidfd_open;
    // Fails however often it is tried, as another thread taking the last
    // free fd would make it.
    symbols.pidfd_open = () => {
      lib.close(-1); // sets errno (EBADF)
      return -1;
    };
    try {
      assert.throws(
        () => spawn("sleep", { args: ["30"], stdout: "piped" }),
        (e: unknown) => (e as { syscall?: string }).syscall === "pidfd_open",
      );
    } finally {
      symbols.pidfd_open = pidfdOpen;
    }
    assert.deepEqual(childPids(), [], "the child was left behind");
  },
  perms,
);

/** The first executable `name` in PATH, or `undefined`. */
function which(name: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      const path = `${dir}/${name}`;
      if ((Deno.statSync(path).mode ?? 0) & 0o111) return path;
    } catch {
      // Not in this directory.
    }
  }
  return undefined;
}

test(
  "spawn() requires the run permission for its command as Deno.Command does: refused with NotCapable naming --allow-run, granted by --allow-run=<name> for that command by name or path",
  async () => {
    // git where it exists, else another binary that is surely there.
    const allowed = which("git") !== undefined ? "git" : "true";
    const allowedPath = which(allowed);
    assert.ok(allowedPath !== undefined, `${allowed} is not in PATH`);
    const run = async (flags: string[]) => {
      const out = await runDeno(
        [
          "run",
          "--allow-ffi",
          ...flags,
          fixture("spawn_permissions.ts"),
          allowed,
          allowedPath,
        ],
        30_000,
        `spawn permissions with ${flags.join(" ") || "--allow-ffi only"}`,
      );
      assert.equal(out.code, 0, out.stderr);
      const lines = out.stdout.trim().split("\n").map((l) => JSON.parse(l));
      const byName = new Map<string, Record<string, string>>();
      for (const line of lines) {
        // Whatever the case, spawn() ends as Deno.Command does.
        assert.equal(line.ours, line.deno, `${line.name}: ${line.message}`);
        byName.set(line.name, line);
      }
      return byName;
    };
    const refusal = (command: string) =>
      `Requires run access to ${
        JSON.stringify(command)
      }, run again with the --allow-run flag`;
    const loader = (name: string) =>
      `Requires --allow-run permissions to spawn subprocess with ${name} environment variable. Alternatively, spawn with the environment variable unset.`;

    const ffiOnly = await run([]);
    assert.equal(ffiOnly.size, 9);
    for (
      const [name, command] of [
        ["sh by name", "sh"],
        ["sh by path", "/bin/sh"],
        ["allowed by name", allowed],
        ["allowed by path", allowedPath],
        ["allowed with env", allowed],
      ]
    ) {
      const line = ffiOnly.get(name)!;
      assert.equal(line.ours, "NotCapable", name);
      assert.equal(line.message, refusal(command), name);
    }
    assert.equal(ffiOnly.get("missing command")!.ours, "NotFound");

    const one = await run([`--allow-run=${allowed}`]);
    assert.equal(one.size, 9);
    assert.equal(one.get("sh by name")!.message, refusal("sh"));
    assert.equal(one.get("sh by path")!.message, refusal("/bin/sh"));
    for (
      const name of [
        "allowed by name",
        "allowed by path",
        "allowed with env",
        "allowed with empty LD_PRELOAD",
      ]
    ) {
      assert.equal(
        one.get(name)!.ours,
        "exit 0",
        `${name}: ${one.get(name)!.message}`,
      );
    }
    assert.equal(
      one.get("allowed with LD_PRELOAD")!.message,
      loader("LD_PRELOAD"),
    );
    assert.equal(
      one.get("allowed with ld_library_path")!.message,
      loader("ld_library_path"),
    );
    assert.equal(one.get("missing command")!.ours, "NotFound");

    const all = await run(["--allow-run"]);
    for (const [name, line] of all) {
      if (name === "missing command") assert.equal(line.ours, "NotFound");
      else assert.equal(line.ours, "exit 0", `${name}: ${line.message}`);
    }
  },
  perms,
);

test(
  "spawn() with a missing cwd throws NotFound naming the cwd, and with a file as cwd NotADirectory; no child, no fd left",
  () => {
    const missing = "/nonexistent/conduit-cwd";
    assert.throws(
      () =>
        spawn("sh", {
          args: ["-c", "exit 0"],
          cwd: missing,
          stdout: "piped",
        }),
      (e: unknown) =>
        e instanceof Deno.errors.NotFound &&
        e.message === `Cannot spawn "sh": no such cwd "${missing}"`,
    );
    assert.throws(
      () => spawn("sh", { cwd: new URL("file:///etc/hostname") }),
      (e: unknown) =>
        e instanceof Deno.errors.NotADirectory &&
        e.message ===
          'Cannot spawn "sh": the cwd "/etc/hostname" is not a directory',
    );
    // A missing command is still named as such.
    assert.throws(
      () => spawn("/nonexistent/conduit-command", { cwd: "/tmp" }),
      (e: unknown) =>
        e instanceof Deno.errors.NotFound &&
        e.message ===
          'Cannot spawn "/nonexistent/conduit-command": no such file "/nonexistent/conduit-command"',
    );
    assert.deepEqual(childPids(), []);
  },
  perms,
);

test(
  "spawn() runs a script without #! with /bin/sh as Deno.Command does, found by name in the child's PATH or by a path relative to its cwd",
  async () => {
    const dir = Deno.makeTempDirSync({ prefix: "conduit-spawn-" });
    try {
      const script = `${dir}/no-shebang`;
      Deno.writeTextFileSync(script, 'echo "$0|$1|$(pwd)"\n', { mode: 0o755 });
      const expected = `${script}|arg|${dir}\n`;
      const ours = async (command: string, options: SpawnOptions) => {
        const out = await withTimeout(
          spawn(command, { args: ["arg"], stdout: "piped", ...options })
            .output(),
          10_000,
          command,
        );
        assert.equal(out.code, 0);
        return decoder.decode(out.stdout);
      };
      assert.equal(await ours(script, { cwd: dir }), expected);
      assert.equal(await ours("./no-shebang", { cwd: dir }), expected);
      assert.equal(
        await ours("no-shebang", { cwd: dir, env: { PATH: dir } }),
        expected,
      );
      const deno = await new Deno.Command("./no-shebang", {
        args: ["arg"],
        cwd: dir,
        stdout: "piped",
      }).output();
      assert.equal(decoder.decode(deno.stdout), expected);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
    await pollerIdle();
  },
  { ...perms, write: true },
);

test(
  "a ChildProcess prints its pid and state: running with its pidfd, then exited with its code or signal",
  async () => {
    const child = spawn("sleep", { args: ["30"] });
    assert.equal(
      Deno.inspect(child),
      `ChildProcess { pid: ${child.pid}, fd: ${child.rawFd}, state: "running" }`,
    );
    child.unref();
    assert.match(Deno.inspect(child), /state: "running", ref: false \}$/);
    child.ref();
    child.kill("SIGKILL");
    await withTimeout(child.status, 10_000, "killed child");
    assert.equal(
      Deno.inspect(child),
      `ChildProcess { pid: ${child.pid}, state: "exited", code: 137, signal: "SIGKILL" }`,
    );
    const exit3 = spawn("sh", { args: ["-c", "exit 3"] });
    await withTimeout(exit3.status, 10_000, "exit 3");
    assert.equal(
      Deno.inspect(exit3),
      `ChildProcess { pid: ${exit3.pid}, state: "exited", code: 3, signal: null }`,
    );
    await pollerIdle();
  },
  perms,
);

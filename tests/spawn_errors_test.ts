import assert from "node:assert/strict";
import { channel, pipe, socketpair, spawn, type SpawnOptions } from "../mod.ts";
import { childPids, test, withTimeout } from "./_util.ts";

/** Asserts that `spawn(command, options)` throws `Class` with `message`. */
function refuses(
  command: string,
  options: SpawnOptions,
  Class: new (...args: never[]) => Error,
  message: string,
): void {
  assert.throws(
    () => spawn(command, options),
    (e: unknown) => {
      assert.ok(e instanceof Class, `${e}`);
      assert.equal((e as Error).message, message);
      return true;
    },
  );
}

test(
  "spawn() names what exec could not use: a script whose #! interpreter is missing (NotFound), a file that is not executable and a directory (PermissionDenied); no child is left",
  () => {
    const dir = Deno.makeTempDirSync({ prefix: "conduit-spawn-" });
    try {
      const orphan = `${dir}/orphan.sh`;
      Deno.writeTextFileSync(orphan, "#!/nonexistent/interpreter\necho hi\n", {
        mode: 0o755,
      });
      const plain = `${dir}/plain.sh`;
      Deno.writeTextFileSync(plain, "#!/bin/sh\necho hi\n", { mode: 0o644 });
      refuses(
        orphan,
        {},
        Deno.errors.NotFound,
        `Cannot spawn "${orphan}": it exists, but its interpreter does not (the program on its #! line, or the dynamic loader of a binary)`,
      );
      // By a relative path, the resolved path is named.
      refuses(
        "./orphan.sh",
        { cwd: dir },
        Deno.errors.NotFound,
        `Cannot spawn "./orphan.sh": "${orphan}" exists, but its interpreter does not (the program on its #! line, or the dynamic loader of a binary)`,
      );
      refuses(
        plain,
        {},
        Deno.errors.PermissionDenied,
        `Cannot spawn "${plain}": it is not executable`,
      );
      refuses(
        dir,
        {},
        Deno.errors.PermissionDenied,
        `Cannot spawn "${dir}": it is a directory`,
      );
      // A file that is truly missing is still named as such.
      refuses(
        `${dir}/missing`,
        {},
        Deno.errors.NotFound,
        `Cannot spawn "${dir}/missing": no such file "${dir}/missing"`,
      );
      assert.deepEqual(childPids(), []);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
  { read: true, write: true, run: true },
);

test(
  "spawn() refuses args that are not an array, env values that are not strings, a NUL in the command or an argument and an unknown stdio choice with a TypeError naming them, and starts nothing",
  () => {
    // A string is iterable: unchecked, it would run `echo h i`.
    refuses(
      "echo",
      { args: "hi" as unknown as string[] },
      TypeError,
      "Cannot spawn: args must be an array of strings, got string",
    );
    // String() would give the child A=1 and B=undefined.
    refuses(
      "true",
      { env: { A: 1 } as unknown as Record<string, string> },
      TypeError,
      "Cannot spawn: the value of environment variable A must be a string, got number",
    );
    refuses(
      "true",
      { env: { B: undefined } as unknown as Record<string, string> },
      TypeError,
      "Cannot spawn: the value of environment variable B must be a string, got undefined",
    );
    // A C string ends at its first NUL: the child would get part of it.
    refuses(
      "echo",
      { args: ["ok", "a\0b"] },
      TypeError,
      "Cannot spawn: argument 1 contains a NUL byte",
    );
    refuses(
      "ec\0ho",
      {},
      TypeError,
      "Cannot spawn: the command contains a NUL byte",
    );
    // A misspelled stdio choice is named, with the ones there are.
    refuses(
      "true",
      { stdout: "pipe" as "piped" },
      TypeError,
      'Cannot spawn: stdout must be "inherit", "piped", "null", an endpoint or an fd, got "pipe"',
    );
    assert.deepEqual(childPids(), []);
  },
  { read: true, run: true },
);

test(
  "spawn() with a raw fd that is not open throws BadResource naming the option and the fd, and starts nothing, even where a copy or a new pipe would take that number",
  () => {
    // The lowest free fd number: the next fd made takes it.
    const { reader, writer } = pipe();
    const closed = reader.rawFd;
    reader.close();
    using _writer = writer;
    // The copy of fds[0] made for the child would take the closed number,
    // and fds[1] would then hand the child that copy.
    refuses(
      "true",
      { fds: [writer, closed] },
      Deno.errors.BadResource,
      `Cannot spawn: fds[1] is fd ${closed}, which is not open in this process`,
    );
    // So would the pipe made for a "piped" stdout.
    refuses(
      "true",
      { fds: [closed], stdout: "piped" },
      Deno.errors.BadResource,
      `Cannot spawn: fds[0] is fd ${closed}, which is not open in this process`,
    );
    refuses(
      "true",
      { stdout: { rawFd: closed } },
      Deno.errors.BadResource,
      `Cannot spawn: stdout is fd ${closed}, which is not open in this process`,
    );
    assert.deepEqual(childPids(), []);
  },
  { read: true, run: true },
);

test(
  "output() of a child whose piped stdout was read already, by output() or through stdout, rejects with a TypeError saying so",
  async () => {
    const twice = spawn("sh", { args: ["-c", "echo once"], stdout: "piped" });
    const first = await withTimeout(twice.output(), 10_000, "first output()");
    assert.equal(new TextDecoder().decode(first.stdout), "once\n");
    await assert.rejects(twice.output(), {
      name: "TypeError",
      message:
        "Cannot collect output: 'stdout' was read already or is being read",
    });
    const read = spawn("sh", { args: ["-c", "echo hi >&2"], stderr: "piped" });
    assert.equal(await new Response(read.stderr).text(), "hi\n");
    await assert.rejects(read.output(), {
      name: "TypeError",
      message:
        "Cannot collect output: 'stderr' was read already or is being read",
    });
    await withTimeout(read.status, 10_000, "status");
  },
  { read: true, run: true },
);

test(
  "a closed endpoint given to spawn(), send() or a channel value is named with the call and the argument",
  async () => {
    const { reader, writer } = pipe();
    reader.close();
    refuses(
      "true",
      { fds: [writer, reader] },
      Deno.errors.BadResource,
      "Cannot spawn: fds[1] (PipeReader) is closed",
    );
    refuses(
      "true",
      { stdout: reader },
      Deno.errors.BadResource,
      "Cannot spawn: stdout (PipeReader) is closed",
    );
    using pair = socketpair({ type: "seqpacket" });
    await assert.rejects(
      pair[0].send(Uint8Array.of(1), { fds: [reader] }),
      (e: Error) =>
        e instanceof Deno.errors.BadResource &&
        e.message ===
          "Cannot send on UnixSocket: fds[0] (PipeReader) is closed",
    );
    const [tx, rx] = channel<unknown>();
    try {
      await assert.rejects(
        tx.send({ out: reader }),
        (e: Error) =>
          e instanceof Deno.errors.BadResource &&
          e.message ===
            "Cannot send on channel: an endpoint in the value (PipeReader) is closed",
      );
    } finally {
      tx.close();
      rx.close();
      writer.close();
    }
  },
  { read: true, run: true },
);

test(
  "spawn() refuses, before any child starts, a URL of another scheme than file:, a signal that is no AbortSignal, fds that are no array or out of range, and an env that is no object",
  () => {
    const before = childPids();
    refuses(
      new URL("http://example.invalid/bin/true") as unknown as string,
      {},
      TypeError,
      "Cannot spawn: the command must be a path or a file: URL, got a URL with scheme http:",
    );
    refuses(
      "true",
      { cwd: new URL("https://example.invalid/tmp") },
      TypeError,
      "Cannot spawn: cwd must be a path or a file: URL, got a URL with scheme https:",
    );
    refuses(
      "true",
      { signal: {} as AbortSignal },
      TypeError,
      "Cannot spawn: signal must be an AbortSignal, got Object",
    );
    refuses(
      "true",
      { fds: [2 ** 40] },
      TypeError,
      "Cannot spawn: fds[0] is not an endpoint or an fd",
    );
    refuses(
      "true",
      { fds: "3" as never },
      TypeError,
      "Cannot spawn: fds must be an array of endpoints or fds, got string",
    );
    refuses(
      "true",
      { env: null as never },
      TypeError,
      "Cannot spawn: env must be an object of strings, got null",
    );
    refuses(
      "true",
      { env: ["x"] as never },
      TypeError,
      "Cannot spawn: env must be an object of strings, got an array",
    );
    refuses(
      "true",
      { env: new Map([["A", "1"]]) as never },
      TypeError,
      "Cannot spawn: env must be an object of strings, got a Map (pass Object.fromEntries(map))",
    );
    refuses(
      "true",
      { fds: null as never },
      TypeError,
      "Cannot spawn: fds must be an array of endpoints or fds, got null",
    );
    const { reader, writer } = pipe();
    try {
      assert.throws(
        () => spawn("true", { fds: new Array(1 << 20).fill(writer) }),
        (e: unknown) =>
          e instanceof RangeError &&
          e.message.startsWith(`Cannot spawn: ${1 << 20} fds given, more than`),
      );
    } finally {
      reader.close();
      writer.close();
    }
    assert.deepEqual(childPids(), before);
  },
  { read: true, run: true },
);

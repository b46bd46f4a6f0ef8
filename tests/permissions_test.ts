import assert from "node:assert/strict";
import { listen, SharedMemory } from "../mod.ts";
import { fixture, runDeno, test } from "./_util.ts";

/** Runs one guarded operation in a child with exactly `flags`. */
async function probe(
  flags: string[],
  operation: string,
  argument = "",
): Promise<string> {
  const run = await runDeno(
    [
      "run",
      "--no-prompt",
      ...flags,
      fixture("permission_probe.ts"),
      operation,
      argument,
    ],
    20_000,
    `permission_probe.ts ${operation}`,
  );
  assert.equal(run.code, 0, run.stderr);
  return run.stdout.trim();
}

function refused(output: string, flag: string, path: string): void {
  assert.ok(output.startsWith("NotCapable: "), output);
  assert.ok(output.includes(`"${path}"`), output);
  assert.ok(output.includes(`run again with the ${flag} flag`), output);
}

test(
  "named shared memory needs write (create, unlink) or read and write (open) permission for /dev/shm/<name>; a memfd needs none",
  async () => {
    const name = `conduit-perm-${crypto.randomUUID()}`;
    const path = `/dev/shm/${name}`;
    try {
      refused(
        await probe(["--allow-ffi"], "shm-create", name),
        "--allow-write",
        path,
      );
      assert.equal(
        await probe(["--allow-ffi"], "memfd"),
        "ok",
        "an anonymous memfd needs no file permission",
      );
      assert.equal(
        await probe(
          ["--allow-ffi", `--allow-write=${path}`],
          "shm-create",
          name,
        ),
        "ok",
      );
      refused(
        await probe(["--allow-ffi", `--allow-write=${path}`], "shm-open", name),
        "--allow-read",
        path,
      );
      refused(
        await probe(["--allow-ffi", `--allow-read=${path}`], "shm-open", name),
        "--allow-write",
        path,
      );
      assert.equal(
        await probe(
          ["--allow-ffi", "--allow-read=/dev/shm", "--allow-write=/dev/shm"],
          "shm-open",
          name,
        ),
        "ok",
      );
      refused(
        await probe(["--allow-ffi", "--allow-read"], "shm-unlink", name),
        "--allow-write",
        path,
      );
      assert.equal(
        await probe(
          ["--allow-ffi", `--allow-write=${path}`],
          "shm-unlink",
          name,
        ),
        "ok",
      );
    } finally {
      try {
        SharedMemory.unlink(name);
      } catch {
        // Unlinked by the last probe, as it should be.
      }
    }
  },
  { ffi: true, read: true, write: true, run: true },
);

test(
  "listen({ path }) needs write permission for the path and connect({ path }) read and write; abstract names need none",
  async () => {
    const dir = Deno.makeTempDirSync({ prefix: "conduit-perm-" });
    try {
      const path = `${dir}/s.sock`;
      refused(
        await probe(["--allow-ffi", "--allow-read"], "listen-path", path),
        "--allow-write",
        path,
      );
      assert.deepEqual(
        [...Deno.readDirSync(dir)],
        [],
        "a refused listen() leaves nothing behind",
      );
      assert.equal(
        await probe(
          ["--allow-ffi", `--allow-write=${dir}`],
          "listen-path",
          path,
        ),
        "ok",
      );
      assert.deepEqual([...Deno.readDirSync(dir)], [], "close() removed it");

      using server = listen({ path });
      refused(
        await probe(
          ["--allow-ffi", `--allow-write=${path}`],
          "connect-path",
          path,
        ),
        "--allow-read",
        path,
      );
      refused(
        await probe(
          ["--allow-ffi", `--allow-read=${path}`],
          "connect-path",
          path,
        ),
        "--allow-write",
        path,
      );
      assert.equal(
        await probe(
          ["--allow-ffi", `--allow-read=${dir}`, `--allow-write=${dir}`],
          "connect-path",
          path,
        ),
        "ok",
      );

      const name = `conduit-perm-${crypto.randomUUID()}`;
      assert.equal(await probe(["--allow-ffi"], "listen-abstract", name), "ok");
      using named = listen({ abstract: name });
      assert.equal(
        await probe(["--allow-ffi"], "connect-abstract", name),
        "ok",
      );
      void server;
      void named;
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
  { ffi: true, read: true, write: true, run: true },
);

test(
  "without --allow-ffi the module still imports, and its first call is refused with NotCapable naming --allow-ffi",
  async () => {
    // other_platform.ts imports mod.ts (every entry point but nats and the
    // command line), then makes a pipe; "{}" keeps this platform.
    const run = await runDeno(
      ["run", "--no-prompt", fixture("other_platform.ts"), "{}"],
      30_000,
      "the module without --allow-ffi",
    );
    assert.equal(run.code, 0, run.stderr);
    const { imported, error } = JSON.parse(run.stdout);
    assert.equal(imported, true, "importing needs no permission");
    assert.equal(error.name, "NotCapable");
    assert.ok(error.message.includes("--allow-ffi"), error.message);
  },
  { read: true, run: true },
);

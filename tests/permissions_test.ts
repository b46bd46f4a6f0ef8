import assert from "node:assert/strict";
import { SharedMemory } from "../mod.ts";
import { fixture, runDeno } from "./_util.ts";

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

Deno.test({
  name:
    "named shared memory needs write (create, unlink) or read and write (open) permission for /dev/shm/<name>; a memfd needs none",
  permissions: { ffi: true, read: true, write: true, run: true },
  async fn() {
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
});

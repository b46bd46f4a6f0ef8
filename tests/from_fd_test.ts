import assert from "node:assert/strict";
import { fixture, runDeno } from "./_util.ts";

Deno.test({
  name: "fromFd() imported on its own recognises sockets, pipes and memfds",
  permissions: { ffi: true, read: true, run: true },
  async fn() {
    const run = await runDeno(
      ["run", "--allow-ffi", fixture("from_fd_alone.ts")],
      20_000,
      "from_fd_alone.ts",
    );
    assert.equal(run.code, 0, run.stderr);
    assert.equal(
      run.stdout.trim(),
      "UnixSocket:stream UnixSocket:dgram UnixSocket:seqpacket " +
        "PipeReader PipeWriter SharedMemory",
    );
  },
});

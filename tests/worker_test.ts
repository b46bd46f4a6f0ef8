import assert from "node:assert/strict";
import { Worker as NodeWorker } from "node:worker_threads";
import { pipe } from "../mod.ts";
import { poller } from "../ffi/poller.ts";
import { assertFdsUnchanged, fdSnapshot, withTimeout } from "./_util.ts";

// Deno.test, not test(): the runtime opens and closes fds of its own for a
// Worker, so the fd table is checked over the window the test controls.
Deno.test({
  name:
    "a Worker waits in its own poller, and leaves no fd behind once its endpoints are closed",
  permissions: { ffi: true, read: true },
  async fn() {
    const worker = new Worker(
      new URL("./fixtures/worker_pipe.ts", import.meta.url),
      { type: "module" },
    );
    const next = () =>
      new Promise<unknown>((resolve) => {
        worker.onmessage = (e) => resolve(e.data);
      });
    try {
      let message = next();
      worker.postMessage({ ping: true });
      assert.deepEqual(await withTimeout(message, 10_000, "worker start"), {
        ready: true,
      });
      // The runtime's own fds for the worker exist now; count from here.
      const before = fdSnapshot();
      const { reader, writer } = pipe();
      message = next();
      worker.postMessage({ fd: reader.rawFd });
      assert.deepEqual(await withTimeout(message, 10_000, "worker waiting"), {
        waiting: true,
        busy: true,
      });
      // The worker's wait is its own: nothing is in flight here.
      assert.equal(poller().busy, false);
      message = next();
      await writer.write(new TextEncoder().encode("to the worker"));
      assert.deepEqual(await withTimeout(message, 10_000, "worker read"), {
        text: "to the worker",
      });
      message = next();
      assert.deepEqual(await withTimeout(message, 10_000, "worker idle"), {
        registered: 0,
        busy: false,
      });
      reader.close();
      writer.close();
      // The worker's epoll fd and eventfd are gone with its last endpoint.
      assertFdsUnchanged(before, "the worker's use of a pipe");
    } finally {
      worker.terminate();
    }
  },
});

/**
 * Starts a Worker of `kind` that wraps `fd` in a PipeReader and leaves a
 * read pending; resolves once it waits, with a function that ends it.
 */
async function workerWaitingOn(
  kind: "web" | "node",
  fd: number,
): Promise<() => Promise<unknown>> {
  if (kind === "web") {
    const worker = new Worker(
      new URL("./fixtures/worker_pipe.ts", import.meta.url),
      { type: "module" },
    );
    try {
      const waiting = new Promise<unknown>((resolve) => {
        worker.onmessage = (e) => resolve(e.data);
      });
      worker.postMessage({ fd });
      assert.deepEqual(
        await withTimeout(waiting, 10_000, "worker waiting"),
        { waiting: true, busy: true },
      );
    } catch (error) {
      worker.terminate();
      throw error;
    }
    return () => Promise.resolve(worker.terminate());
  }
  const worker = new NodeWorker(
    new URL("./fixtures/node_worker_pipe.ts", import.meta.url),
    { workerData: { fd } },
  );
  try {
    const waiting = new Promise<unknown>((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
    });
    assert.deepEqual(
      await withTimeout(waiting, 10_000, "worker waiting"),
      { waiting: true },
    );
  } catch (error) {
    await worker.terminate();
    throw error;
  }
  return () => worker.terminate();
}

for (const kind of ["web", "node"] as const) {
  Deno.test({
    name:
      `a ${kind} Worker terminated while it waits holds no open file: once the fd it waited on is closed here, the pipe's writer sees BrokenPipe`,
    permissions: { ffi: true, read: true },
    async fn() {
      const { reader, writer } = pipe();
      let end: (() => Promise<unknown>) | undefined;
      try {
        end = await workerWaitingOn(kind, reader.rawFd);
        // The Worker ends with its read pending: no code of it runs again,
        // so whatever its wait left in the kernel stays there.
        await end();
        // This thread owns the fd; with it closed, no read end is left.
        reader.close();
        await assert.rejects(
          withTimeout(
            writer.write(new TextEncoder().encode("nobody reads this")),
            10_000,
            "the write to a pipe without readers",
          ),
          Deno.errors.BrokenPipe,
        );
      } finally {
        await end?.();
        reader.close();
        writer.close();
      }
    },
  });
}

Deno.test({
  name:
    "a Worker receives packets past the 64 KiB scratch measured first: it maps no whole-packet reserve, which would outlive it",
  permissions: { ffi: true, read: true },
  async fn() {
    const worker = new Worker(
      new URL("./fixtures/worker_whole.ts", import.meta.url),
      { type: "module" },
    );
    try {
      for (const size of [64, 65_537, 300_000]) {
        const answer = new Promise<unknown>((resolve) => {
          worker.onmessage = (e) => resolve(e.data);
        });
        worker.postMessage({ size });
        assert.deepEqual(await withTimeout(answer, 10_000, `${size} B`), {
          length: size,
          intact: true,
          reserve: false,
        });
      }
    } finally {
      worker.terminate();
    }
  },
});

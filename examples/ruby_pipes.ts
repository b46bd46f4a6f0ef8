/**
 * Pipes from "Processes Can Communicate" (Working With Unix Processes, in
 * Ruby), with a child process instead of `fork`.
 *
 * 1. A pipe is a one-way stream: what goes into the writer comes out of the
 *    reader, and the reader sees EOF once every writer is closed.
 * 2. A pipe shared with a child: the child writes ten lines, the parent reads
 *    lines until EOF. As the chapter explains, the parent must close its own
 *    copy of the writer right after starting the child, or the reader waits
 *    forever for a writer that will never write. (Ruby's child must also
 *    close its copy of the reader; `spawn()` hands over only the listed fds,
 *    so this child never has one.)
 *
 * Run: `deno run --allow-ffi --allow-run examples/ruby_pipes.ts`
 *
 * @module
 */

import { fromFd, pipe, PipeWriter, spawn } from "../mod.ts";
import { lines } from "./_lines.ts";

const LINES = 10;
const encoder = new TextEncoder();

if (Deno.args[0] === "child") {
  const writer = fromFd(3);
  if (!(writer instanceof PipeWriter)) {
    throw new TypeError("fd 3 is not a pipe writer");
  }
  for (let i = 0; i < LINES; i++) {
    await writer.write(encoder.encode("Another one bites the dust\n"));
  }
  writer.close();
} else {
  // 1. Into the pipe and out again, in one process.
  {
    const { reader, writer } = pipe();
    await writer.write(encoder.encode("Into the pipe I go..."));
    writer.close(); // without this, reading to EOF would wait forever
    console.log(await new Response(reader.readable).text());
  }

  // 2. Shared with a child that writes ten lines.
  const { reader, writer } = pipe();
  const child = spawn(Deno.execPath(), {
    args: ["run", "--allow-ffi", import.meta.filename!, "child"],
    fds: [writer], // fd 3 in the child
  });
  writer.close(); // the child has its own copy; EOF comes when it is done
  let count = 0;
  for await (const line of lines(reader.readable)) {
    console.log(line);
    count++;
  }
  const status = await child.status;
  console.log(
    `parent: ${count} lines, then EOF; child ${child.pid} exited with code ${status.code}`,
  );
  if (count !== LINES || !status.success) {
    throw new Error(`expected ${LINES} lines from a successful child`);
  }
}

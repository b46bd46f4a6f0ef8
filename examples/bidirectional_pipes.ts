/**
 * Ten messages each way between a parent and its child over two pipes.
 *
 * Pipes carry bytes one way, so `duplex()` makes two: the parent keeps one
 * side, hands the other to the child as fd 3 (read) and fd 4 (write), and
 * closes its copies of the child's ends. Messages are lines, so a reply that
 * arrives in pieces, or two that arrive together, are still told apart (the
 * libc original reads fixed 1 KiB chunks and hopes).
 *
 * Run: `deno run --allow-ffi --allow-run examples/bidirectional_pipes.ts`
 *
 * @module
 */

import { duplex, fromFd, PipeReader, PipeWriter, spawn } from "../mod.ts";
import { lines } from "./_lines.ts";

const ITERATIONS = 10;
const encoder = new TextEncoder();

if (Deno.args[0] === "child") {
  const rx = fromFd(3);
  const tx = fromFd(4);
  if (!(rx instanceof PipeReader) || !(tx instanceof PipeWriter)) {
    throw new TypeError("expected a pipe reader on fd 3 and a writer on fd 4");
  }
  for await (const line of lines(rx.readable)) {
    console.log(`child:  received "${line}"`);
    await tx.write(encoder.encode(`Child echoing: ${line}\n`));
  }
  tx.close(); // EOF from the parent: it closed its writer
} else {
  const [mine, theirs] = duplex();
  const child = spawn(Deno.execPath(), {
    args: ["run", "--allow-ffi", import.meta.filename!, "child"],
    fds: [theirs.reader, theirs.writer], // fd 3 and fd 4 in the child
  });
  theirs[Symbol.dispose](); // the child has its own copies
  const replies = lines(mine.reader.readable);
  for (let i = 0; i < ITERATIONS; i++) {
    await mine.writer.write(encoder.encode(`Parent message ${i}\n`));
    const reply = await replies.next();
    if (reply.done) throw new Error("the child closed its pipe early");
    console.log(`parent: received "${reply.value}"`);
  }
  mine.writer.close(); // the child sees EOF and exits
  const status = await child.status;
  console.log(
    `parent: ${ITERATIONS} messages each way; child ${child.pid} exited with code ${status.code}`,
  );
  mine.reader.close();
}

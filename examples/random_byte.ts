/**
 * A child sends one random byte to its parent through an unnamed pipe.
 *
 * The Rust original forks and reads with `read_exact` into a 100-byte buffer,
 * which waits forever for bytes that never come. Here the parent reads with a
 * large buffer too, but `read()` returns what arrived, and once the child has
 * exited every writer is closed, so the next read reports EOF (`null`): no
 * read can hang on a finished child.
 *
 * Run: `deno run --allow-ffi --allow-run examples/random_byte.ts`
 *
 * @module
 */

import { fromFd, pipe, PipeWriter, spawn } from "../mod.ts";

if (Deno.args[0] === "child") {
  const tx = fromFd(3);
  if (!(tx instanceof PipeWriter)) {
    throw new TypeError("fd 3 is not a pipe writer");
  }
  console.log("child:  I'm a child, choosing a random byte for the parent");
  const [x] = crypto.getRandomValues(new Uint8Array(1));
  await tx.write(new Uint8Array([x]));
  console.log(`child:  sent ${x} to the parent, exiting`);
  tx.close();
} else {
  const { reader, writer } = pipe();
  const child = spawn(Deno.execPath(), {
    args: ["run", "--allow-ffi", import.meta.filename!, "child"],
    fds: [writer], // fd 3 in the child
  });
  // The child holds its own copy; closing ours means EOF arrives when it exits.
  writer.close();
  console.log(`parent: started child ${child.pid}`);

  const status = await child.status;
  const buf = new Uint8Array(100); // bigger than what comes: no read_exact hang
  const n = await reader.read(buf);
  if (n === null) throw new Error("the child exited without sending a byte");
  console.log(
    `parent: child -> parent through the pipe: ${n} byte, value ${buf[0]}`,
  );
  console.log(
    `parent: next read: ${await reader.read(buf)} (EOF: no writer is left)`,
  );
  console.log(`parent: child exited with code ${status.code}`);
  reader.close();
}

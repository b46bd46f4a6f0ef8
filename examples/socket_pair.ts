/**
 * A datagram socket pair from "Processes Can Communicate" (Working With Unix
 * Processes, in Ruby), with a child process instead of `fork`.
 *
 * A pipe carries a stream one way; a socket pair talks both ways, and a
 * datagram pair carries whole messages: no delimiters, each `send()` is one
 * `recv()`. The parent sends two "Heavy lifting" and two "Feather lifting"
 * instructions back to back; the child answers each with
 * "<instruction> received!". The Ruby original reads with a `maxlen` of
 * 1000 and would silently cut a longer message; `recv()` here returns every
 * message whole, whatever its size.
 *
 * Run: `deno run --allow-ffi --allow-run examples/socket_pair.ts`
 *
 * @module
 */

import { fromFd, socketpair, spawn, UnixSocket } from "../mod.ts";

const INSTRUCTIONS = [
  "Heavy lifting",
  "Heavy lifting",
  "Feather lifting",
  "Feather lifting",
];
const encoder = new TextEncoder();
const decoder = new TextDecoder();

if (Deno.args[0] === "child") {
  const socket = fromFd(3);
  if (!(socket instanceof UnixSocket)) {
    throw new TypeError("fd 3 is not a socket");
  }
  for (let i = 0; i < INSTRUCTIONS.length; i++) {
    const message = await socket.recv();
    if (message === null) break;
    const instruction = decoder.decode(message.data);
    await socket.send(encoder.encode(`${instruction} received!`));
  }
  socket.close();
} else {
  const [parentSocket, childSocket] = socketpair({ type: "dgram" });
  const child = spawn(Deno.execPath(), {
    args: ["run", "--allow-ffi", import.meta.filename!, "child"],
    fds: [childSocket], // fd 3 in the child
  });
  childSocket.close(); // the child holds its own copy

  // All four go out before any answer is read: boundaries keep them apart.
  for (const instruction of INSTRUCTIONS) {
    await parentSocket.send(encoder.encode(instruction));
  }
  const answers: string[] = [];
  for (let i = 0; i < INSTRUCTIONS.length; i++) {
    const message = await parentSocket.recv();
    if (message === null) throw new Error("the child's socket closed early");
    answers.push(decoder.decode(message.data));
    console.log(answers.at(-1));
  }
  const status = await child.status;
  parentSocket.close();
  console.log(
    `parent: ${answers.length} answers, one per message; child ${child.pid} exited with code ${status.code}`,
  );
  const expected = INSTRUCTIONS.map((text) => `${text} received!`);
  if (answers.join("\n") !== expected.join("\n") || !status.success) {
    throw new Error(`unexpected answers: ${JSON.stringify(answers)}`);
  }
}

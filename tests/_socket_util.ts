/**
 * Helpers shared by the socket, fd-passing and spawn tests: bounded reads
 * from endpoints and child output, and the socket child fixture.
 *
 * @module
 */

import {
  type ChildProcess,
  type PipeReader,
  spawn,
  type UnixSocket,
} from "../mod.ts";
import { DENO, fixture, withTimeout } from "./_util.ts";

/** The child for the socket tests; its first argument is its mode. */
export const SOCKET_CHILD: string = fixture("socket_child.ts");

/**
 * Starts {@linkcode SOCKET_CHILD} with `args` (the mode first) and stdout
 * piped. When `theirs` is given the child gets it as fd 3, and this
 * process's copy is closed, so the child holds the only one. The child has
 * `--allow-ffi` and the permission `flags` given (a path socket needs
 * `--allow-write` for its path, and `--allow-read` to connect).
 */
export function socketChild(
  args: string[],
  theirs?: UnixSocket,
  flags: string[] = [],
): ChildProcess {
  const child = spawn(DENO, {
    args: ["run", "--allow-ffi", ...flags, SOCKET_CHILD, ...args],
    fds: theirs === undefined ? [] : [theirs],
    stdout: "piped",
  });
  theirs?.close();
  return child;
}

/**
 * The first line of `stream` (without its newline), or all of it if it ends
 * first. Throws if no line comes within 15 s.
 */
export async function lineOf(
  stream: ReadableStream<Uint8Array>,
): Promise<string> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  try {
    while (!text.includes("\n")) {
      const { value, done } = await withTimeout(
        reader.read(),
        15_000,
        "a line from the child",
      );
      if (done) break;
      text += value;
    }
  } finally {
    reader.releaseLock();
  }
  return text.split("\n")[0];
}

/**
 * Reads exactly `length` bytes from a stream socket; throws at EOF before
 * that, or if a read takes more than 10 s.
 */
export async function readExactly(
  socket: UnixSocket,
  length: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let got = 0;
  while (got < length) {
    const n = await withTimeout(socket.read(out.subarray(got)), 10_000, "read");
    if (n === null) throw new Error(`EOF after ${got} of ${length} bytes`);
    got += n;
  }
  return out;
}

/** Reads a pipe to EOF as text; throws naming `what` after 10 s. */
export async function readAllText(
  reader: PipeReader,
  what: string,
): Promise<string> {
  return await withTimeout(new Response(reader.readable).text(), 10_000, what);
}

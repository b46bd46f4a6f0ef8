/**
 * Peers run as another local user (`nobody`, uid 65534) with `setpriv`, for
 * the tests of what another user can and cannot do to this user's sockets.
 * They need root; without it the tests are skipped, and this module says so
 * once.
 *
 * @module
 */

import { type ChildProcess, spawn } from "../mod.ts";
import { libc } from "../ffi/libc.ts";
import { listDir, withTimeout } from "./_util.ts";

/** The user the peers run as. */
export const OTHER_UID = 65534;

const PYTHON = "/usr/bin/python3";

function skipReason(): string | undefined {
  if (libc().getuid() !== 0) return "not running as root";
  if (!listDir("/usr/bin").includes("setpriv")) return "no /usr/bin/setpriv";
  if (!listDir("/usr/bin").includes("python3")) return `no ${PYTHON}`;
  return undefined;
}

/**
 * Why the tests with another user cannot run here, or `undefined` when
 * they can. Use it as a test's `ignore`.
 */
export const otherUserSkip: string | undefined = skipReason();
if (otherUserSkip !== undefined) {
  console.log(
    `Skipping the tests that run a peer as uid ${OTHER_UID}: ${otherUserSkip}`,
  );
}

/**
 * Starts `python3 -c script ...args` as uid and gid 65534 with no
 * supplementary groups; stdin and stdout piped.
 */
export function spawnOtherUser(script: string, args: string[]): ChildProcess {
  return spawn("setpriv", {
    args: [
      `--reuid=${OTHER_UID}`,
      `--regid=${OTHER_UID}`,
      "--clear-groups",
      PYTHON,
      "-c",
      script,
      ...args,
    ],
    stdin: "piped",
    stdout: "piped",
  });
}

/** The lines a child prints, one per call; `""` once its output ends. */
export function lineReader(
  stream: ReadableStream<Uint8Array>,
  what: string,
): () => Promise<string> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  let ended = false;
  return async () => {
    while (!buffered.includes("\n") && !ended) {
      const { value, done } = await withTimeout(
        reader.read(),
        20_000,
        `a line from ${what}`,
      );
      if (done) {
        ended = true;
        reader.releaseLock();
      } else {
        buffered += value;
      }
    }
    const at = buffered.indexOf("\n");
    if (at === -1) {
      const rest = buffered;
      buffered = "";
      return rest;
    }
    const line = buffered.slice(0, at);
    buffered = buffered.slice(at + 1);
    return line;
  };
}

/**
 * A listener of another user: binds `argv[2]` (a path, or an abstract name
 * after `@`) as a socket of type `argv[1]`, prints "listening", then for
 * each of `argv[3]` connections prints "received <n>": the bytes the client
 * sent before it closed (or in its first message, for seqpacket).
 */
export const IMPOSTOR_LISTENER = `
import socket, sys
kind, where, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX,
    socket.SOCK_SEQPACKET if kind == "seqpacket" else socket.SOCK_STREAM)
s.bind(b"\\0" + where[1:].encode() if where.startswith("@") else where)
s.listen(8)
print("listening", flush=True)
s.settimeout(20)
for _ in range(count):
    c, _ = s.accept()
    c.settimeout(20)
    total = 0
    while True:
        data = c.recv(65536)
        total += len(data)
        if not data or kind == "seqpacket":
            break
    print("received", total, flush=True)
    c.close()
`;

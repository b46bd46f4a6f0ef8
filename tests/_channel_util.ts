// Helpers of the channel tests: child processes, and raw peers that write
// frames by hand.

import assert from "node:assert/strict";
import {
  Receiver,
  Sender,
  socketpair,
  spawn,
  type UnixSocket,
} from "../mod.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { FRAME, header } from "../_channel_wire.ts";
import { DENO, fixture, withTimeout } from "./_util.ts";
import { releaseFd } from "../_keys.ts";

/** What a test that starts child Deno processes asks for, besides ffi. */
export const PROCS = { run: true, read: true } as const;

const CHILD = fixture("channel_child.ts");

/** Starts `tests/fixtures/channel_child.ts` in `mode`. */
export function child(
  mode: string,
  ...args: string[]
): ReturnType<typeof spawn> {
  return spawn(DENO, {
    args: ["run", "--allow-ffi", CHILD, mode, ...args],
    stdin: "null",
  });
}

/** Waits (20 s at most) for a child to exit with success. */
export async function exited(
  proc: ReturnType<typeof spawn>,
  what: string,
): Promise<void> {
  const status = await withTimeout(proc.status, 20_000, what);
  assert.deepEqual(status, { success: true, code: 0, signal: null }, what);
}

/**
 * A receiver of capacity 4 whose one connection's other end is a raw
 * seqpacket socket: the test writes frames into it by hand. With `mode`,
 * the receiver knows its channel's mode, as one from `channel()`,
 * `bytesChannel()` or `fromFd()` does.
 */
export function rawPair(mode?: number): [UnixSocket, Receiver<unknown>] {
  const [peer, mine] = socketpair({ type: "seqpacket" });
  const owned = new OwnedFd(mine[releaseFd](), "Receiver");
  return [peer, new Receiver([{ fd: owned, capacity: 4, unacked: 0 }], mode)];
}

/** A Sender on a raw seqpacket socket whose other end the test reads. */
export function rawSender(capacity = 64): [Sender<unknown>, UnixSocket] {
  const [mine, theirs] = socketpair({ type: "seqpacket" });
  return [new Sender(mine[releaseFd](), capacity, 0), theirs];
}

/**
 * A frame of `type` with header field `a` and `body` (its head length, and
 * its tree length, `tree` or the whole body).
 */
export function frame(
  type: number,
  a: number,
  body: number[],
  tree?: number,
): Uint8Array {
  const head = header(type, a, body.length, tree ?? body.length);
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

/** A frame whose value is the string `text` (ASCII, at most 127 bytes). */
export function stringFrame(text: string): Uint8Array {
  const tree = [7, text.length, ...new TextEncoder().encode(text)];
  return frame(FRAME.MESSAGE, 0, [...tree, 0], tree.length);
}

/** A BATCH frame of `records` (`count` overrides the record count). */
export function batchFrame(
  records: Uint8Array[],
  count: number = records.length,
): Uint8Array {
  const body: number[] = [];
  for (const record of records) {
    const length = new Uint8Array(4);
    new DataView(length.buffer).setUint32(0, record.length, true);
    body.push(...length, ...record);
  }
  const out = new Uint8Array(16 + body.length);
  out.set(header(FRAME.BATCH, count));
  out.set(body, 16);
  return out;
}

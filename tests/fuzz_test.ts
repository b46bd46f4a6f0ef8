// Bounded, deterministic fuzzing of every decoder of data from a peer, with
// the targets of `deno task fuzz` (tests/_fuzz.ts) at fixed seeds: a
// failure names the case, and how to run it again alone.

import assert from "node:assert/strict";
import { ChannelClosedError, fromFd, socketpair } from "../mod.ts";
import { TAG } from "../channel/_codec_tags.ts";
import { FRAME, INLINE_MAX } from "../_channel_wire.ts";
import { libc } from "../ffi/libc.ts";
import {
  ADOPTED_AS,
  bindAbstract,
  closeFds,
  FD_KINDS,
  frameOf,
  KIND,
  makeFds,
  messageFrame,
  rawPair,
  runTarget,
  TARGETS,
} from "./_fuzz.ts";
import { test } from "./_util.ts";
import { releaseFd } from "../_keys.ts";

/** The seed of the suite's runs. */
const SEED = 0xc0dec;

/** Cases per target: together well over the 10,000 a CI fuzz runs. */
const CASES: Record<string, number> = {
  "codec-mutate": 20_000,
  "codec-random": 20_000,
  "control": 10_000,
  "frames": 3_000,
  "ring": 2_000,
  "fd-kinds": 1_000,
  "adopt": 1_000,
};

for (const target of TARGETS) {
  const cases = CASES[target.name];
  test(`fuzz ${target.name} (${cases} cases): ${target.checks}`, async () => {
    const outcomes = await runTarget(target, SEED, cases);
    target.expect(outcomes, cases);
  });
}

// Regressions found by fuzzing, each a case of its own.

test(
  "a frame refused at its header closes the fds that came with it (bad version, oversize, hello, add-peer)",
  async () => {
    const cases: [string, Uint8Array, number][] = [
      [
        "bad version",
        (() => {
          const f = messageFrame(1, [TAG.NULL]);
          f[1] = 2;
          return f;
        })(),
        1,
      ],
      ["short header", new Uint8Array([FRAME.MESSAGE, 1, 0]), 2],
      ["oversize", new Uint8Array(INLINE_MAX + 4096).fill(1), 2],
      ["hello with an fd", frameOf(FRAME.HELLO, 4, 0, 0, []), 1],
      ["add-peer with two fds", frameOf(FRAME.ADD_PEER, 4, 0, 0, []), 2],
      ["add-peer of capacity 0", frameOf(FRAME.ADD_PEER, 0, 0, 0, []), 1],
      ["add-peer with data", frameOf(FRAME.ADD_PEER, 4, 0, 0, [1]), 1],
    ];
    for (const [what, frame, fdCount] of cases) {
      const [peer, rx] = rawPair();
      try {
        const fds = makeFds(fdCount, 0);
        await peer.send(frame, { fds });
        closeFds(fds);
        assert.throws(() => rx.tryRecv(), Deno.errors.InvalidData, what);
        assert.throws(() => rx.tryRecv(), ChannelClosedError, what);
      } finally {
        peer.close();
        rx.close();
      }
    }
  },
);

test(
  "an endpoint refused after its fd was named closes that fd (bad sender, receiver cut short)",
  async () => {
    const cases: [string, number[], number][] = [
      ["sender of capacity 0", [TAG.ENDPOINT, KIND.SENDER, 0, 0, 0], 1],
      ["sender of a bad mode", [TAG.ENDPOINT, KIND.SENDER, 0, 4, 9], 1],
      ["sender cut short", [TAG.ENDPOINT, KIND.SENDER, 0], 1],
      // Each connection: fd, capacity, unacked, messages carried along.
      ["receiver naming a missing fd", [
        TAG.ENDPOINT,
        KIND.RECEIVER,
        2,
        0,
        4,
        0,
        0,
        7,
        4,
        0,
        0,
      ], 1],
      ["receiver with a bad second connection", [
        TAG.ENDPOINT,
        KIND.RECEIVER,
        2,
        0,
        4,
        0,
        0,
        1,
        0,
        0,
        0,
      ], 2],
      ["receiver carrying a malformed batch", [
        TAG.ENDPOINT,
        KIND.RECEIVER,
        1,
        0,
        4,
        0,
        1,
        3,
        1,
        2,
        3,
      ], 1],
      [
        "receiver cut short",
        [TAG.ENDPOINT, KIND.RECEIVER, 2, 0, 4, 0, 0, 1],
        2,
      ],
      ["second endpoint reuses an fd", [
        TAG.ARRAY,
        2,
        TAG.ENDPOINT,
        KIND.SENDER,
        0,
        4,
        0,
        TAG.ENDPOINT,
        KIND.SENDER,
        0,
        4,
        0,
      ], 1],
    ];
    for (const [what, tree, fdCount] of cases) {
      const [peer, rx] = rawPair();
      try {
        // Seqpacket sockets: they make a Sender or a Receiver connection.
        const fds = makeFds(fdCount, 8);
        await peer.send(messageFrame(fdCount, tree), { fds });
        closeFds(fds);
        assert.throws(() => rx.tryRecv(), Deno.errors.InvalidData, what);
        assert.throws(() => rx.tryRecv(), ChannelClosedError, what);
      } finally {
        peer.close();
        rx.close();
      }
    }
  },
);

test(
  "fromFd() on fds of every kind returns the documented endpoint or throws (TypeError; RangeError for an empty memfd), leaving the fd to the caller",
  () => {
    for (const [name, make] of FD_KINDS) {
      const expected = ADOPTED_AS[name] ?? null;
      const fd = make();
      let endpoint;
      try {
        endpoint = fromFd(fd, { allowCloexec: true });
      } catch (error) {
        // The fd is still open: closing it succeeds.
        assert.equal(libc().close(fd), 0, name);
        // An empty memfd is SharedMemory that cannot be mapped.
        const Class = name === "empty memfd" ? RangeError : TypeError;
        assert.ok(error instanceof Class, `${name}: ${error}`);
        assert.equal(expected, null, `${name}: ${error}`);
        continue;
      }
      endpoint.close();
      assert.equal(endpoint.constructor.name, expected, name);
    }
  },
);

test(
  "fromFd() adopts a socket named like a channel end but with a mode or capacity no channel has as a plain UnixSocket",
  () => {
    const cases: [string, string][] = [
      ["s/9/4", "UnixSocket"],
      ["s/2/4", "UnixSocket"],
      ["r/1/1000001", "UnixSocket"],
      ["s/0/999999999", "UnixSocket"],
      ["r/0/0", "UnixSocket"],
      ["s/1/1000000", "Sender"],
      ["r/0/64", "Receiver"],
    ];
    for (const [fields, expected] of cases) {
      const [a, b] = socketpair({ type: "seqpacket" });
      b.close();
      const fd = a[releaseFd]();
      bindAbstract(fd, `conduit-ch/${fields}/${"ab".repeat(12)}`);
      const endpoint = fromFd(fd, { allowCloexec: true });
      endpoint.close();
      assert.equal(endpoint.constructor.name, expected, fields);
    }
  },
);

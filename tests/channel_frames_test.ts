// Frames from a hostile peer (channel/_parse.ts): every malformed frame
// fails its receive with InvalidData, closes its fds and drops that sender.

import assert from "node:assert/strict";
import {
  bytesChannel,
  channel,
  ChannelClosedError,
  pipe,
  type Receiver,
  Sender,
  socketpair,
} from "../mod.ts";
import { dupCloexec } from "../ffi/fd.ts";
import { MODE_BYTES, MODE_VALUE } from "../channel/_connection.ts";
import { libc } from "../ffi/libc.ts";
import { cstr } from "../ffi/mem.ts";
import { F, MMAP, O, SOCK } from "../ffi/layout.ts";
import {
  FRAME,
  header,
  sendFrame,
  seqpacketPair,
  writeMemfd,
} from "../_channel_wire.ts";
import { batchFrame, frame, rawPair, stringFrame } from "./_channel_util.ts";
import { test, withTimeout } from "./_util.ts";
import { releaseFd } from "../_keys.ts";
import type { DecodeLimits } from "../channel/_codec_limits.ts";

test(
  "malformed frames fail the receive with InvalidData, close their fds and drop that sender",
  async () => {
    const deep = [...Array(1500).fill(8).flatMap((t) => [t, 1]), 1];
    const cases: [string, Uint8Array, boolean?][] = [
      ["unknown tag", frame(FRAME.MESSAGE, 0, [99, 0])],
      ["truncated header", new Uint8Array([1, 1, 0])],
      [
        "bad version",
        (() => {
          const f = frame(FRAME.MESSAGE, 0, [1, 0]);
          f[1] = 9;
          return f;
        })(),
      ],
      [
        // Version 1 numbered endpoints differently: its values would
        // decode to other objects.
        "version 1",
        (() => {
          const f = frame(FRAME.MESSAGE, 0, [1, 0]);
          f[1] = 1;
          return f;
        })(),
      ],
      ["fd count mismatch", frame(FRAME.MESSAGE, 0, [1, 0]), true],
      ["string past the end", frame(FRAME.MESSAGE, 0, [7, 100, 65, 0], 3)],
      ["huge array count", frame(FRAME.MESSAGE, 0, [8, 0xff, 0xff, 0x7f, 0])],
      ["nesting too deep", frame(FRAME.MESSAGE, 0, [...deep, 0])],
      ["reference ahead", frame(FRAME.MESSAGE, 0, [17, 5, 0])],
      ["endpoint without fd", frame(FRAME.MESSAGE, 0, [18, 1, 0, 0])],
      ["blob table lies", frame(FRAME.MESSAGE, 0, [14, 0, 1, 0, 50], 2)],
      ["unknown frame type", frame(42, 0, [1, 0])],
      ["memfd frame without memfd", frame(FRAME.MESSAGE_MEMFD, 0, [])],
      [
        "memfd frame with its head inline and no memfd",
        (() => {
          const f = stringFrame("inline");
          f[0] = FRAME.MESSAGE_MEMFD;
          return f;
        })(),
      ],
    ];
    for (const [what, bytes, withFd] of cases) {
      const [peer, rx] = rawPair();
      const { reader, writer } = pipe();
      await peer.send(bytes, withFd ? { fds: [reader] } : {});
      await assert.rejects(
        withTimeout(rx.recv(), 2000, what),
        Deno.errors.InvalidData,
        what,
      );
      await assert.rejects(rx.recv(), ChannelClosedError, `${what}: dropped`);
      await assert.rejects(
        peer.send(new Uint8Array([1])),
        Deno.errors.BrokenPipe,
        `${what}: the peer sees the drop`,
      );
      for (const e of [peer, rx, reader, writer]) e.close();
    }

    // A large frame must come in a sealed memfd, not any file.
    const [peer, rx] = rawPair();
    const fd = libc().memfd_create(cstr("unsealed"), MMAP.MFD_CLOEXEC);
    await peer.send(frame(FRAME.BYTES_MEMFD, 0, []), { fds: [fd] });
    libc().close(fd);
    await assert.rejects(rx.recv(), /sealed memfd/);
    peer.close();
    rx.close();

    // A well-formed frame from the same raw peer is accepted.
    const [good, grx] = rawPair();
    await good.send(frame(FRAME.MESSAGE, 0, [7, 2, 104, 105, 0], 4));
    assert.equal(await grx.recv(), "hi");
    good.close();
    grx.close();
  },
);

/** `MFD_HUGETLB` of `<linux/memfd.h>`: a memfd of hugetlbfs. */
const MFD_HUGETLB = 0x0004;

test(
  "a large message's memfd is checked before its head is read: one not of tmpfs, one with holes, one that came before, a tree longer than limits.maxBytes allows and a blob table longer than its count fail with InvalidData and drop that sender",
  async () => {
    const lib = libc();
    const SEALS = 15;
    /** A sealed memfd of `size` bytes that nobody wrote, or null. */
    const unwritten = (size: bigint, flags = 0) => {
      const fd = lib.memfd_create(
        cstr("unwritten"),
        MMAP.MFD_CLOEXEC | MMAP.MFD_ALLOW_SEALING | flags,
      );
      if (fd === -1) return null;
      assert.equal(lib.ftruncate(fd, size), 0);
      assert.equal(lib.fcntl(fd, F.ADD_SEALS, SEALS), 0);
      return fd;
    };
    // Holes, which read as zeros without costing the sender any memory.
    const sparse = unwritten(64n << 20n)!;
    // Pages of hugetlbfs never written read as zeros too, and SEEK_HOLE
    // does not see them.
    const huge = unwritten(2n << 20n, MFD_HUGETLB);
    const hi = [7, 2, 104, 105];
    // Written whole: 4,096 bytes, a string "hi" and then zeros.
    const whole = () =>
      writeMemfd([new Uint8Array([...hi, 0]), new Uint8Array(4091)]);
    const again = whole();
    const opened = [sparse, again];
    const cases: [string, number, Uint8Array, RegExp, DecodeLimits?][] = [
      [
        "sparse memfd",
        sparse,
        header(FRAME.MESSAGE_MEMFD, 0, (64 << 20) - 8, 1),
        /a large frame's memfd has holes \(unwritten bytes\)/,
      ],
      [
        "the first time",
        again,
        header(FRAME.MESSAGE_MEMFD, 0, hi.length + 1, hi.length),
        /blobs claim 0 of the 4091 bytes sent/,
      ],
      [
        "the same memfd again",
        again,
        header(FRAME.MESSAGE_MEMFD, 0, hi.length + 1, hi.length),
        /a large frame's memfd came before \(each message comes in a memfd of its own\)/,
      ],
    ];
    for (
      const [what, limits] of [
        ["tree longer than maxBytes allows", {
          maxBytes: 1024,
          maxEndpoints: 0,
        }],
        // With endpoints, each may take a packet's worth of tree.
        ["tree longer than maxBytes and endpoints allow", {
          maxBytes: 1024,
          maxEndpoints: 1,
        }],
      ] as const
    ) {
      const fd = whole();
      opened.push(fd);
      const tree = limits.maxEndpoints === 0 ? 4000 : 4096 - 2;
      cases.push([
        what,
        fd,
        header(FRAME.MESSAGE_MEMFD, 0, 4096, tree),
        limits.maxEndpoints === 0
          ? /exceeds limits\.maxBytes \(1024\): a value encoded in 4000 bytes/
          : /a blob table of 2 bytes for 0 blobs/,
        limits,
      ]);
    }
    const table = whole();
    opened.push(table);
    cases.push([
      "blob table longer than its count",
      table,
      header(FRAME.MESSAGE_MEMFD, 0, 4096, hi.length),
      /a blob table of 4092 bytes for 0 blobs/,
    ]);
    if (huge !== null) {
      opened.push(huge);
      cases.push([
        "hugetlbfs memfd",
        huge,
        header(FRAME.MESSAGE_MEMFD, 0, (2 << 20) - 8, 1),
        /a large frame must come in a memfd of tmpfs/,
      ]);
    } else {
      console.warn("hugetlbfs memfds are not available: that case is not run");
    }
    for (const [what, memfd, bytes, error, limits] of cases) {
      const [peer, rx] = rawPair();
      if (limits !== undefined) rx.limits = limits;
      await peer.send(bytes, { fds: [memfd] });
      await assert.rejects(
        withTimeout(rx.recv(), 10_000, what),
        (e: unknown) =>
          e instanceof Deno.errors.InvalidData && error.test(e.message),
        what,
      );
      await assert.rejects(rx.recv(), ChannelClosedError, `${what}: dropped`);
      peer.close();
      rx.close();
    }
    // A memfd of its own with a head that fits is a message.
    const [peer, rx] = rawPair();
    const good = writeMemfd([new Uint8Array([...hi, 0])]);
    await peer.send(header(FRAME.MESSAGE_MEMFD, 0, hi.length + 1, hi.length), {
      fds: [good],
    });
    assert.equal(await withTimeout(rx.recv(), 10_000, "good memfd"), "hi");
    peer.close();
    rx.close();
    lib.close(good);
    for (const fd of opened) lib.close(fd);
  },
);

test(
  "a receiver moved in a large message with a batch it has not handed out arrives whole under limits its value fits: the batch is not counted against maxBytes",
  async () => {
    const [tx, rx] = channel<string>();
    const text = "x".repeat(1000);
    // Sent in one turn: the first leaves at once, the others gathered in
    // one packet. The second recv reads that packet and takes one of it;
    // the rest stays in the receiver.
    const sends = [];
    for (let i = 0; i < 50; i++) sends.push(tx.send(text));
    await Promise.all(sends);
    assert.equal(await rx.recv(), text);
    assert.equal(await rx.recv(), text);
    const [tx2, rx2] = channel<{ r: Receiver<string>; pad: Uint8Array }>();
    rx2.limits = { maxBytes: 8192 };
    // The pad makes the message larger than a packet: it travels in a memfd.
    await tx2.send({ r: rx, pad: new Uint8Array(100_000) });
    tx.close();
    const got = await withTimeout(rx2.recv(), 10_000, "the moved receiver");
    let taken = 0;
    for await (const message of got.r) {
      assert.equal(message, text);
      taken++;
    }
    assert.equal(taken, 48);
    got.r.close();
    tx2.close();
    rx2.close();
  },
);

test(
  "malformed batches fail the receive with InvalidData and drop that sender",
  async () => {
    const ok = stringFrame("x");
    const withFd = frame(FRAME.MESSAGE, 1, [0]);
    const cut = batchFrame([ok, ok]).subarray(0, 30);
    const long = batchFrame([ok]);
    new DataView(long.buffer).setUint32(16, 4000, true);
    const cases: [string, Uint8Array, boolean?][] = [
      ["count above the records", batchFrame([ok, ok], 3)],
      ["count below the records", batchFrame([ok, ok], 1)],
      ["count of zero", batchFrame([], 0)],
      ["record past the end", long],
      ["cut short", cut],
      ["record that names fds", batchFrame([ok, withFd])],
      ["control frame inside", batchFrame([ok, header(FRAME.ADD_PEER, 4)])],
      ["batch inside a batch", batchFrame([batchFrame([ok])])],
      ["fds attached to a batch", batchFrame([ok, ok]), true],
    ];
    for (const [what, bytes, withFds] of cases) {
      const [peer, rx] = rawPair();
      const { reader, writer } = pipe();
      await peer.send(bytes, withFds ? { fds: [reader] } : {});
      let taken = 0;
      try {
        for (;;) {
          assert.equal(rx.tryRecv(), "x", what);
          taken++;
        }
      } catch (error) {
        assert.ok(
          error instanceof Deno.errors.InvalidData,
          `${what}: ${error}`,
        );
      }
      // A batch's layout is checked whole before any message of it is
      // handed out.
      assert.equal(taken, 0, what);
      assert.throws(() => rx.tryRecv(), ChannelClosedError, what);
      for (const e of [peer, rx, reader, writer]) e.close();
    }
    // A message that does not decode fails when its turn comes; the ones
    // before it were good.
    const [peer, rx] = rawPair();
    const bad = frame(FRAME.MESSAGE, 0, [99, 0], 1);
    await peer.send(batchFrame([ok, bad, ok]));
    assert.equal(rx.tryRecv(), "x");
    assert.throws(() => rx.tryRecv(), Deno.errors.InvalidData);
    assert.throws(() => rx.tryRecv(), ChannelClosedError);
    peer.close();
    rx.close();
  },
);

test(
  "a Sender or Receiver from a peer must be a unix seqpacket socket: InvalidData names the fd and what it is",
  async () => {
    const lib = libc();
    const kinds: [string, () => number][] = [
      [
        "a directory",
        () => lib.open(cstr("/tmp"), O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0),
      ],
      ["an anonymous inode", () => lib.eventfd(0, 0o2000000)],
      ["an IPv4 socket", () => lib.socket(2, SOCK.STREAM | SOCK.CLOEXEC, 0)],
      ["a unix stream socket", () => {
        const [x, y] = socketpair({ type: "stream" });
        y.close();
        return x[releaseFd]();
      }],
    ];
    const trees: [string, number[]][] = [
      ["a Sender", [18, 8, 0, 4, 0]],
      ["a Receiver's connection", [18, 9, 0, 1, 0, 4, 0, 0]],
    ];
    for (const [what, tree] of trees) {
      for (const [kind, make] of kinds) {
        const [peer, rx] = rawPair();
        const fd = make();
        assert.ok(fd >= 0, kind);
        await peer.send(frame(FRAME.MESSAGE, 1, [...tree, 0], tree.length), {
          fds: [fd],
        });
        lib.close(fd);
        await assert.rejects(
          withTimeout(rx.recv(), 2000, `${what}: ${kind}`),
          (error: unknown) =>
            error instanceof Deno.errors.InvalidData &&
            error.message.includes(`${what} (fd 0 of the message, `) &&
            error.message.includes(`${kind}`) &&
            error.message.includes("not a unix seqpacket socket"),
          `${what}: ${kind}`,
        );
        peer.close();
        rx.close();
      }
    }
    // A new sender added through a connection, likewise.
    const [peer, rx] = rawPair();
    const [x, y] = socketpair({ type: "stream" });
    await peer.send(header(FRAME.ADD_PEER, 4), { fds: [x] });
    assert.throws(
      () => rx.tryRecv(),
      /a new sender's connection \(fd \d+ here\) is a unix stream socket/,
    );
    for (const e of [peer, rx, x, y]) e.close();
  },
);

test(
  "a receiver that knows its mode refuses the other kind of frame: values (and the endpoints in them) on a bytesChannel(), bytes on a channel()",
  async () => {
    const bytes = frame(FRAME.BYTES, 0, [1, 2, 3]);
    const cases: [string, number, Uint8Array][] = [
      ["a value on a bytes channel", MODE_BYTES, stringFrame("admin")],
      [
        "a value in a batch on a bytes channel",
        MODE_BYTES,
        batchFrame([
          stringFrame("admin"),
        ]),
      ],
      ["bytes on a value channel", MODE_VALUE, bytes],
      ["bytes in a batch on a value channel", MODE_VALUE, batchFrame([bytes])],
    ];
    for (const [what, mode, sent] of cases) {
      const [peer, rx] = rawPair(mode);
      await peer.send(sent);
      await assert.rejects(
        withTimeout(rx.recv(), 2000, what),
        (e: Error) =>
          e instanceof Deno.errors.InvalidData && /frame on a/.test(e.message),
        what,
      );
      await assert.rejects(rx.recv(), ChannelClosedError, `${what}: dropped`);
      peer.close();
      rx.close();
    }
    // A value frame carrying a pipe end: the fd is closed, not adopted.
    const [peer, rx] = rawPair(MODE_BYTES);
    const { reader, writer } = pipe();
    await peer.send(frame(FRAME.MESSAGE, 1, [18, 1, 0, 0]), {
      fds: [reader],
    });
    reader.close();
    await assert.rejects(
      withTimeout(rx.recv(), 2000, "endpoint on a bytes channel"),
      Deno.errors.InvalidData,
    );
    await assert.rejects(
      writer.write(new Uint8Array(1)),
      Deno.errors.BrokenPipe,
      "the pipe's read end was closed by the receiver",
    );
    for (const e of [peer, rx, writer]) e.close();

    // Through the public API: a second, value-mode sender on a
    // bytesChannel()'s socket.
    const [btx, brx] = bytesChannel();
    const intruder = new Sender(dupCloexec(btx.rawFd), 4, MODE_VALUE);
    await btx.send(new Uint8Array([7]));
    await intruder.send({ admin: true });
    assert.deepEqual(await brx.recv(), new Uint8Array([7]));
    await assert.rejects(
      withTimeout(brx.recv(), 2000, "intruder"),
      Deno.errors.InvalidData,
    );
    for (const e of [intruder, btx, brx]) e.close();

    // A bytes receiver that travelled in a message keeps its mode (read
    // from its socket's mark).
    const [ctx, crx] = channel<{ rx: Receiver<Uint8Array> }>();
    const [btx2, brx2] = bytesChannel();
    const intruder2 = new Sender(dupCloexec(btx2.rawFd), 4, MODE_VALUE);
    await ctx.send({ rx: brx2 });
    const { rx: moved } = await crx.recv();
    await btx2.send(new Uint8Array([8]));
    await intruder2.send("hello");
    assert.deepEqual(await moved.recv(), new Uint8Array([8]));
    await assert.rejects(
      withTimeout(moved.recv(), 2000, "intruder to a moved receiver"),
      Deno.errors.InvalidData,
    );
    for (const e of [intruder2, btx2, brx2, moved, ctx, crx]) e.close();

    // A peer that holds the sender adds a connection of its own (unmarked)
    // and closes the original, before the receiver travels: the mode
    // travels in the message, not in the sockets' names.
    const [htx, hrx] = channel<{ rx: Receiver<Uint8Array> }>();
    const [btx3, brx3] = bytesChannel();
    const [evilFd, added] = seqpacketPair();
    assert.ok(sendFrame(btx3.rawFd, [header(FRAME.ADD_PEER, 4)], [added]));
    libc().close(added);
    btx3.close();
    const evil = new Sender(evilFd, 4, MODE_VALUE);
    // The receiver takes the new connection and the original's end.
    await assert.rejects(
      brx3.recv({ signal: AbortSignal.timeout(200) }),
      (e: Error) => e.name === "TimeoutError",
    );
    await htx.send({ rx: brx3 });
    const { rx: travelled } = await hrx.recv();
    await evil.send("hello");
    await assert.rejects(
      withTimeout(travelled.recv(), 2000, "a value after the receiver moved"),
      Deno.errors.InvalidData,
    );
    for (const e of [evil, travelled, htx, hrx]) e.close();
  },
);

import assert from "node:assert/strict";
import { socketpair, UnixSocket } from "../socketpair.ts";
import { PipeReader } from "../pipe.ts";
import { spawn } from "../spawn.ts";
import { libc } from "../ffi/libc.ts";
import { CMSGHDR, F, MSG, SOCK } from "../ffi/layout.ts";
import { MessageArea } from "../ffi/msghdr.ts";
import {
  closeAll,
  MAX_FDS,
  parseControl,
  receivedFds,
  writeRights,
} from "../ffi/cmsg.ts";
import { listDir, readProcText, test, withTimeout } from "./_util.ts";
import { readAllText } from "./_socket_util.ts";

const perms = { read: true } as const;

/** One control message: header, payload, and padding up to CMSG_SPACE. */
function cmsg(
  level: number,
  type: number,
  payload: Uint8Array,
  len = CMSGHDR.size + payload.length,
): Uint8Array {
  const out = new Uint8Array((CMSGHDR.size + payload.length + 7) & ~7);
  const view = new DataView(out.buffer);
  view.setBigUint64(CMSGHDR.len, BigInt(len), true);
  view.setInt32(CMSGHDR.level, level, true);
  view.setInt32(CMSGHDR.type, type, true);
  out.set(payload, CMSGHDR.size);
  return out;
}

function ints(...values: number[]): Uint8Array {
  return new Uint8Array(new Int32Array(values).buffer);
}

function rights(...fds: number[]): Uint8Array {
  return cmsg(SOCK.SOL_SOCKET, SOCK.SCM_RIGHTS, ints(...fds));
}

function credentials(pid: number, uid: number, gid: number): Uint8Array {
  return cmsg(SOCK.SOL_SOCKET, SOCK.SCM_CREDENTIALS, ints(pid, uid, gid));
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * Parses `bytes` placed at offset 8 of a view that ends where they do, so
 * that any read outside the buffer throws instead of passing unnoticed.
 */
function parse(bytes: Uint8Array, length = bytes.length) {
  const memory = new Uint8Array(8 + bytes.length);
  memory.fill(0xee, 0, 8);
  memory.set(bytes, 8);
  return parseControl(new DataView(memory.buffer), 8, length);
}

/** Real fds (pipe ends), to see whether they get closed. */
function openPipes(pairs: number): number[] {
  const fds: number[] = [];
  const two = new Int32Array(2);
  for (let i = 0; i < pairs; i++) {
    assert.equal(libc().pipe2(two, 0o2000000), 0);
    fds.push(two[0], two[1]);
  }
  return fds;
}

function isOpen(fd: number): boolean {
  return libc().fcntl(fd, F.GETFD, 0) !== -1;
}

test("parseControl takes the fds of SCM_RIGHTS messages, in order", () => {
  const parsed = parse(concat(rights(7, 8, 9), rights(10)));
  assert.equal(parsed.malformed, "");
  assert.deepEqual(parsed.fds, [7, 8, 9, 10]);
  assert.deepEqual(parsed.stray, []);
  assert.equal(parsed.credentials, undefined);
});

test("parseControl reads SCM_CREDENTIALS and skips a security label", () => {
  const label = cmsg(
    SOCK.SOL_SOCKET,
    SOCK.SCM_SECURITY,
    new TextEncoder().encode("unconfined\0"),
  );
  const parsed = parse(concat(credentials(42, 1000, 100), label, rights(5)));
  assert.equal(parsed.malformed, "");
  assert.deepEqual(parsed.credentials, { pid: 42, uid: 1000, gid: 100 });
  assert.deepEqual(parsed.fds, [5]);
});

test("parseControl skips receive timestamps (old and new layouts) and SCM_INQ, and reads the fds around them", () => {
  for (
    const [type, size] of [
      [SOCK.SCM_TIMESTAMP, 16],
      [SOCK.SCM_TIMESTAMPNS, 16],
      [SOCK.SCM_TIMESTAMPING, 48],
      [SOCK.SO_TIMESTAMP_NEW, 16],
      [SOCK.SO_TIMESTAMPNS_NEW, 16],
      [SOCK.SO_TIMESTAMPING_NEW, 48],
      [SOCK.SCM_INQ, 4],
    ]
  ) {
    const stamp = cmsg(SOCK.SOL_SOCKET, type, new Uint8Array(size).fill(0xff));
    const parsed = parse(concat(stamp, credentials(1, 2, 3), rights(6, 7)));
    assert.equal(parsed.malformed, "", `type ${type}`);
    assert.deepEqual(parsed.fds, [6, 7], `type ${type}`);
    assert.deepEqual(parsed.stray, [], `type ${type}`);
    assert.deepEqual(parsed.credentials, { pid: 1, uid: 2, gid: 3 });
  }
});

test("parseControl reports a pidfd as stray, never as a received fd", () => {
  const pidfd = cmsg(SOCK.SOL_SOCKET, SOCK.SCM_PIDFD, ints(12));
  const parsed = parse(concat(pidfd, rights(3)));
  assert.equal(parsed.malformed, "");
  assert.deepEqual(parsed.fds, [3]);
  assert.deepEqual(parsed.stray, [12]);
});

test("parseControl accepts a last message without its padding", () => {
  // Room for CMSG_LEN but not CMSG_SPACE: the kernel then cuts the padding.
  const one = rights(4);
  const parsed = parse(one, CMSGHDR.size + 4);
  assert.equal(parsed.malformed, "");
  assert.deepEqual(parsed.fds, [4]);
});

test("parseControl: an empty control buffer holds nothing", () => {
  const parsed = parse(new Uint8Array(0));
  assert.equal(parsed.malformed, "");
  assert.deepEqual(parsed.fds, []);
});

const malformed: [string, () => Uint8Array, RegExp][] = [
  [
    "cmsg_len too small for the header",
    () => cmsg(SOCK.SOL_SOCKET, SOCK.SCM_RIGHTS, ints(3), 15),
    /control message length 15/,
  ],
  [
    "cmsg_len 0 (a loop that trusted it would never advance)",
    () => cmsg(SOCK.SOL_SOCKET, SOCK.SCM_RIGHTS, ints(3), 0),
    /control message length 0/,
  ],
  [
    "cmsg_len past the control length",
    () => cmsg(SOCK.SOL_SOCKET, SOCK.SCM_RIGHTS, ints(3, 4), 48),
    /control message length 48 at offset 0 \(24 bytes left\)/,
  ],
  [
    "cmsg_len of 2^63",
    () => {
      const bytes = rights(3, 4);
      new DataView(bytes.buffer).setBigUint64(0, 1n << 63n, true);
      return bytes;
    },
    /control message length 9223372036854775808/,
  ],
  [
    "a second message whose cmsg_len runs past the buffer",
    () =>
      concat(rights(3), cmsg(SOCK.SOL_SOCKET, SOCK.SCM_RIGHTS, ints(4), 64)),
    /control message length 64 at offset 24/,
  ],
  [
    "an SCM_RIGHTS payload that is not whole ints (misaligned cmsg_len)",
    () => cmsg(SOCK.SOL_SOCKET, SOCK.SCM_RIGHTS, ints(3, 4), CMSGHDR.size + 6),
    /SCM_RIGHTS payload of 6 bytes/,
  ],
  [
    "SCM_CREDENTIALS of the wrong size",
    () => cmsg(SOCK.SOL_SOCKET, SOCK.SCM_CREDENTIALS, ints(1, 2)),
    /SCM_CREDENTIALS payload of 8 bytes, not 12/,
  ],
  [
    "an SCM_PIDFD of the wrong size",
    () => cmsg(SOCK.SOL_SOCKET, SOCK.SCM_PIDFD, ints(1, 2)),
    /SCM_PIDFD payload of 8 bytes/,
  ],
  [
    "bytes after the last message, too few for a header",
    () => concat(rights(3), new Uint8Array(8)),
    /8 bytes after the last control message/,
  ],
  [
    "a buffer cut inside the first header",
    () => rights(3).subarray(0, 12),
    /12 bytes after the last control message/,
  ],
  [
    "a level other than SOL_SOCKET",
    () => cmsg(0, SOCK.SCM_RIGHTS, ints(3)),
    /level 0 \(type 1\), which a unix socket never carries/,
  ],
  [
    "a type a unix socket never carries",
    () => cmsg(SOCK.SOL_SOCKET, 77, ints(3)),
    /type 77, which a unix socket never carries/,
  ],
  [
    "a negative fd",
    () => rights(3, -1),
    /negative fd -1/,
  ],
  [
    "more fds than one message may carry",
    () => rights(...Array.from({ length: MAX_FDS + 1 }, (_, i) => i)),
    new RegExp(`${MAX_FDS + 1} fds in one message`),
  ],
];

for (const [what, build, message] of malformed) {
  test(`parseControl calls malformed: ${what}`, () => {
    const parsed = parse(build());
    assert.match(parsed.malformed, message);
    for (const fd of parsed.fds) assert.ok(fd >= 0);
  });
}

test("parseControl still reports the fds found before a fault, to close them", () => {
  const parsed = parse(concat(rights(3, 4), cmsg(41, 1, ints(5))));
  assert.match(parsed.malformed, /level 41/);
  assert.deepEqual(parsed.fds, [3, 4]);
});

test("writeRights writes what parseControl reads back, padding zeroed", () => {
  for (const count of [1, 2, 3, MAX_FDS]) {
    const fds = Array.from({ length: count }, (_, i) => 100 + i);
    const memory = new Uint8Array(8 + 16 + 4 * MAX_FDS + 8).fill(0xff);
    const view = new DataView(memory.buffer);
    const space = writeRights(view, 8, fds);
    assert.equal(space, CMSGHDR.size + ((count * 4 + 7) & ~7));
    for (let i = CMSGHDR.size + count * 4; i < space; i++) {
      assert.equal(memory[8 + i], 0, `padding byte ${i}`);
    }
    const parsed = parseControl(view, 8, space);
    assert.equal(parsed.malformed, "");
    assert.deepEqual(parsed.fds, fds);
  }
});

/** A control buffer in its own view, for receivedFds. */
function control(bytes: Uint8Array): { view: DataView; length: number } {
  const memory = new Uint8Array(bytes.length + 8);
  memory.set(bytes);
  return { view: new DataView(memory.buffer), length: bytes.length };
}

test(
  "receivedFds closes every fd that arrived when the control data is malformed",
  () => {
    const fds = openPipes(2);
    const { view, length } = control(
      concat(rights(...fds), cmsg(0, 9, ints(1))),
    );
    assert.throws(
      () => receivedFds(view, 0, length, length, 0, MAX_FDS),
      (error: Error) =>
        error instanceof TypeError &&
        /malformed control data: control message of level 0/.test(
          error.message,
        ) && /the 4 fds that arrived were closed/.test(error.message),
    );
    for (const fd of fds) assert.equal(isOpen(fd), false, `fd ${fd}`);
  },
  perms,
);

test(
  "receivedFds closes every fd that arrived when the control data was truncated (MSG_CTRUNC)",
  () => {
    const fds = openPipes(1);
    const { view, length } = control(rights(...fds));
    assert.throws(
      () => receivedFds(view, 0, length, length, MSG.CTRUNC, MAX_FDS),
      (error: Error) =>
        error instanceof RangeError &&
        /control data truncated/.test(error.message),
    );
    for (const fd of fds) assert.equal(isOpen(fd), false, `fd ${fd}`);
  },
  perms,
);

test(
  "receivedFds closes every fd that arrived when there are more than allowed",
  () => {
    const fds = openPipes(2);
    const { view, length } = control(rights(...fds));
    assert.throws(
      () => receivedFds(view, 0, length, length, 0, 3),
      (error: Error) =>
        error instanceof RangeError &&
        /more fds than the 3 allowed/.test(error.message),
    );
    for (const fd of fds) assert.equal(isOpen(fd), false, `fd ${fd}`);
  },
  perms,
);

test(
  "receivedFds treats a control length beyond what was offered as malformed",
  () => {
    const fds = openPipes(1);
    const { view, length } = control(rights(...fds));
    assert.throws(
      () => receivedFds(view, 0, length + 64, length, 0, MAX_FDS),
      (error: Error) =>
        error instanceof TypeError &&
        /beyond the 24 offered/.test(error.message),
    );
    for (const fd of fds) assert.equal(isOpen(fd), false, `fd ${fd}`);
  },
  perms,
);

test(
  "receivedFds hands out the fds of good control data and closes a stray pidfd",
  () => {
    const all = openPipes(2);
    const [stray, ...fds] = all.slice(0, 3);
    const { view, length } = control(
      concat(
        cmsg(SOCK.SOL_SOCKET, SOCK.SCM_PIDFD, ints(stray)),
        rights(...fds),
      ),
    );
    const got = receivedFds(view, 0, length, length, 0, MAX_FDS);
    assert.deepEqual(got, fds);
    assert.equal(isOpen(stray), false);
    for (const fd of fds) assert.equal(isOpen(fd), true);
    // The fourth pipe end was not in the buffer: close it with the others.
    closeAll([...fds, all[3]]);
  },
  perms,
);

// Options a peer may have set on a socket it handed over: the kernel then
// adds control messages to every message this process receives.
const SO_PASSCRED = 16;
const SO_PASSPIDFD = 76;

function setOption(fd: number, option: number): boolean {
  return libc().setsockopt(fd, SOCK.SOL_SOCKET, option, ints(1), 4) === 0;
}

test(
  "a socket with SO_PASSCRED still receives messages and fds (credentials parsed, not mistaken for fds)",
  async () => {
    using pair = socketpair({ type: "seqpacket" });
    const [a, b] = pair;
    assert.ok(setOption(b.rawFd, SO_PASSCRED));
    using other = socketpair({ type: "dgram" });
    await a.send(new Uint8Array([1, 2]), { fds: [other[0]] });
    const message = await b.recv();
    assert.deepEqual([...message!.data], [1, 2]);
    assert.equal(message!.fds.length, 1);
    for (const end of message!.fds) end.close();
    // Without fds too: the credentials alone are no fds.
    await a.send(new Uint8Array([3]));
    assert.deepEqual((await b.recv())!.fds, []);
  },
  perms,
);

test(
  "a socket with SO_PASSPIDFD gets no pidfd handed out or leaked (the fd table check fails otherwise)",
  async () => {
    using pair = socketpair({ type: "seqpacket" });
    const [a, b] = pair;
    if (!setOption(b.rawFd, SO_PASSPIDFD)) {
      // Only kernels before 6.5 lack the option: then no pidfd can arrive.
      const release = readProcText("/proc/sys/kernel/osrelease") ?? "";
      const [major, minor] = release.split(".").map(Number);
      assert.ok(major < 6 || (major === 6 && minor < 5), release);
    } else {
      // The kernel does attach a pidfd: see it with a raw recvmsg.
      await a.send(new Uint8Array([9]));
      const area = new MessageArea({ iovecs: 1, stage: 64, control: 256 });
      area.setIovec(0, area.stageAddress, 64);
      area.setHeader(0, 0, 1, area.address(area.controlAt), 256);
      assert.equal(
        Number(libc().recvmsg(b.rawFd, area.pointer, MSG.CMSG_CLOEXEC)),
        1,
      );
      const raw = parseControl(
        area.view,
        area.controlAt,
        area.controlLength(0),
      );
      assert.equal(raw.malformed, "");
      assert.equal(raw.stray.length, 1);
      closeAll(raw.stray);
    }
    for (let i = 0; i < 3; i++) {
      await a.send(new Uint8Array([i]));
      const message = await b.recv();
      assert.deepEqual([...message!.data], [i]);
      assert.deepEqual(message!.fds, []);
    }
  },
  perms,
);

const PYTHON = "/usr/bin/python3";

/**
 * A peer that hands over one end of a socket pair of each message type
 * with a receive timestamp option set on it (SO_TIMESTAMP, SO_TIMESTAMPNS
 * and their _NEW forms), and a stream socket with SO_INQ where the kernel
 * has it (6.16 on), after sending on the other end a message with an fd (a
 * pipe's read end) and one without.
 */
const TIMESTAMP_PEER = `
import os, socket
out = socket.socket(fileno=3)
cases = [(kind, option) for kind in (socket.SOCK_DGRAM, socket.SOCK_SEQPACKET)
         for option in (29, 35, 63, 64)] + [(socket.SOCK_STREAM, 84)]
for kind, option in cases:
    here, there = socket.socketpair(socket.AF_UNIX, kind)
    try:
        here.setsockopt(socket.SOL_SOCKET, option, 1)
    except OSError:
        assert option == 84  # SO_INQ: Linux 6.16 on
        continue
    r, w = os.pipe()
    os.write(w, b"through the pipe")
    os.close(w)
    socket.send_fds(there, [b"with an fd"], [r])
    os.close(r)
    there.send(b"without")
    there.close()
    socket.send_fds(out, [f"type {kind}, option {option}".encode()], [here.fileno()])
    here.close()
out.close()
`;

test(
  "sockets a peer set up with a receive timestamp option or SO_INQ still deliver their messages and fds, none lost to a malformed-control error",
  async () => {
    const decoder = new TextDecoder();
    const [mine, theirs] = socketpair({ type: "seqpacket" });
    await using child = spawn(PYTHON, {
      args: ["-c", TIMESTAMP_PEER],
      fds: [theirs],
    });
    theirs.close();
    let handed = 0;
    for (;;) {
      const message = await withTimeout(mine.recv(), 10_000, "a socket");
      if (message === null) break;
      const what = decoder.decode(message.data);
      const [socket] = message.fds;
      assert.ok(socket instanceof UnixSocket, what);
      const first = await withTimeout(socket.recv(), 5_000, what);
      assert.equal(decoder.decode(first!.data), "with an fd", what);
      const [reader] = first!.fds;
      assert.ok(reader instanceof PipeReader, what);
      assert.equal(await readAllText(reader, what), "through the pipe");
      reader.close();
      const second = await withTimeout(socket.recv(), 5_000, what);
      assert.equal(decoder.decode(second!.data), "without", what);
      assert.deepEqual(second!.fds, [], what);
      socket.close();
      handed++;
    }
    mine.close();
    assert.ok(handed === 8 || handed === 9, `${handed} sockets`);
    const status = await withTimeout(child.status, 10_000, "the peer");
    assert.equal(status.success, true);
  },
  { read: true, run: true },
  { ignore: !listDir("/usr/bin").includes("python3") },
);

import assert from "node:assert/strict";
import { fromFd, SharedMemory, socketpair, spawn } from "../mod.ts";
import {
  assertFdsUnchanged,
  DENO,
  fdSnapshot,
  fdTarget,
  fixture,
  test,
  withTimeout,
  zombieChildren,
} from "./_util.ts";
import { libc } from "../ffi/libc.ts";
import { MMAP, O, STAT } from "../ffi/layout.ts";
import { cstr } from "../ffi/mem.ts";
import { dupCloexec } from "../ffi/fd.ts";
import { createMemfd } from "../shm/_memfd.ts";
import { releaseFd } from "../_keys.ts";
import {
  lineReader,
  OTHER_UID,
  otherUserSkip,
  spawnOtherUser,
} from "./_other_user.ts";

const PEER = fixture("shm_peer.ts");
const local = { ffi: true } as const;
const decoder = new TextDecoder();
const uniqueName = (what: string) =>
  `conduit-test-${what}-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;

test(
  "SharedMemory.create() maps a zero-filled memfd of the given size; rawFd is the memfd",
  () => {
    using mem = SharedMemory.create(1 << 20);
    assert.equal(mem.size, 1 << 20);
    assert.equal(mem.buffer.byteLength, 1 << 20);
    assert.equal(mem.name, undefined);
    assert.ok(new Uint8Array(mem.buffer).every((b) => b === 0));
    assert.match(fdTarget(mem.rawFd) ?? "", /^\/memfd:conduit-shm/);
    assert.throws(() => mem.unlink(), TypeError);
    // Sealed: no process can shrink it under another's mapping (SIGBUS).
    assert.equal(libc().ftruncate(mem.rawFd, 10n), -1);
    assert.equal(libc().ftruncate(mem.rawFd, 2n << 20n), -1);
    assert.throws(() => SharedMemory.create(0), RangeError);
    assert.throws(() => SharedMemory.create(1.5), RangeError);
  },
  local,
);

test(
  "close() is idempotent; buffer then throws BadResource, and a view taken before close reads zeros instead of faulting",
  () => {
    const mem = SharedMemory.create(8192);
    const stale = new Uint8Array(mem.buffer);
    stale.fill(9);
    mem.close();
    mem.close();
    mem[Symbol.dispose]();
    assert.equal(mem.closed, true);
    assert.throws(
      () => mem.buffer,
      (e: Error) =>
        e instanceof Deno.errors.BadResource &&
        e.message === "Cannot use SharedMemory: it is closed",
    );
    assert.throws(() => mem.rawFd, Deno.errors.BadResource);
    assert.equal(mem.size, 8192);
    // The shared pages are gone from this process; the stale view is
    // backed by private zero pages, readable and writable.
    assert.equal(stale[0], 0);
    assert.equal(stale[8191], 0);
    stale[5] = 1;
    assert.equal(stale[5], 1);
  },
  local,
);

test(
  "a stale view after close() no longer reaches the memory that other mappings share",
  () => {
    using keep = SharedMemory.create(4096);
    const other = new SharedMemory(dupCloexec(keep.rawFd));
    const stale = new Uint8Array(other.buffer);
    new Uint8Array(keep.buffer)[0] = 7;
    assert.equal(stale[0], 7);
    other.close();
    new Uint8Array(keep.buffer)[2] = 8;
    assert.equal(stale[0], 0);
    assert.equal(stale[2], 0);
    stale[1] = 3;
    assert.equal(new Uint8Array(keep.buffer)[1], 0);
  },
  local,
);

test(
  "SharedMemory.create({ name }) makes a 0600 shm object that open() maps and other programs read; unlink() removes the name",
  async () => {
    const name = uniqueName("named");
    using made = SharedMemory.create(4096, { name });
    try {
      assert.equal(made.name, name);
      const stat = new Uint8Array(STAT.size);
      assert.equal(libc().fstat(made.rawFd, stat), 0);
      const mode = new DataView(stat.buffer).getUint32(STAT.mode, true);
      assert.equal(mode & 0o777, 0o600);
      assert.equal(fdTarget(made.rawFd), `/dev/shm/${name}`);
      assert.throws(
        () => SharedMemory.create(4096, { name }),
        (e: Error) =>
          e instanceof Deno.errors.AlreadyExists &&
          e.message.startsWith(
            `Cannot create SharedMemory: the name "${name}" is taken (SharedMemory.open() opens it): shm_open failed: EEXIST`,
          ),
      );
      using same = SharedMemory.open(name);
      assert.equal(same.size, 4096);
      new TextEncoder().encodeInto("from deno", new Uint8Array(made.buffer));
      assert.equal(
        decoder.decode(new Uint8Array(same.buffer, 0, 9)),
        "from deno",
      );
      // Any program can map it by name; head reads the bytes.
      const child = spawn("head", {
        args: ["-c", "9", `/dev/shm/${name}`],
        stdout: "piped",
      });
      const out = await withTimeout(child.output(), 10_000, "head");
      assert.equal(decoder.decode(out.stdout), "from deno");
    } finally {
      made.unlink();
    }
    assert.throws(
      () => SharedMemory.open(name),
      (e: Error) =>
        e instanceof Deno.errors.NotFound &&
        e.message.startsWith(
          `Cannot open SharedMemory: no shared memory is named "${name}": shm_open failed: ENOENT`,
        ),
    );
    assert.throws(() => made.unlink(), Deno.errors.NotFound);
    assert.throws(
      () => SharedMemory.create(64, { name: "a/b" }),
      (e: Error) => e instanceof TypeError && /invalid name/.test(e.message),
    );
    assert.deepEqual(zombieChildren(), []);
  },
  {
    ffi: true,
    run: true,
    read: ["/dev/shm"],
    write: ["/dev/shm"],
  },
);

/** Asserts that opening `name` is refused as `why` says, with no fd left. */
function assertOpenRefused(name: string, why: string): void {
  const before = fdSnapshot();
  assert.throws(
    () => SharedMemory.open(name),
    (e: Error) =>
      e instanceof Deno.errors.PermissionDenied &&
      e.message === `Cannot open SharedMemory "${name}": ${why}`,
  );
  assertFdsUnchanged(before, "the refused open");
}

test(
  "SharedMemory.open() refuses an object of this user that others can write (group or every user), unless expectUid is given",
  () => {
    const name = uniqueName("open-to-all");
    using made = SharedMemory.create(4096, { name });
    try {
      // fchmodat(AT_FDCWD, ...): Deno's own chmod asks for more permissions
      // under /dev.
      const chmod = (mode: number) =>
        assert.equal(
          libc().fchmodat(-100, cstr(`/dev/shm/${name}`), mode, 0),
          0,
        );
      chmod(0o666);
      assertOpenRefused(
        name,
        "users other than its owner can write to it (mode 0666), so they could shrink it under this process (SIGBUS); it was not mapped. Pass expectUid to map it all the same",
      );
      using mine = SharedMemory.open(name, { expectUid: libc().geteuid() });
      assert.equal(mine.size, 4096);
      // A umask of 002 makes objects group-writable: refused too.
      chmod(0o664);
      assertOpenRefused(
        name,
        "users other than its owner can write to it (mode 0664), so they could shrink it under this process (SIGBUS); it was not mapped. Pass expectUid to map it all the same",
      );
      chmod(0o644);
      using readable = SharedMemory.open(name);
      assert.equal(readable.size, 4096);
    } finally {
      made.unlink();
    }
  },
  { ffi: true, read: ["/dev/shm"], write: ["/dev/shm"] },
);

/**
 * Creates `/dev/shm/argv[1]` of 4096 bytes open to every user (mode 0666),
 * says "made", and then, when a line comes on stdin, prints the first 16
 * bytes, truncates the object to nothing and exits.
 */
const SHM_SQUATTER = `
import os, sys
fd = os.open("/dev/shm/" + sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
os.fchmod(fd, 0o666)
os.ftruncate(fd, 4096)
print("made", flush=True)
sys.stdin.readline()
print(os.pread(fd, 16, 0).hex(), flush=True)
os.ftruncate(fd, 0)
`;

test(
  "SharedMemory.open() refuses an object another user made under the name, unless expectUid names that user",
  async () => {
    const name = uniqueName("squatted");
    await using squatter = spawnOtherUser(SHM_SQUATTER, [name]);
    const line = lineReader(squatter.stdout!, "the other user");
    try {
      assert.equal(await line(), "made");
      assertOpenRefused(
        name,
        `it is owned by uid ${OTHER_UID}, not the expected uid ${libc().geteuid()} (the expectUid option); it was not mapped`,
      );
      assert.throws(
        () => SharedMemory.open(name, { expectUid: -1 }),
        (e: Error) =>
          e instanceof TypeError &&
          e.message ===
            'Cannot open SharedMemory: expectUid must be a user id or "any", got -1',
      );
      // Named explicitly, the other user's memory is mapped.
      using theirs = SharedMemory.open(name, { expectUid: OTHER_UID });
      assert.equal(theirs.size, 4096);
      theirs.close();
      using any = SharedMemory.open(name, { expectUid: "any" });
      any.close();
    } finally {
      const writer = squatter.stdin!.getWriter();
      await writer.write(new TextEncoder().encode("go\n")).catch(() => {});
      await writer.close().catch(() => {});
      // What this process wrote, seen by the other user (nothing: it
      // never mapped the memory), then the end of its output.
      assert.equal(await line(), "00".repeat(16));
      assert.equal(await line(), "");
      await withTimeout(squatter.status, 20_000, "the other user exits");
      SharedMemory.unlink(name);
    }
  },
  {
    ffi: true,
    run: true,
    read: ["/dev/shm"],
    write: ["/dev/shm"],
  },
  { ignore: otherUserSkip !== undefined },
);

test(
  "a memfd handed to a child becomes SharedMemory there (fromFd), and Atomics add up exactly across both processes",
  async () => {
    using mem = SharedMemory.create(4096);
    const counter = new Int32Array(mem.buffer, 0, 1);
    const child = spawn(DENO, {
      args: ["run", "--allow-ffi", "--allow-read", PEER, "add", "300000"],
      fds: [mem],
      stdout: "piped",
      stderr: "piped",
    });
    for (let i = 0; i < 300000; i++) Atomics.add(counter, 0, 1);
    const out = await withTimeout(child.output(), 20_000, "child");
    assert.equal(decoder.decode(out.stderr), "");
    assert.equal(decoder.decode(out.stdout), "added 300000 to 4096 bytes\n");
    assert.equal(Atomics.load(counter, 0), 600000);
  },
  { ffi: true, run: true, read: true, env: true },
);

test(
  "fromFd() adopts a memfd as SharedMemory and refuses a regular file",
  async () => {
    using mem = SharedMemory.create(100);
    new Uint8Array(mem.buffer)[99] = 5;
    const again = fromFd(mem[releaseFd](), { allowCloexec: true });
    assert.ok(again instanceof SharedMemory);
    assert.equal(again.size, 100);
    assert.equal(new Uint8Array(again.buffer)[99], 5);
    again.close();

    const path = await Deno.makeTempFile();
    try {
      await Deno.writeFile(path, new Uint8Array(10));
      const fd = libc().open(cstr(path), O.RDWR | O.CLOEXEC, 0);
      assert.ok(fd >= 0);
      try {
        assert.throws(
          () => fromFd(fd, { allowCloexec: true }),
          TypeError,
        );
      } finally {
        libc().close(fd);
      }
    } finally {
      await Deno.remove(path);
    }
  },
  { ffi: true, read: true, write: true },
);

/** A memfd of `size` bytes made without seals, as a hostile peer makes it. */
function unsealedMemfd(size: number): number {
  const fd = libc().memfd_create(cstr("unsealed"), MMAP.MFD_CLOEXEC);
  assert.ok(fd >= 0);
  assert.equal(libc().ftruncate(fd, BigInt(size)), 0);
  return fd;
}

test(
  "SharedMemory received from a child that left it unsealed is refused, and the child shrinking it cannot fault this process",
  async () => {
    const [mine, theirs] = socketpair({ type: "seqpacket" });
    const child = spawn(DENO, {
      args: [
        "run",
        "--allow-ffi",
        "--allow-read",
        PEER,
        "send-unsealed",
        "65536",
      ],
      fds: [theirs],
      stdout: "piped",
      stderr: "piped",
    });
    theirs.close();
    let refused: unknown;
    try {
      let got;
      try {
        got = await withTimeout(mine.recv(), 10_000, "the memfd");
      } catch (error) {
        refused = error;
      }
      await mine.send(new Uint8Array([1]));
      const shrunk = await withTimeout(mine.recv(), 10_000, "shrunk");
      assert.deepEqual(shrunk?.data, new Uint8Array([2]));
      // Had the memory been mapped, touching it now would fault (SIGBUS).
      for (const end of got?.fds ?? []) {
        if (end instanceof SharedMemory) new Uint8Array(end.buffer).fill(1);
        end.close();
      }
    } finally {
      mine.close();
    }
    const out = await withTimeout(child.output(), 20_000, "child");
    assert.equal(decoder.decode(out.stderr), "");
    assert.equal(decoder.decode(out.stdout), "shrunk\n");
    assert.ok(refused instanceof TypeError, `not refused: ${refused}`);
    assert.match(
      String((refused.cause as Error).message),
      /not sealed against shrinking.*SIGBUS.*allowShrink/,
    );
    assert.deepEqual(zombieChildren(), []);
  },
  { run: true, read: true, env: true },
);

test(
  "memory that can shrink is refused by fromFd() and new SharedMemory(fd) (an unsealed memfd, a named object) unless allowShrink is given",
  () => {
    const fd = unsealedMemfd(4096);
    try {
      assert.throws(
        () => fromFd(fd, { allowCloexec: true }),
        (e: Error) =>
          e instanceof TypeError &&
          e.message.startsWith(`Cannot map SharedMemory from fd ${fd}:`) &&
          /not sealed against shrinking/.test(e.message),
      );
      assert.throws(() => new SharedMemory(fd), TypeError);
    } catch (error) {
      libc().close(fd);
      throw error;
    }
    using trusted = new SharedMemory(fd, { allowShrink: true });
    assert.equal(trusted.size, 4096);

    const name = uniqueName("adopt");
    using made = SharedMemory.create(4096, { name });
    try {
      const copy = dupCloexec(made.rawFd);
      try {
        assert.throws(
          () => fromFd(copy, { allowCloexec: true }),
          (e: Error) =>
            e instanceof TypeError &&
            /not sealed against shrinking/.test(e.message),
        );
      } catch (error) {
        libc().close(copy);
        throw error;
      }
      using named = new SharedMemory(copy, { name, allowShrink: true });
      assert.equal(named.name, name);
    } finally {
      made.unlink();
    }
  },
  { read: ["/dev/shm"], write: ["/dev/shm"] },
);

test(
  "memory larger than maxBytes (default 1 GiB) is refused with a RangeError before it is mapped; the option raises or lowers the limit",
  () => {
    const big = createMemfd((1 << 30) + 4096, "big");
    try {
      assert.throws(
        () => fromFd(big, { allowCloexec: true }),
        (e: Error) =>
          e instanceof RangeError &&
          e.message ===
            `Cannot map SharedMemory from fd ${big}: its 1073745920 bytes exceed the limit of 1073741824 (the maxBytes option)`,
      );
    } catch (error) {
      libc().close(big);
      throw error;
    }
    using huge = new SharedMemory(big, { maxBytes: Infinity });
    assert.equal(huge.size, (1 << 30) + 4096);

    const small = createMemfd(8192, "small");
    try {
      assert.throws(
        () => new SharedMemory(small, { maxBytes: 4096 }),
        RangeError,
      );
      assert.throws(() => new SharedMemory(small, { maxBytes: 0 }), RangeError);
    } finally {
      libc().close(small);
    }
    const name = uniqueName("cap");
    using made = SharedMemory.create(8192, { name });
    try {
      assert.throws(
        () => SharedMemory.open(name, { maxBytes: 4096 }),
        RangeError,
      );
      using same = SharedMemory.open(name);
      assert.equal(same.size, 8192);
    } finally {
      made.unlink();
    }
  },
  { read: ["/dev/shm"], write: ["/dev/shm"] },
);

test(
  "SharedMemory.create() of more than the address space holds fails with a RangeError naming the size, ENOMEM as its cause, and leaves no fd",
  () => {
    const size = 2 ** 52; // 4 PiB: beyond any user address space of 47 or 48 bits
    assert.throws(
      () => SharedMemory.create(size),
      (error: unknown) =>
        error instanceof RangeError &&
        error.message.includes(`${size} bytes`) &&
        (error.cause as { code?: string }).code === "ENOMEM",
    );
  },
);

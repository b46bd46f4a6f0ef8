import assert from "node:assert/strict";
import { pipe } from "../pipe.ts";
import { libc } from "../ffi/libc.ts";
import { readNoWait } from "../ffi/fd.ts";
import { cstr } from "../ffi/mem.ts";
import {
  check,
  checkReturn,
  closedError,
  ERRNO,
  errno,
  errnoName,
  ioErrno,
  retry,
  systemError,
  tryIo,
} from "../ffi/errors.ts";
import { socketpair } from "../socketpair.ts";
import { channel } from "../channel.ts";
import { failLibcCall, setErrno, test, withTimeout } from "./_util.ts";

test("systemError() maps errno values to the matching Deno.errors classes", () => {
  const cases: [keyof typeof ERRNO, new (...args: never[]) => Error][] = [
    ["EPIPE", Deno.errors.BrokenPipe],
    ["EBADF", Deno.errors.BadResource],
    ["EAGAIN", Deno.errors.WouldBlock],
    ["ENOENT", Deno.errors.NotFound],
    ["EACCES", Deno.errors.PermissionDenied],
    ["EPERM", Deno.errors.PermissionDenied],
    ["ECONNREFUSED", Deno.errors.ConnectionRefused],
    ["ECONNRESET", Deno.errors.ConnectionReset],
    ["EADDRINUSE", Deno.errors.AddrInUse],
    ["EEXIST", Deno.errors.AlreadyExists],
    ["EINTR", Deno.errors.Interrupted],
    ["ENOTCONN", Deno.errors.NotConnected],
  ];
  for (const [name, Class] of cases) {
    const error = systemError("sendmsg", ERRNO[name]);
    assert.ok(error instanceof Class, `${name} gave ${error.constructor.name}`);
    assert.equal(error.code, name);
    assert.equal(error.errno, ERRNO[name]);
    assert.equal(error.syscall, "sendmsg");
    assert.match(error.message, new RegExp(`^sendmsg failed: ${name}: `));
  }
  const detailed = systemError("fcntl", ERRNO.EPERM, "capacity 9");
  assert.match(detailed.message, /^fcntl failed: EPERM: .*\(capacity 9\)$/);
});

test("systemError() gives a plain Error naming the errno when no class fits", () => {
  const unknown = systemError("ioctl", 9999);
  assert.equal(unknown.constructor, Error);
  assert.equal(unknown.code, "E9999");
  assert.equal(unknown.errno, 9999);
  assert.match(unknown.message, /ioctl/);
  assert.match(unknown.message, /E9999/);
  assert.match(unknown.message, /9999/);
  const einval = systemError("ioctl", ERRNO.EINVAL);
  assert.equal(einval.constructor, Error);
  assert.equal(einval.code, "EINVAL");
  assert.match(einval.message, /^ioctl failed: EINVAL: invalid argument$/);
  assert.equal(errnoName(32), "EPIPE");
  assert.equal(errnoName(9999), "E9999");
});

test("check() throws BadResource naming the call for close(-1)", () => {
  assert.throws(
    () => check("close", libc().close(-1)),
    (error: unknown) => {
      assert.ok(error instanceof Deno.errors.BadResource);
      assert.match(error.message, /^close failed: EBADF/);
      assert.equal((error as unknown as { errno: number }).errno, 9);
      return true;
    },
  );
  assert.equal(errno(), ERRNO.EBADF, "errno after a failed sync call");
});

test("check() maps a real ENOENT from unlink() to NotFound and passes results through", () => {
  assert.throws(
    () => check("unlink", libc().unlink(cstr("/nonexistent/conduit-test"))),
    (error: unknown) =>
      error instanceof Deno.errors.NotFound &&
      error.message.startsWith("unlink failed: ENOENT"),
  );
  // isize results arrive as bigint.
  assert.throws(
    () => check("read", libc().read(-1, new Uint8Array(1), 1n)),
    Deno.errors.BadResource,
  );
  assert.equal(check("getpid", libc().getpid()), Deno.pid);
  assert.equal(check("x", 0), 0);
  assert.equal(check("x", 7n), 7);
});

test("retry() calls again on EINTR and throws on any other errno", () => {
  let calls = 0;
  const value = retry("fake", () => {
    calls++;
    if (calls < 3) {
      setErrno(ERRNO.EINTR);
      return -1;
    }
    return 42n;
  });
  assert.equal(value, 42);
  assert.equal(calls, 3);

  calls = 0;
  assert.throws(
    () =>
      retry("fake", () => {
        calls++;
        setErrno(ERRNO.EBADF);
        return -1;
      }),
    (error: unknown) =>
      error instanceof Deno.errors.BadResource && /^fake failed/.test(
        (error as Error).message,
      ),
  );
  assert.equal(calls, 1, "retried an error other than EINTR");
  assert.throws(
    () => retry("close", () => libc().close(-1)),
    Deno.errors.BadResource,
  );
});

test("tryIo() returns -1 on EAGAIN, retries EINTR and throws on other errors", () => {
  using p = pipe();
  assert.equal(readNoWait(p.reader.rawFd, new Uint8Array(16)), -1);
  assert.equal(readNoWait(p.reader.rawFd, new Uint8Array(1000)), -1);

  let calls = 0;
  assert.equal(
    tryIo("fake", () => {
      calls++;
      setErrno(calls === 1 ? ERRNO.EINTR : ERRNO.EAGAIN);
      return -1;
    }),
    -1,
  );
  assert.equal(calls, 2);
  assert.equal(tryIo("fake", () => 5n), 5);
  assert.equal(tryIo("fake", () => 0), 0);
  assert.throws(
    () =>
      tryIo("pwritev2", () => {
        setErrno(ERRNO.EPIPE);
        return -1;
      }),
    Deno.errors.BrokenPipe,
  );
});

test("ioErrno() takes an errno no read or write sets for a leftover: EINTR for a loop's first two failures, then the value itself", () => {
  setErrno(ERRNO.EAGAIN);
  assert.equal(ioErrno(0), ERRNO.EAGAIN);
  setErrno(ERRNO.EPIPE);
  assert.equal(ioErrno(5), ERRNO.EPIPE);
  setErrno(ERRNO.ENOENT);
  assert.equal(ioErrno(0), ERRNO.EINTR);
  assert.equal(ioErrno(1), ERRNO.EINTR);
  assert.equal(ioErrno(2), ERRNO.ENOENT, "the third failure is reported");
});

test("a socket receive and send whose errno was overwritten are made again, not failed with NotFound", async () => {
  const [a, b] = socketpair({ type: "seqpacket" });
  using _a = a;
  using _b = b;
  let undo = failLibcCall("sendmsg", 2, ERRNO.ENOENT);
  try {
    await withTimeout(a.send(new Uint8Array([1, 2, 3])), 5000, "the send");
  } finally {
    undo();
  }
  undo = failLibcCall("recvmsg", 2, ERRNO.ENOENT);
  try {
    const got = await withTimeout(b.recv(), 5000, "the receive");
    assert.deepEqual(got?.data, new Uint8Array([1, 2, 3]));
  } finally {
    undo();
  }
  // Three in a row are an error of the call's own: reported as they are.
  undo = failLibcCall("recvmsg", 3, ERRNO.ENOENT);
  try {
    await a.send(new Uint8Array([4]));
    await assert.rejects(b.recv(), Deno.errors.NotFound);
  } finally {
    undo();
  }
});

test("a channel send and receive whose errno was overwritten are made again", async () => {
  const [tx, rx] = channel<{ n: number }>();
  try {
    let undo = failLibcCall("sendmsg", 2, ERRNO.ENOENT);
    try {
      await withTimeout(tx.send({ n: 1 }), 5000, "the send");
    } finally {
      undo();
    }
    undo = failLibcCall("recvmsg", 2, ERRNO.ENOENT);
    try {
      assert.deepEqual(await withTimeout(rx.recv(), 5000, "the receive"), {
        n: 1,
      });
    } finally {
      undo();
    }
  } finally {
    tx.close();
    rx.close();
  }
});

test("checkReturn() throws for a nonzero error number and closedError() names the endpoint", () => {
  checkReturn("posix_spawnp", 0);
  assert.throws(
    () => checkReturn("posix_spawnp", ERRNO.ENOENT),
    (error: unknown) =>
      error instanceof Deno.errors.NotFound &&
      /^posix_spawnp failed: ENOENT/.test((error as Error).message),
  );
  const closed = closedError("UnixSocket");
  assert.ok(closed instanceof Deno.errors.BadResource);
  assert.equal(closed.message, "Cannot use UnixSocket: it is closed");
});

import assert from "node:assert/strict";
import { libc } from "../ffi/libc.ts";
import { SOCK, SOCKADDR_UN } from "../ffi/layout.ts";
import { boundAddress, encodeAddress, randomName } from "../_unix_addr.ts";
import { markSocket, readMark } from "../_channel_wire.ts";
import { test } from "./_util.ts";

test("encodeAddress puts an abstract name after a NUL byte, its length ending it", () => {
  const { bytes, length, label } = encodeAddress({ abstract: "ab" }, "test");
  const view = new DataView(bytes.buffer);
  assert.equal(view.getUint16(SOCKADDR_UN.family, true), SOCK.AF_UNIX);
  assert.equal(bytes[SOCKADDR_UN.path], 0);
  assert.deepEqual([
    ...bytes.subarray(SOCKADDR_UN.path + 1, SOCKADDR_UN.path + 3),
  ], [
    0x61,
    0x62,
  ]);
  assert.equal(length, SOCKADDR_UN.path + 1 + 2);
  assert.equal(label, 'abstract name "ab"');
});

test("encodeAddress ends a path with a NUL byte and refuses one too long", () => {
  const { bytes, length } = encodeAddress({ path: "/tmp/x" }, "test");
  assert.equal(length, SOCKADDR_UN.path + 6 + 1);
  assert.equal(bytes[SOCKADDR_UN.path + 6], 0);
  assert.throws(
    () =>
      encodeAddress({ path: "/" + "a".repeat(SOCKADDR_UN.pathMax) }, "test"),
    RangeError,
  );
  assert.throws(
    () => encodeAddress({ abstract: "a".repeat(SOCKADDR_UN.pathMax) }, "test"),
    RangeError,
  );
  assert.throws(
    () => encodeAddress({ path: "/x", abstract: "y" } as never, "test"),
    TypeError,
  );
});

test("randomName gives digits of its base only, each name fresh", () => {
  const hex = new Set<string>();
  for (let i = 0; i < 200; i++) {
    const name = randomName(32);
    assert.match(name, /^[0-9a-f]{32}$/);
    hex.add(name);
  }
  assert.equal(hex.size, 200);
  const seen = new Set<string>();
  for (let i = 0; i < 200; i++) {
    const name = randomName(12, 32);
    assert.match(name, /^[0-9a-v]{12}$/);
    for (const digit of name) seen.add(digit);
  }
  // 2,400 digits of base 32: every digit shows up.
  assert.equal(seen.size, 32);
});

test("a channel mark is bound as an abstract name that boundAddress and readMark read back", () => {
  const lib = libc();
  const fd = lib.socket(SOCK.AF_UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC, 0);
  assert.ok(fd >= 0);
  try {
    markSocket(fd, "r", 1, 64);
    const { abstract, path } = boundAddress(fd);
    assert.equal(path, undefined);
    assert.match(abstract!, /^conduit-ch\/r\/1\/64\/[0-9a-f]{24}$/);
    assert.deepEqual(readMark(abstract), { role: "r", mode: 1, capacity: 64 });
  } finally {
    lib.close(fd);
  }
});

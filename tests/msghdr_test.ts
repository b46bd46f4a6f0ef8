import assert from "node:assert/strict";
import { libc } from "../ffi/libc.ts";
import { IOVEC, MMSGHDR, MSG, MSGHDR, SOCK } from "../ffi/layout.ts";
import { addressOf } from "../ffi/mem.ts";
import { MAY_MOVE, MessageArea } from "../ffi/msghdr.ts";
import { parseControl, writeRights } from "../ffi/cmsg.ts";
import { test } from "./_util.ts";

function u64(view: DataView, at: number): bigint {
  return view.getBigUint64(at, true);
}

test("MessageArea fills every msghdr field at its layout offset", () => {
  const area = new MessageArea({ iovecs: 4, stage: 64, control: 48 });
  assert.equal(area.controlAt % 8, 0);
  const view = area.view;
  // Garbage first: setHeader must write every field.
  area.bytes.fill(0xab, 0, MSGHDR.size);
  const control = area.address(area.controlAt);
  area.setHeader(0, 1, 3, control, 40);
  assert.equal(u64(view, MSGHDR.name), 0n);
  assert.equal(view.getUint32(MSGHDR.namelen, true), 0);
  const iov0 = Deno.UnsafePointer.value(area.iovPointer) as bigint;
  assert.equal(u64(view, MSGHDR.iov), iov0 + BigInt(IOVEC.size));
  assert.equal(u64(view, MSGHDR.iovlen), 3n);
  assert.equal(u64(view, MSGHDR.control), control);
  assert.equal(u64(view, MSGHDR.controllen), 40n);
  assert.equal(view.getInt32(MSGHDR.flags, true), 0);
  // No control: a null pointer, whatever address is given.
  area.setHeader(0, 0, 1, control, 0);
  assert.equal(u64(view, MSGHDR.control), 0n);
  assert.equal(area.controlLength(0), 0);
});

test("MessageArea lays out several headers as an mmsghdr array", () => {
  const area = new MessageArea({
    headers: 3,
    iovecs: 3,
    stage: 0,
    control: 0,
  });
  for (let i = 0; i < 3; i++) {
    assert.equal(area.header(i), i * MMSGHDR.size);
    area.setHeader(i, i, 1, 0n, 0);
    const iov0 = Deno.UnsafePointer.value(area.iovPointer) as bigint;
    assert.equal(
      u64(area.view, area.header(i) + MSGHDR.iov),
      iov0 + BigInt(i * IOVEC.size),
    );
  }
  // The iovecs start after the last mmsghdr, msg_len included.
  const base = addressOf(area.view.buffer as ArrayBuffer);
  const iov0 = Deno.UnsafePointer.value(area.iovPointer) as bigint;
  assert.ok(iov0 - base >= 3n * BigInt(MMSGHDR.size));
});

test("MessageArea stages buffers V8 may move and references the rest in place", () => {
  const area = new MessageArea({ iovecs: 2, stage: 2 * MAY_MOVE, control: 0 });
  const iov = (i: number) =>
    Deno.UnsafePointer.value(area.iovPointer) as bigint +
    BigInt(i * IOVEC.size);
  const read = (i: number) => {
    const view = new Deno.UnsafePointerView(Deno.UnsafePointer.create(iov(i))!);
    return { base: view.getBigUint64(0), len: view.getBigUint64(8) };
  };
  const small = new Uint8Array([1, 2, 3]);
  assert.equal(area.setIovecFor(0, small, MAY_MOVE, true), true);
  assert.equal(read(0).base, area.stageAddress + BigInt(MAY_MOVE));
  assert.equal(read(0).len, 3n);
  assert.deepEqual(
    [...area.bytes.subarray(
      area.stageAt + MAY_MOVE,
      area.stageAt + MAY_MOVE + 3,
    )],
    [1, 2, 3],
  );
  const large = new Uint8Array(MAY_MOVE + 1);
  assert.equal(area.setIovecFor(1, large, 0, true), false);
  assert.equal(read(1).base, addressOf(large));
  assert.equal(read(1).len, BigInt(MAY_MOVE + 1));
  // A receive into a small buffer copies back what arrived.
  const into = new Uint8Array(3);
  area.copyOut(MAY_MOVE, into, 2);
  assert.deepEqual([...into], [1, 2, 0]);
});

test("a message built in a MessageArea goes through sendmsg and recvmsg whole, with its fds", () => {
  const lib = libc();
  const pair = new Int32Array(2);
  assert.equal(
    lib.socketpair(SOCK.AF_UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC, 0, pair),
    0,
  );
  const [a, b] = pair;
  try {
    const out = new MessageArea({ iovecs: 2, stage: MAY_MOVE, control: 32 });
    const head = new Uint8Array([7, 8]);
    const body = new Uint8Array(1000).fill(5);
    out.setIovecFor(0, head, 0, true);
    out.setIovecFor(1, body, 0, true);
    const space = writeRights(out.view, out.controlAt, [a]);
    out.setHeader(0, 0, 2, out.address(out.controlAt), space);
    assert.equal(Number(lib.sendmsg(a, out.pointer, MSG.NOSIGNAL)), 1002);

    const into = new MessageArea({ iovecs: 1, stage: 0, control: 64 });
    const data = new Uint8Array(2000);
    into.setIovecFor(0, data, 0, false);
    into.setHeader(0, 0, 1, into.address(into.controlAt), 64);
    assert.equal(
      Number(lib.recvmsg(b, into.pointer, MSG.CMSG_CLOEXEC)),
      1002,
    );
    assert.deepEqual([...data.subarray(0, 3)], [7, 8, 5]);
    assert.equal(data[1001], 5);
    assert.equal(into.flags(0) & MSG.CTRUNC, 0);
    const parsed = parseControl(
      into.view,
      into.controlAt,
      into.controlLength(0),
    );
    assert.equal(parsed.malformed, "");
    assert.equal(parsed.fds.length, 1);
    lib.close(parsed.fds[0]);
  } finally {
    lib.close(a);
    lib.close(b);
  }
});

test("addressOf gives the address the runtime gives, for buffers and views at an offset", () => {
  const of = (b: ArrayBuffer | ArrayBufferView) =>
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b)));
  const big = new Uint8Array(1000);
  const buffer = new ArrayBuffer(512);
  const shared = new SharedArrayBuffer(4096);
  const cases: [string, ArrayBuffer | ArrayBufferView][] = [
    ["Uint8Array", big],
    ["subarray at 100", big.subarray(100, 300)],
    ["ArrayBuffer", buffer],
    ["DataView at 64", new DataView(buffer, 64)],
    ["Uint32Array at 8", new Uint32Array(buffer, 8, 4)],
    ["view of a SharedArrayBuffer at 16", new Uint8Array(shared, 16)],
  ];
  for (const [what, view] of cases) {
    assert.equal(addressOf(view), of(view), what);
  }
  // Many calls, so that the optimizing compiler's fast call is the one
  // checked too; and a write through the address lands in the view.
  for (let i = 0; i < 50_000; i++) {
    const view = big.subarray(i & 255, 600);
    const address = addressOf(view);
    if (address !== addressOf(big) + BigInt(i & 255)) {
      assert.fail(`call ${i}: address ${address} is not the view's`);
    }
  }
  const view = big.subarray(200, 210);
  // Off V8's heap (over 64 bytes), where an address stays put.
  const source = new Uint8Array(100);
  source.set([1, 2, 3, 4]);
  Deno.UnsafePointerView.copyInto(
    Deno.UnsafePointer.create(addressOf(source))!,
    view,
  );
  assert.deepEqual([...big.subarray(200, 204)], [1, 2, 3, 4]);
});

test("MessageArea takes a large view's address once, and each other view's anew", () => {
  const area = new MessageArea({ iovecs: 1, stage: 0, control: 0 });
  const base = () =>
    new Deno.UnsafePointerView(area.iovPointer!).getBigUint64(0);
  const buffer = new Uint8Array(4 * MAY_MOVE);
  const whole = buffer.subarray(0);
  const later = buffer.subarray(MAY_MOVE + 8);
  const other = new Uint8Array(2 * MAY_MOVE);
  const expected = [whole, later, other].map((view) => addressOf(view));
  const lib = libc() as { address_of: (...args: never[]) => unknown };
  const real = lib.address_of;
  let calls = 0;
  lib.address_of = (...args: never[]) => {
    calls++;
    return real(...args);
  };
  try {
    for (let i = 0; i < 3; i++) area.setIovecFor(0, whole, 0, false);
    assert.equal(base(), expected[0]);
    assert.equal(calls, 1, "one address_of call for three receives");
    // Another view of the same buffer, then the first again: each its own.
    area.setIovecFor(0, later, 0, false);
    assert.equal(base(), expected[1]);
    area.setIovecFor(0, whole, 0, false);
    assert.equal(base(), expected[0]);
    area.setIovecFor(0, other, 0, false);
    assert.equal(base(), expected[2]);
    assert.equal(calls, 4);
  } finally {
    lib.address_of = real;
  }
});

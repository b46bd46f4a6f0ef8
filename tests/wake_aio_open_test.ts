/**
 * The AIO wake's eventfd when the `pipe_wrap` handle cannot open it: a real
 * Pipe refuses an fd its event loop already watches (EEXIST), and closing
 * such a handle closes no fd, so the eventfd is the wake's own to close.
 *
 * @module
 */

import assert from "node:assert/strict";
import { AioQueue, type PipeHandle, pipeWrap } from "../ffi/_wake_aio.ts";
import { DirectWake } from "../ffi/_wake_direct.ts";
import { libc } from "../ffi/libc.ts";
import { EPOLL } from "../ffi/layout.ts";
import { assertFdsUnchanged, fdSnapshot, test } from "./_util.ts";

test("an AIO wake whose pipe handle refuses the eventfd closes the eventfd", () => {
  const wrap = pipeWrap();
  assert.notEqual(typeof wrap, "string", String(wrap));
  const { make } = wrap as { make: () => PipeHandle };
  const lib = libc();
  const epfd = lib.epoll_create1(EPOLL.CLOEXEC);
  assert.notEqual(epfd, -1);
  try {
    const before = fdSnapshot();
    let refused = 0;
    const refusing = (): PipeHandle => {
      const pipe = make();
      // What a real Pipe answers for an fd its loop already watches.
      pipe.open = () => {
        refused++;
        return -17;
      };
      return pipe;
    };
    assert.throws(
      () => new DirectWake(epfd, () => {}, () => {}, refusing, new AioQueue()),
      /Pipe#open of an eventfd failed/,
    );
    assert.equal(refused, 1);
    assertFdsUnchanged(before, "the refused wake");
  } finally {
    lib.close(epfd);
  }
});

/**
 * The child of the seqpacket round-trip benchmarks
 * (bench/socketpair_bench.ts): echoes every message on the socket it
 * inherited as fd 3 until the parent closes its end, with default options.
 * A one-byte `?` message is answered with this process's CPU time (8 bytes,
 * see bench/_cpu.ts) instead of being echoed.
 *
 * @module
 */

import { fromFd } from "../from_fd.ts";
import { UnixSocket } from "../socketpair.ts";
import { CPU_QUERY, cpuUs, encodeCpu } from "./_cpu.ts";

const socket = fromFd(3);
if (!(socket instanceof UnixSocket)) {
  throw new TypeError("fd 3 is not a UnixSocket");
}
for (;;) {
  const message = await socket.recv();
  if (message === null) break;
  const data = message.data;
  if (data.length === 1 && data[0] === CPU_QUERY[0]) {
    await socket.send(encodeCpu(cpuUs()));
  } else {
    await socket.send(data);
  }
}
socket.close();

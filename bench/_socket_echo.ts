/**
 * The child of the seqpacket round-trip benchmark
 * (bench/socketpair_bench.ts): echoes every message on the socket it
 * inherited as fd 3 until the parent closes its end. It spins briefly before
 * parking, as a latency-sensitive peer would.
 *
 * @module
 */

import { fromFd } from "../from_fd.ts";
import { UnixSocket } from "../socketpair.ts";

const SPIN_US = 100;

const socket = fromFd(3);
if (!(socket instanceof UnixSocket)) {
  throw new TypeError("fd 3 is not a UnixSocket");
}
for (;;) {
  const message = await socket.recv({ spin: SPIN_US });
  if (message === null) break;
  socket.sendSync(message.data);
}
socket.close();

/**
 * How `fromFd()` recognises a channel end: channel ends handed over by
 * spawn or raw fd passing carry a mark (their socket's abstract name) that
 * says which end, mode and capacity they are.
 *
 * @module
 */

import { OwnedFd } from "../ffi/fd.ts";
import { readMark, seqpacketProblem } from "../_channel_wire.ts";
import { boundAddress } from "../_unix_addr.ts";
import { registerAdopter } from "../_adopt.ts";
import { Receiver } from "./receiver.ts";
import { Sender } from "./sender.ts";

function receiverOf<T>(fd: number, capacity: number): Receiver<T> {
  return new Receiver<T>([{
    fd: new OwnedFd(fd, "Receiver"),
    capacity,
    unacked: 0,
  }]);
}

registerAdopter((fd, kind) => {
  if (kind !== "socket") return null;
  let mark;
  try {
    mark = readMark(boundAddress(fd).abstract);
  } catch {
    return null;
  }
  if (mark === null) return null;
  const problem = seqpacketProblem(fd);
  if (problem !== undefined) {
    throw new TypeError(
      `Cannot adopt fd ${fd} as a channel ${
        mark.role === "s" ? "Sender" : "Receiver"
      }: it is ${problem}, not a unix seqpacket socket`,
    );
  }
  if (mark.role === "s") {
    return new Sender(fd, mark.capacity, mark.mode);
  }
  return receiverOf(fd, mark.capacity);
}, true);

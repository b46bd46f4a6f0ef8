/**
 * The child of the channel benchmark: gets a Receiver as fd 3 and a Sender
 * as fd 4 (rebuilt by `fromFd()`). In `echo` mode it sends every message
 * back; in `count` mode it answers only after `n` messages, with the count.
 *
 * @module
 */

import { fromFd, Receiver, Sender } from "../mod.ts";

const rx = fromFd(3);
const tx = fromFd(4);
if (!(rx instanceof Receiver) || !(tx instanceof Sender)) {
  throw new TypeError("fd 3 and 4 must be a channel's Receiver and Sender");
}
const [mode, n] = Deno.args;
if (mode === "echo") {
  for (;;) {
    let message;
    try {
      message = await rx.recv({ spin: 100 });
    } catch {
      break;
    }
    await tx.send(message);
  }
} else {
  const count = Number(n);
  for (;;) {
    let seen = 0;
    try {
      while (seen < count) {
        await rx.recv({ spin: 100 });
        seen++;
      }
    } catch {
      break;
    }
    await tx.send(seen);
  }
}
tx.close();
rx.close();

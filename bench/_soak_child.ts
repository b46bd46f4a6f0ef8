// The peer of the soak run: echoes everything it receives on one transport
// until its input ends, then prints its own RSS and fd count as one JSON line.
import {
  fromFd,
  type PipeReader,
  type PipeWriter,
  type Receiver,
  type Sender,
  type ShmReceiver,
  type ShmSender,
  type UnixSocket,
} from "../mod.ts";

const mode = Deno.args[0];

function stats(): string {
  const fds = [...Deno.readDirSync("/proc/self/fd")].length;
  return JSON.stringify({ rss: Deno.memoryUsage().rss, fds, pid: Deno.pid });
}

switch (mode) {
  case "channel": {
    const rx = fromFd(3) as Receiver<unknown>;
    const tx = fromFd(4) as Sender<unknown>;
    for await (const value of rx) await tx.send(value);
    tx.close();
    rx.close();
    break;
  }
  case "seqpacket": {
    const socket = fromFd(3) as UnixSocket;
    for (;;) {
      const message = await socket.recv({ maxFds: 4 });
      if (message === null) break;
      for (const fd of message.fds) fd.close();
      await socket.send(message.data);
    }
    socket.close();
    break;
  }
  case "pipe": {
    const reader = fromFd(3) as PipeReader;
    const writer = fromFd(4) as PipeWriter;
    const buffer = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await reader.read(buffer);
      if (n === null) break;
      await writer.write(buffer.subarray(0, n));
    }
    writer.close();
    reader.close();
    break;
  }
  case "shm": {
    const rx = fromFd(3) as ShmReceiver;
    const tx = fromFd(4) as ShmSender;
    for await (const message of rx) await tx.send(message);
    tx.close();
    rx.close();
    break;
  }
  default:
    throw new Error(`unknown soak mode ${mode}`);
}
console.log(stats());

import assert from "node:assert/strict";
import { pipe } from "../mod.ts";
import { SharedMemory, shmQueue } from "../shm/mod.ts";
import { test } from "./_util.ts";

const plain = (value: unknown) => Deno.inspect(value, { colors: false });

test("pipe ends print their kind, fd and state, and ref: false once unref'd", () => {
  const p = pipe();
  const { reader, writer } = p;
  assert.equal(
    plain(reader),
    `PipeReader { fd: ${reader.rawFd}, state: "open" }`,
  );
  writer.unref();
  assert.equal(
    plain(writer),
    `PipeWriter { fd: ${writer.rawFd}, state: "open", ref: false }`,
  );
  p[Symbol.dispose]();
  assert.equal(plain(reader), `PipeReader { state: "closed" }`);
  assert.equal(plain({ w: writer }), `{ w: PipeWriter { state: "closed" } }`);
});

test("SharedMemory prints its fd, state, size and name", () => {
  const memory = SharedMemory.create(4096);
  assert.equal(
    plain(memory),
    `SharedMemory { fd: ${memory.rawFd}, state: "open", size: 4096 }`,
  );
  memory.close();
  assert.equal(plain(memory), `SharedMemory { state: "closed", size: 4096 }`);
  const name = `conduit-inspect-${crypto.randomUUID()}`;
  const named = SharedMemory.create(8192, { name });
  try {
    assert.match(plain(named), new RegExp(`name: "${name}"`));
  } finally {
    named.unlink();
    named.close();
  }
}, { read: ["/dev/shm"], write: ["/dev/shm"] });

test("shm queue ends print their carrier fd, state, ring size and largest message", () => {
  const [tx, rx] = shmQueue({ bytes: 1 << 16 });
  try {
    assert.match(
      plain(tx),
      new RegExp(
        `^ShmSender \\{ fd: ${tx.rawFd}, state: "open", ringBytes: \\d+, maxMessage: ${tx.maxMessage} \\}$`,
      ),
    );
    assert.match(plain(rx), /^ShmReceiver \{ fd: \d+, state: "open"/);
  } finally {
    tx.close();
  }
  assert.match(plain(tx), /^ShmSender \{ state: "closed"/);
  assert.match(plain(rx), /peer: "gone"|state: "open"/);
  rx.close();
  assert.match(plain(rx), /^ShmReceiver \{ state: "closed"/);
});

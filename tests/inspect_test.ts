import assert from "node:assert/strict";
import { connect, fromFd, listen, pipe, socketpair } from "../mod.ts";
import { dupCloexec } from "../ffi/fd.ts";
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

test("socket pairs print their type, fd and state", () => {
  const [a, b] = socketpair({ type: "seqpacket" });
  b.unref();
  assert.equal(
    plain(a),
    `UnixSocket { type: "seqpacket", fd: ${a.rawFd}, state: "open" }`,
  );
  assert.equal(
    plain(b),
    `UnixSocket { type: "seqpacket", fd: ${b.rawFd}, state: "open", ref: false }`,
  );
  a.close();
  b.close();
  assert.equal(plain(a), `UnixSocket { type: "seqpacket", state: "closed" }`);
});

test(
  "listeners and their connections print the name they listen or connected on",
  async () => {
    // One line, however long the path.
    const wide = (value: unknown) =>
      Deno.inspect(value, { colors: false, breakLength: Infinity });
    const dir = Deno.makeTempDirSync({ prefix: "conduit-inspect-" });
    try {
      const path = `${dir}/s.sock`;
      using server = listen({ path });
      using client = await connect({ path });
      using conn = await server.accept();
      assert.equal(
        wide(server),
        `UnixListener { type: "stream", fd: ${server.rawFd}, state: "open", path: "${path}" }`,
      );
      assert.equal(
        wide(client),
        `UnixSocket { type: "stream", fd: ${client.rawFd}, state: "open", path: "${path}" }`,
      );
      assert.equal(
        wide(conn),
        `UnixSocket { type: "stream", fd: ${conn.rawFd}, state: "open", path: "${path}" }`,
      );
      // An accepted socket adopted from its fd still knows its server's name.
      using adopted = fromFd(dupCloexec(conn.rawFd), { allowCloexec: true });
      assert.equal(
        wide(adopted),
        `UnixSocket { type: "stream", fd: ${adopted.rawFd}, state: "open", path: "${path}" }`,
      );
      const name = `conduit-inspect-${crypto.randomUUID()}`;
      using abstract = listen({ abstract: name, type: "seqpacket" });
      using other = await connect({ abstract: name, type: "seqpacket" });
      using accepted = await abstract.accept();
      for (const end of [abstract, other, accepted]) {
        assert.match(
          wide(end),
          new RegExp(`state: "open", abstract: "${name}" }$`),
        );
      }
      server.close();
      assert.equal(
        wide(server),
        `UnixListener { type: "stream", state: "closed", path: "${path}" }`,
      );
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
  { read: true, write: true },
);

/**
 * Servo's ipc-channel example with a one-shot server, ported: the parent
 * creates a {@linkcode OneShotServer} and starts a child with the server's
 * name; the child creates two channels, connects, and sends the parent one
 * channel's sender and the other's receiver. The parent sends "Hello from
 * parent", "How are you?", "Goodbye!" and "quit"; the child answers each
 * (but "quit") with "Child received: <message>".
 *
 * What crosses between the processes: the handshake message holds a live
 * `Sender` and a live `Receiver`. They travel as fds (SCM_RIGHTS) and
 * arrive as endpoints of the parent; the receiver is moved (the child's
 * copy is closed), the sender is a new sender of the child's channel.
 *
 * Run: `deno run --allow-ffi --allow-run examples/ipc_channel.ts`
 *
 * @module
 */

import {
  channel,
  connectOneShot,
  OneShotServer,
  type Receiver,
  type Sender,
  spawn,
} from "../mod.ts";

/** What the child sends through the one-shot server. */
interface Handshake {
  /** The parent sends on this; the child receives. */
  toChild: Sender<string>;
  /** The parent receives on this; the child sends. */
  fromChild: Receiver<string>;
}

const WAIT_MS = 10_000;

if (Deno.args[0] === "child") {
  const name = Deno.args[1];
  console.log("Child process started");
  console.log(`One Shot Server name: ${name}`);
  const [toChild, inChild] = channel<string>();
  const [toParent, fromChild] = channel<string>();
  const bootstrap = await connectOneShot<Handshake>(name);
  // The receiver always moves; the sender is given up here too.
  await bootstrap.send({ toChild, fromChild }, { transfer: [toChild] });
  bootstrap.close();
  for (;;) {
    const message = await inChild.recv({
      signal: AbortSignal.timeout(WAIT_MS),
    });
    console.log(`Received from parent: ${message}`);
    if (message === "quit") break;
    await toParent.send(`Child received: ${message}`);
  }
  console.log("Child process exiting.");
  inChild.close();
  toParent.close();
} else {
  console.log("Parent process started");
  const server = new OneShotServer<Handshake>();
  console.log(`One Shot Server name - Parent: ${server.name}`);
  await using child = spawn(Deno.execPath(), {
    args: ["run", "--allow-ffi", import.meta.filename!, "child", server.name],
    stdout: "piped",
  });
  console.log(`Child process ID: ${child.pid}`);
  const childOutput = new Response(child.stdout).text();

  const [bootstrap, { toChild, fromChild }] = await server.accept({
    timeout: WAIT_MS,
  });
  bootstrap.close();
  console.log(
    `Crossed from the child: a ${toChild.constructor.name} (fd ${toChild.rawFd} here) ` +
      `and a ${fromChild.constructor.name} (fd ${fromChild.rawFd} here)`,
  );
  for (const message of ["Hello from parent", "How are you?", "Goodbye!"]) {
    await toChild.send(message);
    const reply = await fromChild.recv({
      signal: AbortSignal.timeout(WAIT_MS),
    });
    console.log(`Received from child: ${reply}`);
  }
  await toChild.send("quit");
  toChild.close();

  const timer = setTimeout(() => child.kill("SIGKILL"), WAIT_MS);
  const status = await child.status;
  const output = await childOutput;
  clearTimeout(timer);
  fromChild.close();
  console.log("Child process finished.");
  console.log(`--------------------- stdout: ${output}`);
  console.log("-----------------------------------------");
  if (!status.success) {
    throw new Error(`The child failed: ${JSON.stringify(status)}`);
  }
}

/**
 * A local `nats-server` for the tests, the benchmark and the example: started
 * on 127.0.0.1 on a port the server picks, stopped and reaped on dispose,
 * and restartable on the same port (and the same JetStream store).
 *
 * Needs `--allow-run` (and `--allow-write` for a JetStream store directory
 * it creates and removes).
 *
 * @module
 */

const READY = "Server is ready";
const LISTENING = /Listening for client connections on [^\s:]+:(\d+)/;

/** Options of {@linkcode startNatsServer}. */
export interface NatsServerOptions {
  /** Enable JetStream with a store in a fresh temporary directory. */
  jetstream?: boolean;
  /** Milliseconds to wait for the server to be ready. Default 10_000. */
  timeout?: number;
  /** The executable. Default `nats-server` on the PATH. */
  command?: string;
}

/** The `nats-server` executable, or `null` when it cannot be run. */
export async function findNatsServer(
  command = "nats-server",
): Promise<string | null> {
  try {
    const out = await new Deno.Command(command, {
      args: ["--version"],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success ? command : null;
  } catch {
    return null;
  }
}

/** A running local server. */
export class NatsServer implements AsyncDisposable {
  #command: string;
  #args: string[];
  #timeout: number;
  #storeDir: string | undefined;
  #child: Deno.ChildProcess | undefined;
  #draining: Promise<void> | undefined;
  #log: string[] = [];
  #port = 0;

  /** @ignore Use {@linkcode startNatsServer}. */
  constructor(
    command: string,
    args: string[],
    timeout: number,
    storeDir: string | undefined,
  ) {
    this.#command = command;
    this.#args = args;
    this.#timeout = timeout;
    this.#storeDir = storeDir;
  }

  /** The port it listens on. */
  get port(): number {
    return this.#port;
  }

  /** Its address, `nats://127.0.0.1:<port>`. */
  get url(): string {
    return `nats://127.0.0.1:${this.#port}`;
  }

  /** The server's pid while it runs. */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Whether it runs. */
  get running(): boolean {
    return this.#child !== undefined;
  }

  /** The last lines it logged (for failure messages). */
  get log(): string {
    return this.#log.join("\n");
  }

  /**
   * Starts the server (again, on the same port, after {@linkcode stop});
   * resolves once it is ready for clients.
   *
   * @param extra More arguments for this start only (a `-c` config file
   * that changes a limit, say).
   */
  async start(extra: readonly string[] = []): Promise<void> {
    if (this.#child !== undefined) throw new Error("nats-server already runs");
    const args = [
      "-a",
      "127.0.0.1",
      "-p",
      this.#port === 0 ? "-1" : String(this.#port),
      ...this.#args,
      ...extra,
    ];
    const child = new Deno.Command(this.#command, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    const ready = Promise.withResolvers<void>();
    this.#draining = this.#drain(child.stderr, ready.resolve);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `nats-server was not ready after ${this.#timeout} ms: ${this.log}`,
            ),
          ),
        this.#timeout,
      );
    });
    const exited = child.status.then((status) => {
      throw new Error(
        `nats-server exited with ${status.code} before it was ready: ${this.log}`,
      );
    });
    try {
      await Promise.race([ready.promise, timeout, exited]);
    } catch (error) {
      await this.stop("SIGKILL");
      throw error;
    } finally {
      clearTimeout(timer);
      exited.catch(() => {});
    }
  }

  async #drain(
    stream: ReadableStream<Uint8Array>,
    ready: () => void,
  ): Promise<void> {
    let pending = "";
    for await (
      const text of stream.pipeThrough(new TextDecoderStream())
    ) {
      pending += text;
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) {
        this.#log.push(line);
        if (this.#log.length > 40) this.#log.shift();
        const port = LISTENING.exec(line);
        if (port !== null) this.#port = Number(port[1]);
        if (line.includes(READY)) ready();
      }
    }
  }

  /**
   * Stops the server with `signal` (SIGTERM: a clean shutdown that writes
   * out the JetStream store) and reaps it. Does nothing when it is stopped.
   */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<void> {
    const child = this.#child;
    if (child === undefined) return;
    this.#child = undefined;
    try {
      child.kill(signal);
    } catch {
      // It exited already.
    }
    const kill = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // It exited meanwhile.
      }
    }, 5_000);
    try {
      await child.status;
      await this.#draining;
    } finally {
      clearTimeout(kill);
    }
  }

  /** Stops the server and removes its JetStream store. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
    if (this.#storeDir !== undefined) {
      await Deno.remove(this.#storeDir, { recursive: true }).catch(() => {});
    }
  }
}

/**
 * Starts `nats-server` on 127.0.0.1 on a free port.
 *
 * @throws {Deno.errors.NotFound} When `nats-server` is not installed.
 */
export async function startNatsServer(
  options: NatsServerOptions = {},
): Promise<NatsServer> {
  const command = options.command ?? "nats-server";
  let storeDir: string | undefined;
  const args: string[] = [];
  if (options.jetstream) {
    storeDir = await Deno.makeTempDir({ prefix: "conduit-nats-" });
    args.push("-js", "-sd", storeDir);
  }
  const server = new NatsServer(
    command,
    args,
    options.timeout ?? 10_000,
    storeDir,
  );
  try {
    await server.start();
  } catch (error) {
    await server[Symbol.asyncDispose]();
    throw error;
  }
  return server;
}

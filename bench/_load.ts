/**
 * The load of the "loaded" benchmark rows: one CPU-bound process
 * (`node -e "for(;;){}"`, or the same loop under Deno when there is no
 * `node`) that runs while a measurement runs, and is killed and reaped when
 * it ends, whatever happens.
 *
 * The loop checks its parent pid every 10⁸ passes (a fraction of a second)
 * and exits once the parent is gone, so even a benchmark killed with SIGKILL
 * leaves nothing spinning behind.
 *
 * @example A measurement while one core is busy
 * ```ts
 * import { withLoad } from "./_load.ts";
 *
 * await withLoad(async (load) => {
 *   console.log(`pid ${load.pid} is spinning: ${load.command}`);
 * });
 * ```
 *
 * @module
 */

/** The CPU-bound process started by {@linkcode withLoad}. */
export interface Load {
  /** Its pid. */
  readonly pid: number;
  /** What it runs, for the report, such as `node -e "for(;;){}"`. */
  readonly command: string;
}

/** The loop: says it runs (one byte on stdout), then spins until the parent is gone. */
const NODE_LOOP = 'const p=process.ppid;process.stdout.write("r");' +
  "for(let i=1;;i++){if(i%1e8===0&&process.ppid!==p)process.exit(1)}";
const DENO_LOOP =
  "const p=Deno.ppid;Deno.stdout.writeSync(new Uint8Array([114]));" +
  "for(let i=1;;i++){if(i%1e8===0&&Deno.ppid!==p)Deno.exit(1)}";

let nodeFound: Promise<boolean> | undefined;

/** Whether `node` runs here (checked once). */
function hasNode(): Promise<boolean> {
  return nodeFound ??= new Deno.Command("node", {
    args: ["--version"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).output().then((out) => out.success, () => false);
}

/**
 * Runs `fn` while one CPU-bound process runs. The process is running (it has
 * written its first byte) before `fn` starts, and is killed with SIGKILL and
 * reaped before this returns or throws.
 *
 * @param fn The measurement.
 * @returns What `fn` returned.
 */
export async function withLoad<T>(
  fn: (load: Load) => Promise<T>,
): Promise<T> {
  const node = await hasNode();
  const command = node
    ? { cmd: "node", args: ["-e", NODE_LOOP] }
    : { cmd: Deno.execPath(), args: ["eval", DENO_LOOP] };
  const child = new Deno.Command(command.cmd, {
    args: command.args,
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  // Deno.exit() skips finally blocks but still fires "unload".
  const killOnExit = () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  };
  globalThis.addEventListener("unload", killOnExit);
  const reader = child.stdout.getReader();
  try {
    const first = await reader.read();
    if (first.done) {
      throw new Error(`The CPU-bound process (${command.cmd}) did not start`);
    }
    return await fn({
      pid: child.pid,
      command: node ? 'node -e "for(;;){}"' : 'deno eval "for(;;){}"',
    });
  } finally {
    globalThis.removeEventListener("unload", killOnExit);
    killOnExit();
    await reader.cancel().catch(() => {});
    await child.status;
  }
}

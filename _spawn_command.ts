/**
 * What `spawn()` runs, decided as `Deno.Command` decides although the FFI
 * could bypass Deno's permissions: the command resolved to a path (a name
 * through the `PATH` of the child's environment, a relative path against the
 * child's cwd), the run permission required for that path, the environment
 * built without `--allow-env`, and errors that name the real cause.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { ERRNO, errno, errnoName, systemError } from "./ffi/errors.ts";
import { AT, S, STAT } from "./ffi/layout.ts";
import { cstr } from "./ffi/mem.ts";

/**
 * The child's environment as `KEY=value` strings, or `null` when it is this
 * process's live environment unchanged (the child then gets `environ`
 * itself). Read through libc, so `env` needs no `--allow-env`, as with
 * `Deno.Command`.
 */
export function childEnvironment(
  env: Record<string, string> | undefined,
  clearEnv: boolean | undefined,
): string[] | null {
  if (
    env !== undefined &&
    (typeof env !== "object" || env === null || Array.isArray(env) ||
      env instanceof Map)
  ) {
    throw new TypeError(
      `Cannot spawn: env must be an object of strings, got ${
        env === null
          ? "null"
          : Array.isArray(env)
          ? "an array"
          : env instanceof Map
          ? "a Map (pass Object.fromEntries(map))"
          : typeof env
      }`,
    );
  }
  if (!clearEnv && env === undefined) return null;
  const merged = new Map<string, string>();
  if (!clearEnv) {
    for (const entry of liveEnvironment()) {
      const eq = entry.indexOf("=");
      if (eq > 0) merged.set(entry.slice(0, eq), entry.slice(eq + 1));
    }
  }
  for (const [key, value] of Object.entries(env ?? {})) {
    if (typeof value !== "string") {
      // String(value) would hand the child "undefined" or "[object Object]".
      throw new TypeError(
        `Cannot spawn: the value of environment variable ${key} must be a string, got ${
          value === null ? "null" : typeof value
        }`,
      );
    }
    const text = value;
    if (key === "" || key.includes("=") || key.includes("\0")) {
      throw new TypeError(
        `Cannot spawn: invalid environment variable name ${
          JSON.stringify(key)
        }`,
      );
    }
    if (text.includes("\0")) {
      throw new TypeError(
        `Cannot spawn: the value of environment variable ${key} contains a NUL byte`,
      );
    }
    merged.set(key, text);
  }
  return Array.from(merged, ([key, value]) => `${key}=${value}`);
}

/** This process's live environment (`environ`) as `KEY=value` strings. */
export function liveEnvironment(): string[] {
  const variable = libc().environ;
  if (variable === null) return [];
  const array = new Deno.UnsafePointerView(variable).getPointer(0);
  if (array === null) return [];
  const view = new Deno.UnsafePointerView(array);
  const entries: string[] = [];
  for (let offset = 0;; offset += 8) {
    const entry = view.getPointer(offset);
    if (entry === null) return entries;
    entries.push(Deno.UnsafePointerView.getCString(entry));
  }
}

function variable(env: readonly string[], name: string): string | undefined {
  const prefix = `${name}=`;
  return env.find((entry) => entry.startsWith(prefix))?.slice(prefix.length);
}

/** The child's `PATH`, else this process's, as `Deno.Command` takes it. */
function searchPath(env: readonly string[] | null): string | undefined {
  const own = () => variable(liveEnvironment(), "PATH");
  return env === null ? own() : variable(env, "PATH") ?? own();
}

/**
 * The path `command` runs, as `Deno.Command` resolves it: a command with a
 * slash is a path, relative to the child's cwd; a name is looked up in the
 * `PATH` of the child's environment (this process's `PATH` when that has
 * none), the first regular file there that this user may execute. `env`
 * is the child's environment, `null` for this process's.
 *
 * @throws {Deno.errors.NotFound} When a name is found in no `PATH` entry.
 */
export function resolveCommand(
  command: string,
  cwd: string | undefined,
  env: readonly string[] | null,
): string {
  if (command.includes("/")) return absolute(command, cwd);
  for (const dir of searchPath(env)?.split(":") ?? []) {
    const candidate = absolute(`${dir === "" ? "." : dir}/${command}`, cwd);
    if (isExecutableFile(candidate)) return candidate;
  }
  throw failure(
    Deno.errors.NotFound,
    `Cannot spawn ${JSON.stringify(command)}: command not found in PATH`,
    ERRNO.ENOENT,
  );
}

/** `path` made absolute against the child's cwd, `.` and `..` resolved. */
function absolute(path: string, cwd: string | undefined): string {
  if (path.startsWith("/")) return normalize(path);
  const base = cwd?.startsWith("/") ? cwd : ownCwd(cwd);
  // Without /proc the path stays relative, for the child to resolve.
  return base === undefined ? path : normalize(`${base}/${path}`);
}

function ownCwd(relative: string | undefined): string | undefined {
  const buf = new Uint8Array(4096);
  const n = Number(
    libc().readlink(cstr("/proc/self/cwd"), buf, BigInt(buf.length)),
  );
  if (n < 0 || n === buf.length) return undefined;
  const own = new TextDecoder().decode(buf.subarray(0, n));
  return relative === undefined ? own : `${own}/${relative}`;
}

function normalize(path: string): string {
  const parts: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return `/${parts.join("/")}`;
}

function isExecutableFile(path: string): boolean {
  const lib = libc();
  const stat = new Uint8Array(STAT.size);
  if (lib.fstatat(AT.FDCWD, cstr(path), stat, 0) === -1) return false;
  const view = new DataView(stat.buffer);
  const mode = view.getUint32(STAT.mode, true);
  if ((mode & S.IFMT) !== S.IFREG) return false;
  // As access(X_OK) decides, but for supplementary groups (the exec then
  // reports EACCES).
  const euid = lib.geteuid();
  if (euid === 0) return (mode & 0o111) !== 0;
  if (view.getUint32(STAT.uid, true) === euid) return (mode & 0o100) !== 0;
  return (mode & 0o011) !== 0;
}

/**
 * Requires the run permission for `path` (resolved from `requested`) as
 * `Deno.Command` does: granted, or asked for where Deno would prompt. Unless
 * run is granted for every command, a child may not get an `LD_*` or
 * `DYLD_*` variable, which could load code into it. `env` is the child's
 * environment, `null` for this process's.
 *
 * @throws {Deno.errors.NotCapable} Naming the flag that would grant it.
 */
export function requireRunPermission(
  requested: string,
  path: string,
  childEnv: readonly string[] | null,
): void {
  if (Deno.permissions.querySync({ name: "run" }).state === "granted") return;
  const env = childEnv ?? liveEnvironment();
  const loaders = env.map((entry) => entry.split("=", 1)[0])
    .filter((key, i) => isLoaderVariable(key) && env[i].length > key.length + 1)
    .sort();
  if (loaders.length > 0) {
    const many = loaders.length > 1;
    throw new Deno.errors.NotCapable(
      `Requires --allow-run permissions to spawn subprocess with ${
        loaders.join(", ")
      } environment variable${many ? "s" : ""}. Alternatively, spawn with ${
        many ? "these" : "the"
      } environment variable${many ? "s" : ""} unset.`,
    );
  }
  const descriptor = { name: "run", command: path } as const;
  let { state } = Deno.permissions.querySync(descriptor);
  if (state === "prompt") {
    ({ state } = Deno.permissions.requestSync(descriptor));
  }
  if (state !== "granted") {
    throw new Deno.errors.NotCapable(
      `Requires run access to ${
        JSON.stringify(requested)
      }, run again with the --allow-run flag`,
    );
  }
}

function isLoaderVariable(key: string): boolean {
  const upper = key.trim().toUpperCase();
  return upper.startsWith("LD_") || upper.startsWith("DYLD_");
}

/**
 * The error for a failed `posix_spawnp` of `command` (resolved to `path`):
 * a missing or unusable cwd is named as such, since the exec cannot tell it
 * from a missing command.
 */
export function spawnError(
  command: string,
  path: string,
  code: number,
  cwd: string | undefined,
): Error {
  const name = JSON.stringify(command);
  if (
    cwd !== undefined &&
    (code === ERRNO.ENOENT || code === ERRNO.ENOTDIR || code === ERRNO.EACCES)
  ) {
    const problem = cwdProblem(name, cwd, code);
    if (problem !== undefined) return problem;
  }
  const quoted = JSON.stringify(path);
  // The resolved path, unless it is the command as given.
  const it = path === command ? "it" : quoted;
  if (code === ERRNO.ENOENT) {
    // The file is there, so what exec did not find is what it names.
    const why = fileType(path) === S.IFREG
      ? `${it} exists, but its interpreter does not (the program on its #! line, or the dynamic loader of a binary)`
      : `no such file ${quoted}`;
    return failure(Deno.errors.NotFound, `Cannot spawn ${name}: ${why}`, code);
  }
  if (code === ERRNO.EACCES) {
    const type = fileType(path);
    const why = type === S.IFDIR
      ? `${it} is a directory`
      : type === S.IFREG && !isExecutableFile(path)
      ? `${it} is not executable`
      : `permission denied for ${quoted}`;
    return failure(
      Deno.errors.PermissionDenied,
      `Cannot spawn ${name}: ${why}`,
      code,
    );
  }
  return systemError("posix_spawnp", code, `command ${name}`);
}

/** The file type bits (`S.IFMT`) of `path`, or `undefined` if it is not there. */
function fileType(path: string): number | undefined {
  const stat = new Uint8Array(STAT.size);
  if (libc().fstatat(AT.FDCWD, cstr(path), stat, 0) === -1) return undefined;
  return new DataView(stat.buffer).getUint32(STAT.mode, true) & S.IFMT;
}

function cwdProblem(
  name: string,
  cwd: string,
  code: number,
): Error | undefined {
  const stat = new Uint8Array(STAT.size);
  const quoted = JSON.stringify(cwd);
  if (libc().fstatat(AT.FDCWD, cstr(cwd), stat, 0) === -1) {
    const why = errno();
    if (why !== ERRNO.ENOENT && why !== ERRNO.ENOTDIR) return undefined;
    return failure(
      Deno.errors.NotFound,
      `Cannot spawn ${name}: no such cwd ${quoted}`,
      code,
    );
  }
  const mode = new DataView(stat.buffer).getUint32(STAT.mode, true);
  if ((mode & S.IFMT) === S.IFDIR) return undefined;
  return failure(
    Deno.errors.NotADirectory,
    `Cannot spawn ${name}: the cwd ${quoted} is not a directory`,
    code,
  );
}

/** An error of `Class` that also carries the errno, as a libc error does. */
function failure(
  Class: new (message: string) => Error,
  message: string,
  code: number,
): Error {
  return Object.assign(new Class(message), {
    code: errnoName(code),
    errno: code,
    syscall: "posix_spawnp",
  });
}

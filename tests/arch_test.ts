/**
 * The per-architecture tables (ffi/layout.ts, SYS in ffi/libc.ts, ERRNO in
 * ffi/errors.ts) against the C headers of each architecture: the C program
 * tests/fixtures/layout.c prints every size, offset and constant the module
 * uses; it is compiled natively and with a cross compiler (static) and run
 * under qemu-user, and its output compared with the tables of that
 * architecture. Where the cross tools are missing (`apt-get install
 * gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user`; CI installs them)
 * that architecture's comparison is skipped with a message.
 *
 * Then the tables of this process's architecture against the running kernel
 * (struct stat, struct epoll_event, open flags), and the refusal of every
 * other platform.
 */

import assert from "node:assert/strict";
import {
  ARCH,
  type Arch,
  cmsgLen,
  cmsgSpace,
  EFD,
  EPOLL,
  EPOLL_EVENT,
  O,
  STAT,
  type Table,
  tablesFor,
} from "../ffi/layout.ts";
import { libc, platformProblem, SYS, SYS_BY_ARCH } from "../ffi/libc.ts";
import { ERRNO, errno } from "../ffi/errors.ts";
import { cstr } from "../ffi/mem.ts";
import { fixture, runDeno, test, withTimeout } from "./_util.ts";

const SOURCE = fixture("layout.c");
const ARCHES: readonly Arch[] = ["x86_64", "aarch64"];
/** Bound on one compile or run of the C program. */
const TOOL_MS = 120_000;

/** How to build and run the C program for one architecture. */
interface Toolchain {
  /** The C compiler, and the flags before the source. */
  compile: string[];
  /** The emulator to run the program under, or none (native). */
  run: string[];
}

/** Whether `cmd --version` runs. */
async function present(cmd: string): Promise<boolean> {
  try {
    const { success } = await new Deno.Command(cmd, {
      args: ["--version"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false;
  }
}

async function firstPresent(names: string[]): Promise<string | undefined> {
  for (const name of names) if (await present(name)) return name;
  return undefined;
}

/**
 * The toolchain for `arch`, or why there is none. The compiler named by the
 * target triple comes first (Debian has one for the native architecture
 * too), then `cc` for this Deno's own architecture. A program of this Deno's
 * architecture runs as it is; another one under qemu-user. layout.c names
 * the architecture it was built for, which the test checks.
 */
async function toolchainFor(arch: Arch): Promise<Toolchain | string> {
  const own = arch === Deno.build.arch;
  const triple = `${arch}-linux-gnu-gcc`;
  const debian = arch === "aarch64" ? "arm64" : "amd64";
  const install =
    `apt-get install gcc-${arch}-linux-gnu libc6-dev-${debian}-cross qemu-user`;
  const cc = await firstPresent(own ? [triple, "cc", "gcc"] : [triple]);
  if (cc === undefined) return `no ${own ? "C compiler" : triple} (${install})`;
  if (own) return { compile: [cc], run: [] };
  const qemu = await firstPresent([`qemu-${arch}`, `qemu-${arch}-static`]);
  if (qemu === undefined) return `no qemu-${arch} (${install})`;
  return { compile: [cc, "-static"], run: [qemu] };
}

const TOOLCHAINS = new Map<Arch, Toolchain | string>();
for (const arch of ARCHES) {
  const chain = await toolchainFor(arch);
  TOOLCHAINS.set(arch, chain);
  if (typeof chain === "string") {
    console.warn(
      `${chain}: the ${arch} tables are not checked against its C headers`,
    );
  }
}

/** Runs a command to completion within TOOL_MS; its stdout, or a throw. */
async function tool(cmd: string[], what: string): Promise<string> {
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output();
  let result: Deno.CommandOutput;
  try {
    result = await withTimeout(output, TOOL_MS, what);
  } catch (error) {
    try {
      child.kill("SIGKILL");
    } catch {
      // It exited meanwhile.
    }
    await output;
    throw error;
  }
  const decoder = new TextDecoder();
  assert.ok(
    result.success,
    `${what} failed (${result.code}): ${decoder.decode(result.stderr)}`,
  );
  return decoder.decode(result.stdout);
}

/**
 * The C program's output on `arch`. Throws when the program was built for
 * another architecture.
 */
async function headersOf(arch: Arch, chain: Toolchain): Promise<Headers> {
  const dir = await Deno.makeTempDir({ prefix: "conduit-layout-" });
  try {
    const binary = `${dir}/layout-${arch}`;
    await tool(
      [...chain.compile, "-Wall", "-Werror", "-o", binary, SOURCE],
      `compiling layout.c for ${arch}`,
    );
    const { arch: built, undefined: lacking, ...tables } = JSON.parse(
      await tool([...chain.run, binary], `running layout.c on ${arch}`),
    );
    assert.equal(built, arch, `${chain.compile[0]} builds for ${built}`);
    return { arch: built, undefined: lacking, tables };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Every table of the module on `arch`, named as layout.c names them;
 * `cmsgSpace` and `cmsgLen` at the payload sizes `sizes`.
 */
function moduleTables(
  arch: Arch,
  sizes: string[],
): Record<string, Table> {
  return {
    ...tablesFor(arch),
    SYS: SYS_BY_ARCH[arch],
    ERRNO,
    cmsgSpace: Object.fromEntries(sizes.map((n) => [n, cmsgSpace(+n)])),
    cmsgLen: Object.fromEntries(sizes.map((n) => [n, cmsgLen(+n)])),
  };
}

/**
 * The constants that C headers may be too old to define (layout.c lists
 * those it could not print under "undefined"): glibc defines SCM_SECURITY
 * and SCM_PIDFD from 2.39 on, kernel headers the SO_TIMESTAMP*_NEW kinds
 * from 5.1 on and SCM_INQ from 6.16 on. All are the same on every
 * architecture (the kernel's include/linux/socket.h and
 * asm-generic/socket.h).
 */
const MAY_BE_UNDEFINED = new Set([
  "SOCK.SCM_SECURITY",
  "SOCK.SCM_PIDFD",
  "SOCK.SO_TIMESTAMP_NEW",
  "SOCK.SO_TIMESTAMPNS_NEW",
  "SOCK.SO_TIMESTAMPING_NEW",
  "SOCK.SCM_INQ",
]);

/** What layout.c prints: its architecture, the tables, what it lacks. */
interface Headers {
  arch: string;
  undefined: string[];
  tables: Record<string, Record<string, number>>;
}

/**
 * Each difference between the module's tables and the headers' values; a
 * constant the headers do not define counts when it is not one that may be
 * undefined.
 */
function differences(
  module: Record<string, Table>,
  { tables: headers, undefined: lacking }: Headers,
): string[] {
  const found: string[] = [];
  for (const name of lacking) {
    if (!MAY_BE_UNDEFINED.has(name)) {
      found.push(`${name}: not defined by the C headers`);
    }
  }
  for (const [name, table] of Object.entries(module)) {
    const c = headers[name];
    if (c === undefined) {
      found.push(`${name}: not printed by layout.c`);
      continue;
    }
    for (const [key, value] of Object.entries(table)) {
      if (lacking.includes(`${name}.${key}`)) continue;
      if (!(key in c)) found.push(`${name}.${key}: not printed by layout.c`);
      else if (c[key] !== value) {
        found.push(`${name}.${key}: the module has ${value}, C has ${c[key]}`);
      }
    }
    for (const key of Object.keys(c)) {
      if (!(key in table)) found.push(`${name}.${key}: not in the module`);
    }
  }
  for (const name of Object.keys(headers)) {
    if (!(name in module)) found.push(`${name}: no such table in the module`);
  }
  return found;
}

const headers = new Map<Arch, Headers>();

for (const arch of ARCHES) {
  const chain = TOOLCHAINS.get(arch)!;
  test(
    `the ${arch} tables match the ${arch} C headers (layout.c)`,
    async () => {
      const c = await headersOf(arch, chain as Toolchain);
      headers.set(arch, c);
      assert.equal(typeof c.tables.STAT?.size, "number", "layout.c: STAT");
      const sizes = Object.keys(c.tables.cmsgSpace ?? {});
      assert.deepEqual(differences(moduleTables(arch, sizes), c), []);
    },
    { ffi: true, run: true, read: true, write: true },
    { ignore: typeof chain === "string" },
  );
}

test(
  "the comparison tells the architectures apart: each one's tables differ from the other's headers where the ABIs do",
  async () => {
    for (const arch of ARCHES) {
      if (!headers.has(arch)) {
        headers.set(
          arch,
          await headersOf(arch, TOOLCHAINS.get(arch) as Toolchain),
        );
      }
    }
    const x86 = headers.get("x86_64")!;
    const arm = headers.get("aarch64")!;
    const sizes = Object.keys(x86.tables.cmsgSpace);
    const armOnX86 = differences(moduleTables("aarch64", sizes), x86)
      .map((d) => d.split(":")[0]);
    const x86OnArm = differences(moduleTables("x86_64", sizes), arm)
      .map((d) => d.split(":")[0]);
    const known = [
      "O.DIRECTORY",
      "O.NOFOLLOW",
      "EPOLL_EVENT.size",
      "EPOLL_EVENT.data",
      "STAT.size",
      "STAT.mode",
      "STAT.uid",
      "STAT.gid",
      "SYS.io_setup",
      "SYS.io_getevents",
      "SYS.io_submit",
      "SYS.io_cancel",
      "SYS.futex",
      "SYS.waitid",
    ];
    assert.deepEqual(armOnX86.toSorted(), known.toSorted());
    assert.deepEqual(x86OnArm.toSorted(), known.toSorted());
  },
  { ffi: true, run: true, read: true, write: true },
  { ignore: ARCHES.some((arch) => typeof TOOLCHAINS.get(arch) === "string") },
);

test("this process reads the tables of its own architecture", () => {
  assert.equal(ARCH, Deno.build.arch);
  const own = tablesFor(ARCH);
  assert.deepEqual(O, own.O);
  assert.deepEqual(STAT, own.STAT);
  assert.deepEqual(EPOLL_EVENT, own.EPOLL_EVENT);
  assert.deepEqual(SYS, SYS_BY_ARCH[ARCH]);
});

test(
  "struct stat: fstat fills the fields where STAT says, as Deno.statSync reports them",
  () => {
    const path = Deno.makeTempFileSync({ prefix: "conduit-stat-" });
    try {
      Deno.writeFileSync(path, new Uint8Array(12345));
      const lib = libc();
      const fd = lib.open(cstr(path), O.RDONLY | O.CLOEXEC, 0);
      assert.ok(fd >= 0, `open: errno ${errno()}`);
      const buf = new Uint8Array(STAT.size + 64);
      try {
        assert.equal(lib.fstat(fd, buf), 0, `fstat: errno ${errno()}`);
      } finally {
        lib.close(fd);
      }
      const view = new DataView(buf.buffer);
      const info = Deno.statSync(path);
      assert.equal(Number(view.getBigInt64(STAT.fsize, true)), 12345);
      assert.equal(Number(view.getBigUint64(STAT.ino, true)), info.ino);
      assert.equal(Number(view.getBigUint64(STAT.dev, true)), info.dev);
      assert.equal(view.getUint32(STAT.mode, true), info.mode);
      assert.equal(view.getUint32(STAT.uid, true), info.uid);
      assert.equal(view.getUint32(STAT.gid, true), info.gid);
    } finally {
      Deno.removeSync(path);
    }
  },
  { read: true, write: true },
);

test("struct epoll_event: epoll_wait returns the events and the 64-bit data where EPOLL_EVENT says", () => {
  const lib = libc();
  const epfd = lib.epoll_create1(EPOLL.CLOEXEC);
  assert.ok(epfd >= 0, `epoll_create1: errno ${errno()}`);
  const efd = lib.eventfd(1, EFD.CLOEXEC);
  try {
    assert.ok(efd >= 0, `eventfd: errno ${errno()}`);
    const token = 0x1122_3344_5566_7788n;
    const event = new Uint8Array(new ArrayBuffer(64));
    const eventView = new DataView(event.buffer);
    eventView.setUint32(EPOLL_EVENT.events, EPOLL.IN, true);
    eventView.setBigUint64(EPOLL_EVENT.data, token, true);
    assert.equal(lib.epoll_ctl(epfd, EPOLL.CTL_ADD, efd, event), 0);
    // Two slots, filled with a pattern, so a wrong stride or offset shows.
    const ready = new Uint8Array(new ArrayBuffer(2 * EPOLL_EVENT.size + 64))
      .fill(0xa5);
    const n = lib.epoll_wait(epfd, Deno.UnsafePointer.of(ready), 2, 0);
    assert.equal(n, 1, `epoll_wait: errno ${errno()}`);
    const view = new DataView(ready.buffer);
    assert.equal(view.getUint32(EPOLL_EVENT.events, true), EPOLL.IN);
    assert.equal(view.getBigUint64(EPOLL_EVENT.data, true), token);
    // The kernel wrote exactly one struct: the next slot is untouched.
    assert.ok(
      ready.subarray(EPOLL_EVENT.size, 2 * EPOLL_EVENT.size)
        .every((b) => b === 0xa5),
      "epoll_wait wrote past one struct epoll_event",
    );
  } finally {
    if (efd >= 0) lib.close(efd);
    lib.close(epfd);
  }
});

test(
  "open flags: O.DIRECTORY refuses a file, O.NOFOLLOW refuses a symlink",
  () => {
    const dir = Deno.makeTempDirSync({ prefix: "conduit-oflags-" });
    try {
      Deno.writeFileSync(`${dir}/file`, new Uint8Array(1));
      Deno.symlinkSync(`${dir}/file`, `${dir}/link`);
      const lib = libc();
      const attempt = (path: string, flags: number) => {
        const fd = lib.open(cstr(path), flags | O.CLOEXEC, 0);
        if (fd >= 0) {
          lib.close(fd);
          return 0;
        }
        return errno();
      };
      assert.equal(
        attempt(`${dir}/file`, O.RDONLY | O.DIRECTORY),
        ERRNO.ENOTDIR,
      );
      assert.equal(attempt(`${dir}/link`, O.RDONLY | O.NOFOLLOW), ERRNO.ELOOP);
      assert.equal(attempt(dir, O.RDONLY | O.DIRECTORY | O.NOFOLLOW), 0);
      assert.equal(attempt(`${dir}/file`, O.RDONLY | O.NOFOLLOW), 0);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
  { read: true, write: true },
);

test("platformProblem accepts x86_64 and aarch64 Linux with glibc, and names what is supported otherwise", () => {
  for (const arch of ["x86_64", "aarch64"]) {
    const target = `${arch}-unknown-linux-gnu`;
    assert.equal(
      platformProblem({ target, os: "linux", arch, env: "gnu" }),
      undefined,
    );
  }
  for (
    const [target, os, arch, env] of [
      ["x86_64-unknown-linux-musl", "linux", "x86_64", "musl"],
      ["aarch64-apple-darwin", "darwin", "aarch64", undefined],
      ["x86_64-pc-windows-msvc", "windows", "x86_64", "msvc"],
      ["riscv64gc-unknown-linux-gnu", "linux", "riscv64", "gnu"],
    ]
  ) {
    assert.equal(
      platformProblem({ target: target!, os: os!, arch: arch!, env }),
      "@conduit/ipc supports x86_64 and aarch64 Linux with glibc only; " +
        `this Deno is built for ${target}`,
    );
  }
});

test(
  "another platform: the module imports, and its first use throws NotSupported naming what is supported",
  async () => {
    const builds = [
      {
        target: "x86_64-unknown-linux-musl",
        os: "linux",
        arch: "x86_64",
        env: "musl",
      },
      {
        target: "aarch64-apple-darwin",
        os: "darwin",
        arch: "aarch64",
        env: "",
      },
      {
        target: "riscv64gc-unknown-linux-gnu",
        os: "linux",
        arch: "riscv64",
        env: "gnu",
      },
    ];
    for (const build of builds) {
      const r = await runDeno(
        [
          "run",
          "--allow-ffi",
          fixture("other_platform.ts"),
          JSON.stringify(build),
        ],
        30_000,
        `the module on ${build.target}`,
      );
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), {
        imported: true,
        error: {
          name: "NotSupported",
          message:
            "@conduit/ipc supports x86_64 and aarch64 Linux with glibc only; " +
            `this Deno is built for ${build.target}`,
          notSupported: true,
        },
      });
    }
    // The same script on this platform makes its pipe.
    const r = await runDeno(
      ["run", "--allow-ffi", fixture("other_platform.ts"), "{}"],
      30_000,
      "the module on this platform",
    );
    assert.deepEqual(JSON.parse(r.stdout), { imported: true, error: null });
  },
  { run: true, read: true },
);

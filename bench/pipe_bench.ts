/**
 * Pipe throughput, child to parent: `pipe({ bytes: 1 MiB })` with the
 * writer handed to `dd bs=1M` as fd 3, read through `reader.readable` with a
 * BYOB reader reusing a 1 MiB buffer; against `Deno.Command` stdout of the
 * same `dd`, read the same way; and, when a C compiler exists, against a C
 * read()/write() loop on a 1 MiB pipe (the machine's limit). The three
 * alternate inside every run.
 *
 * Goal: at least 1.3× the bytes per second of `Deno.Command` stdout.
 *
 * @module
 */

import { pipe } from "../pipe.ts";
import { spawn } from "../spawn.ts";
import {
  childThroughput,
  ddStreamCase,
  ddWriter,
  MIB,
  readAllByob,
  type Throughput,
} from "./_baselines.ts";
import type { BenchCase } from "./_types.ts";

function ours(mib: number): Promise<Throughput> {
  const start = performance.now();
  const { reader, writer } = pipe({ bytes: MIB });
  const dd = ddWriter(mib, "/dev/fd/3");
  return childThroughput(start, {
    name: "dd",
    childEnd: writer,
    spawn: () => spawn(dd.cmd, { args: dd.args, fds: [writer], stdin: "null" }),
    read: () => readAllByob(reader.readable, MIB),
    close: () => reader.close(),
  });
}

/** The pipe area: one case, 1 GiB (64 MiB with --quick) child to parent. */
export const cases: BenchCase[] = [ddStreamCase({
  id: "pipe.stream",
  area: "pipe",
  name: "pipe()",
  once: ours,
  mechanism: (size) => `pipe() reader.readable BYOB, ${size} from dd bs=1M`,
  c: {
    kind: "pipe",
    id: "pipe.c_limit",
    mechanism: (size) => `pipe() reader.readable BYOB, ${size}`,
    baseline: "C read()/write() 1 MiB, pipe 1 MiB",
  },
})];

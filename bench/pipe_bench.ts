/**
 * Pipe throughput, child to parent: `pipe({ capacity: 1 MiB })` with the
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
  commandStdout,
  cThroughput,
  ddWriter,
  MIB,
  mibPerSecond,
  readAllByob,
  runs,
  type Throughput,
} from "./_baselines.ts";
import { result } from "./_report.ts";
import type { BenchCase, BenchResult } from "./_types.ts";

async function ours(mib: number): Promise<Throughput> {
  const start = performance.now();
  const { reader, writer } = pipe({ capacity: MIB });
  const dd = ddWriter(mib, "/dev/fd/3");
  let child;
  try {
    child = spawn(dd.cmd, { args: dd.args, fds: [writer], stdin: "null" });
  } finally {
    // The child holds its own copy: EOF comes when it exits.
    writer.close();
  }
  try {
    const bytes = await readAllByob(reader.readable, MIB);
    const ms = performance.now() - start;
    const status = await child.status;
    if (!status.success) throw new Error(`dd exited with ${status.code}`);
    return { bytes, ms, mibps: mibPerSecond(bytes, ms) };
  } finally {
    reader.close();
    await child[Symbol.asyncDispose]();
  }
}

function expectBytes(what: string, got: number, mib: number): void {
  if (got !== mib * MIB) {
    throw new Error(`${what} moved ${got} bytes, expected ${mib * MIB}`);
  }
}

/** The pipe area: one case, 1 GiB (64 MiB with --quick) child to parent. */
export const cases: BenchCase[] = [{
  id: "pipe.stream",
  area: "pipe",
  async run(options) {
    const mib = options.quick ? 64 : 1024;
    const size = mib >= 1024 ? `${mib / 1024} GiB` : `${mib} MiB`;
    const mine: number[] = [];
    const theirs: number[] = [];
    const limit: number[] = [];
    let hasC = true;
    await runs(options, `pipe ${size}`, async (measured, run) => {
      const steps = [
        async () => {
          const r = await ours(mib);
          expectBytes("pipe()", r.bytes, mib);
          if (measured) mine.push(r.mibps);
        },
        async () => {
          const dd = ddWriter(mib);
          const r = await commandStdout(dd.cmd, dd.args, MIB);
          expectBytes("Deno.Command stdout", r.bytes, mib);
          if (measured) theirs.push(r.mibps);
        },
        async () => {
          if (!hasC) return;
          const r = await cThroughput("pipe", mib * MIB, MIB, MIB);
          if (r === null) hasC = false;
          else if (measured) limit.push(r.mibps);
        },
      ];
      if (run % 2 === 1) steps.reverse();
      for (const step of steps) await step();
    });
    const out: BenchResult[] = [result({
      id: "pipe.stream",
      mechanism: `pipe() reader.readable BYOB, ${size} from dd bs=1M`,
      unit: "MiB/s",
      higherIsBetter: true,
      samples: mine,
      baseline: {
        mechanism: "Deno.Command stdout BYOB, same dd",
        samples: theirs,
      },
    })];
    if (hasC && limit.length > 0) {
      out.push(result({
        id: "pipe.c_limit",
        mechanism: `pipe() reader.readable BYOB, ${size}`,
        unit: "MiB/s",
        higherIsBetter: true,
        samples: mine,
        baseline: {
          mechanism: "C read()/write() 1 MiB, pipe 1 MiB",
          samples: limit,
        },
      }));
    }
    return out;
  },
}];

import assert from "node:assert/strict";
import {
  channel,
  ChannelClosedError,
  ChannelServer,
  connectOneShot,
  OneShotServer,
} from "../mod.ts";
import { DEFAULT_LIMITS, resolveLimits } from "../channel/_codec_limits.ts";
import { MAX_DEPTH, TAG } from "../channel/_codec_tags.ts";
import { writerCapacity } from "../channel/_codec_encode.ts";
import { decode, readBlobTable } from "../channel/_codec_decode.ts";
import {
  decodeSample,
  hooks,
  type Sample,
  sampleOf,
  seeds,
  treeSample,
} from "./_fuzz.ts";
import { fixture, runDeno, test, varint, withTimeout } from "./_util.ts";

const MiB = 1024 * 1024;

/** Asserts that decoding `sample` fails with InvalidData naming `limit`. */
function assertOverLimit(
  sample: Sample,
  limit: string,
  limits?: Parameters<typeof decodeSample>[1],
): void {
  assert.throws(
    () => decodeSample(sample, limits),
    (error: Error) => {
      assert.ok(error instanceof Deno.errors.InvalidData, String(error));
      assert.match(error.message, new RegExp(`limits\\.${limit} \\(\\d+\\)`));
      return true;
    },
  );
}

test(
  "a sparse array longer than limits.maxElements is refused at its header, before it is built",
  () => {
    // 20M holes: 20 MB on the wire, an array of 20M slots (160 MB) once
    // built.
    const n = 20_000_000;
    const tree = new Uint8Array(1 + 4 + n);
    tree.set([TAG.ARRAY, ...varint(n)]);
    tree.fill(TAG.HOLE, 1 + varint(n).length);
    assertOverLimit(
      treeSample(tree.subarray(0, 1 + varint(n).length + n)),
      "maxElements",
    );
    // The count is checked before the bytes behind it: a 128 MiB array
    // declared in 5 bytes fails on its limit, not on the missing items.
    assertOverLimit(
      treeSample([TAG.ARRAY, ...varint(128 * MiB)]),
      "maxElements",
    );
    // A receiver that raises the limit gets the array, holes and all.
    const got = decodeSample(
      treeSample([
        TAG.ARRAY,
        5,
        TAG.HOLE,
        TAG.INT,
        2,
        TAG.HOLE,
        TAG.HOLE,
        TAG.HOLE,
      ]),
      // The array and its five slots.
      { maxElements: 6 },
    ) as unknown[];
    assert.equal(got.length, 5);
    assert.deepEqual(Object.keys(got), ["1"]);
    assertOverLimit(
      treeSample([
        TAG.ARRAY,
        5,
        TAG.HOLE,
        TAG.INT,
        2,
        TAG.HOLE,
        TAG.HOLE,
        TAG.HOLE,
      ]),
      "maxElements",
      { maxElements: 5 },
    );
  },
);

test(
  "a bigint over limits.maxBytes is refused before its digits are read",
  () => {
    // 128 MiB of magnitude, declared in 7 bytes: refused on its size, not
    // on the missing digits.
    assertOverLimit(
      treeSample([TAG.BIGINT, 0, ...varint(128 * MiB)]),
      "maxBytes",
    );
    const n = 256 * 1024;
    const tree = new Uint8Array(2 + varint(n).length + n);
    tree.set([TAG.BIGINT, 1, ...varint(n)]);
    tree.fill(0x5a, 2 + varint(n).length);
    assertOverLimit(treeSample(tree), "maxBytes", { maxBytes: MiB });
    const got = decodeSample(treeSample(tree), { maxBytes: 2 * MiB });
    assert.equal(got, -BigInt("0x" + "5a".repeat(n)));
  },
);

test(
  "many cheap empty objects stop at limits.maxBytes, and many values at limits.maxElements, whatever the counts of each container",
  () => {
    // Arrays of 1000 empty objects (2 bytes each on the wire), none above
    // any limit on its own.
    const inner = [TAG.ARRAY, ...varint(1000)];
    for (let i = 0; i < 1000; i++) inner.push(TAG.OBJECT, 0);
    const tree = [TAG.ARRAY, ...varint(100)];
    for (let i = 0; i < 100; i++) tree.push(...inner);
    const sample = treeSample(tree);
    // 100,000 objects of 64 bytes or more are over 4 MiB.
    assertOverLimit(sample, "maxBytes", { maxBytes: 4 * MiB });
    assertOverLimit(sample, "maxElements", { maxElements: 50_000 });
    const got = decodeSample(sample, { maxBytes: 64 * MiB }) as unknown[][];
    assert.equal(got.length, 100);
    assert.deepEqual(got[99][999], {});
  },
);

test(
  "maps, sets, objects and blob tables declaring more entries than the limits allow are refused before any is built",
  () => {
    const huge = varint(2 ** 40);
    for (const tag of [TAG.MAP, TAG.SET, TAG.OBJECT]) {
      assertOverLimit(treeSample([tag, ...huge]), "maxElements");
    }
    // A blob table of 2^40 entries behind a one-value tree.
    assertOverLimit(
      {
        head: new Uint8Array([TAG.NULL, ...huge]),
        treeLength: 1,
        blobs: new Uint8Array(0),
      },
      "maxElements",
    );
    // A string is charged before it is decoded.
    const text = new TextEncoder().encode("x".repeat(1000));
    assertOverLimit(
      treeSample([TAG.STRING, ...varint(text.length), ...text]),
      "maxBytes",
      { maxBytes: 1000 },
    );
  },
);

test(
  "nesting deeper than limits.maxDepth is refused, and no receiver takes deeper than senders write",
  () => {
    const nested = (depth: number) => {
      const tree: number[] = [];
      for (let i = 0; i < depth; i++) tree.push(TAG.ARRAY, 1);
      tree.push(TAG.NULL);
      return treeSample(tree);
    };
    assert.deepEqual(decodeSample(nested(3), { maxDepth: 3 }), [[[null]]]);
    assertOverLimit(nested(4), "maxDepth", { maxDepth: 3 });
    decodeSample(nested(MAX_DEPTH));
    assertOverLimit(nested(MAX_DEPTH + 1), "maxDepth");
  },
);

test(
  "limits are checked when set: positive integers, maxDepth at most 1000, defaults for fields left out",
  () => {
    assert.equal(resolveLimits(undefined, "x"), DEFAULT_LIMITS);
    assert.deepEqual(resolveLimits({ maxElements: 7 }, "x"), {
      ...DEFAULT_LIMITS,
      maxElements: 7,
    });
    for (
      const bad of [
        { maxBytes: 0 },
        { maxElements: -1 },
        { maxElements: 1.5 },
        { maxBytes: NaN },
        { maxDepth: MAX_DEPTH + 1 },
      ]
    ) {
      assert.throws(
        () => channel({ limits: bad }),
        /Cannot create channel: limits\.max\w+ must be an integer from 1 to/,
        JSON.stringify(bad),
      );
    }
    // A string is a type error (tests/option_types_test.ts).
    assert.throws(
      () => channel({ limits: { maxBytes: "1" as unknown as number } }),
      TypeError,
    );
    const [tx, rx] = channel({ limits: { maxDepth: 10 } });
    try {
      assert.deepEqual(rx.limits, { ...DEFAULT_LIMITS, maxDepth: 10 });
      rx.limits = { maxBytes: 4096 };
      assert.deepEqual(rx.limits, { ...DEFAULT_LIMITS, maxBytes: 4096 });
      assert.throws(() => {
        rx.limits = { maxElements: 0 };
      }, RangeError);
      assert.deepEqual(rx.limits, { ...DEFAULT_LIMITS, maxBytes: 4096 });
    } finally {
      tx.close();
      rx.close();
    }
  },
);

test(
  "channel({ limits }): a message over its receiver's limits fails recv() with InvalidData naming the limit and drops its sender",
  async () => {
    const [tx, rx] = channel<unknown>({ limits: { maxElements: 100 } });
    const [tx2, rx2] = channel<unknown>();
    try {
      const big = new Array(1000).fill(0);
      await tx.send(big);
      await assert.rejects(
        withTimeout(rx.recv(), 10_000, "recv"),
        (error: Error) =>
          error instanceof Deno.errors.InvalidData &&
          /limits\.maxElements \(100\)/.test(error.message),
      );
      await assert.rejects(rx.recv(), ChannelClosedError);
      // Within the defaults, the same value arrives.
      await tx2.send(big);
      assert.deepEqual(await withTimeout(rx2.recv(), 10_000, "recv"), big);
    } finally {
      for (const end of [tx, rx, tx2, rx2]) end.close();
    }
  },
);

test(
  "servers decode under their limits option: OneShotServer's first message, and every ChannelServer receiver",
  async () => {
    const big = new Array(1000).fill(0);
    {
      using server = new OneShotServer<unknown>({
        limits: { maxElements: 100 },
      });
      const accepting = server.accept({ timeout: 10_000 });
      const tx = await connectOneShot<unknown>(server.name);
      try {
        await tx.send(big);
        await assert.rejects(
          accepting,
          (error: Error) =>
            error instanceof Deno.errors.InvalidData &&
            /limits\.maxElements \(100\)/.test(error.message),
        );
      } finally {
        tx.close();
      }
    }
    using server = new ChannelServer<unknown>({ limits: { maxDepth: 5 } });
    const accepting = server.accept({ timeout: 10_000 });
    const tx = await connectOneShot<unknown>(server.name);
    const rx = await accepting;
    try {
      assert.deepEqual(rx.limits, { ...DEFAULT_LIMITS, maxDepth: 5 });
      await tx.send(big);
      assert.deepEqual(await withTimeout(rx.recv(), 10_000, "recv"), big);
    } finally {
      tx.close();
      rx.close();
    }
    assert.throws(
      () => new ChannelServer({ limits: { maxDepth: 0 } }),
      /Cannot create server: limits\.maxDepth/,
    );
  },
);

/** Runs one attack of `decode_attack.ts` in a child with a bounded heap. */
async function attack(name: string): Promise<Record<string, string>> {
  const run = await runDeno(
    [
      "run",
      "--allow-ffi",
      "--v8-flags=--max-old-space-size=768",
      fixture("decode_attack.ts"),
      name,
    ],
    120_000,
    `attack ${name}`,
  );
  assert.equal(
    run.code,
    0,
    `attack ${name}: the receiver died (${
      run.signal ?? run.code
    }): ${run.stderr}`,
  );
  return JSON.parse(run.stdout);
}

for (
  const [name, limit] of [
    ["empty-objects", "maxBytes"],
    ["sparse-array", "maxElements"],
    ["bigint", "maxBytes"],
  ]
) {
  test(
    `a receiver with default limits refuses the ${name} attack (cheap on the wire, huge once decoded) with InvalidData, within a 768 MB heap`,
    async () => {
      const report = await attack(name);
      assert.equal(report.outcome, "error", JSON.stringify(report));
      assert.equal(report.name, "InvalidData", JSON.stringify(report));
      assert.match(report.message, new RegExp(`limits\\.${limit}`));
    },
    { run: true },
  );
}

test(
  "a bigint of 1 MiB round-trips (encode and decode are linear in its length)",
  () => {
    const n = MiB;
    const magnitude = BigInt("0x" + "c3".repeat(n - 1) + "7f");
    for (const v of [magnitude, -magnitude, magnitude + 1n]) {
      const sample = sampleOf(v);
      assert.equal(decodeSample(sample, { maxBytes: 8 * MiB }), v);
    }
    // The wire holds its bytes least significant first.
    const sample = sampleOf(magnitude);
    assert.deepEqual(Array.from(sample.head.subarray(0, 6)), [
      TAG.BIGINT,
      0,
      ...varint(n),
      0x7f,
    ]);
    for (
      const v of [
        0n,
        1n,
        -1n,
        15n,
        16n,
        255n,
        256n,
        -(2n ** 64n),
        2n ** 1000n - 1n,
        0xabcn,
      ]
    ) {
      assert.equal(decodeSample(sampleOf(v)), v);
    }
  },
);

test(
  "a value encoded while another is (a getter that sends) leaves both whole",
  () => {
    let inner: Sample | undefined;
    const value = {
      before: "b".repeat(50),
      get during() {
        inner = sampleOf(["inner", 7, { deep: [new Date(0)] }]);
        return 42;
      },
      after: [1, 2, 3],
    };
    const outer = sampleOf(value);
    assert.deepEqual(decodeSample(outer), {
      before: "b".repeat(50),
      during: 42,
      after: [1, 2, 3],
    });
    assert.deepEqual(decodeSample(inner!), [
      "inner",
      7,
      { deep: [new Date(0)] },
    ]);
  },
);

test(
  "the codec's shared writer returns to its size after a large message",
  () => {
    const small = writerCapacity();
    sampleOf({ text: "x".repeat(4 * MiB) });
    assert.equal(writerCapacity(), small);
    // Also when encoding fails part way.
    assert.throws(
      () => sampleOf(["y".repeat(4 * MiB), () => {}]),
      (e: Error) => e.name === "DataCloneError",
    );
    assert.equal(writerCapacity(), small);
  },
);

test(
  "an Error named after an Object.prototype member (toString, constructor, ...) is InvalidData, not a TypeError",
  () => {
    const utf8 = (s: string) => {
      const b = new TextEncoder().encode(s);
      return [b.length, ...b];
    };
    for (
      const name of [
        "toString",
        "constructor",
        "hasOwnProperty",
        "valueOf",
        "__proto__",
      ]
    ) {
      assert.throws(
        () =>
          decodeSample(
            treeSample([TAG.ERROR, ...utf8(name), ...utf8("m"), 0, 0]),
          ),
        (e: Error) =>
          e instanceof Deno.errors.InvalidData &&
          e.message.includes(`unknown error type ${name}`),
        name,
      );
      // Such an error is sent as a plain Error.
      const error = new Error("m");
      error.name = name;
      const got = decodeSample(sampleOf(error)) as Error;
      assert.ok(got instanceof Error && got.constructor === Error, name);
      assert.equal(got.message, "m");
    }
  },
);

test(
  "a DOMException arrives as a DOMException with its name, code, message and cause, as structured clone keeps it; a plain Error with a DOMException name stays an Error",
  () => {
    for (const name of ["AbortError", "TimeoutError", "DataCloneError", "x"]) {
      const sent = new DOMException("gave up", name);
      const got = decodeSample(sampleOf(sent)) as DOMException;
      assert.ok(got instanceof DOMException, name);
      assert.equal(got.name, name);
      assert.equal(got.code, sent.code);
      assert.equal(got.message, "gave up");
      assert.equal(got.stack, sent.stack);
    }
    const reason = AbortSignal.abort().reason as DOMException;
    const withCause = Object.assign(new DOMException("outer", "AbortError"), {
      cause: reason,
    });
    const got = decodeSample(sampleOf(withCause)) as DOMException & {
      cause: unknown;
    };
    assert.ok(got.cause instanceof DOMException);
    assert.equal((got.cause as DOMException).name, "AbortError");
    const plain = new Error("m");
    plain.name = "AbortError";
    const back = decodeSample(sampleOf(plain)) as Error;
    assert.ok(!(back instanceof DOMException));
    assert.equal(back.name, "Error");
    // A truncated DOMException name is malformed, not a crash.
    const utf8 = (text: string) => {
      const bytes = new TextEncoder().encode(text);
      return [bytes.length, ...bytes];
    };
    assert.throws(
      () => decodeSample(treeSample([TAG.ERROR, ...utf8("DOMException")])),
      Deno.errors.InvalidData,
    );
  },
);

test(
  "strings of every length up to 130 round-trip, ASCII or with a multi-byte character first, in the middle or last, and invalid UTF-8 of any length is InvalidData",
  () => {
    const cases: string[] = [];
    for (let n = 0; n <= 130; n++) {
      const ascii = "abcdefghijklmnopqrstuvwxyz0123456789".repeat(4).slice(
        0,
        n,
      );
      cases.push(ascii);
      if (n > 0) {
        for (const at of [0, n >> 1, n - 1]) {
          cases.push(ascii.slice(0, at) + "é" + ascii.slice(at + 1));
          cases.push(ascii.slice(0, at) + "😀" + ascii.slice(at + 1));
        }
      }
    }
    // Around the longest ASCII string the native decoder makes without
    // converting it, and far beyond.
    for (const n of [255, 256, 257, 1024, 4096]) {
      const ascii = "x".repeat(n);
      cases.push(ascii, ascii.slice(1) + "é", "é" + ascii.slice(1));
    }
    for (const value of cases) {
      assert.equal(decodeSample(sampleOf(value)), value, JSON.stringify(value));
    }
    // A lone continuation byte inside an otherwise ASCII string, at lengths
    // on both sides of the decoder's paths (made in JavaScript below 8
    // bytes; natively, ASCII up to 256 bytes without conversion).
    for (const n of [1, 7, 8, 9, 15, 16, 17, 130, 255, 256, 257, 1025]) {
      const bytes = new Uint8Array(n).fill(0x61);
      bytes[n - 1] = 0x80;
      assert.throws(
        () => decodeSample(treeSample([TAG.STRING, ...varint(n), ...bytes])),
        Deno.errors.InvalidData,
        `length ${n}`,
      );
    }
  },
);

test("floats keep every bit a number shows: -0, NaN, infinities, subnormals, the extremes, at every byte offset", () => {
  const floats = [
    0.5,
    -0,
    NaN,
    Infinity,
    -Infinity,
    Number.MIN_VALUE,
    -Number.MIN_VALUE,
    Number.MAX_VALUE,
    Number.EPSILON,
    2 ** 53 + 2,
    -1e-310,
    Math.PI,
  ];
  for (let pad = 0; pad < 8; pad++) {
    // A string before each float moves it to every offset mod 8.
    const value = floats.map((f) => ["x".repeat(pad), f, new Date(f)]);
    const got = decodeSample(sampleOf(value)) as [string, number, Date][];
    got.forEach(([, f, date], i) => {
      assert.ok(Object.is(f, floats[i]), `${floats[i]} after ${pad}`);
      assert.ok(Object.is(date.getTime(), new Date(floats[i]).getTime()));
    });
  }
});

test("U+FFFD sent on purpose arrives, alone or beside invalid UTF-8, which is InvalidData", () => {
  // The decoder takes a U+FFFD in its result for the mark of invalid
  // input and asks the validating decoder: a real one must survive that.
  for (const n of [0, 1, 7, 8, 40, 300]) {
    const value = "x".repeat(n) + "\uFFFD" + "y".repeat(n);
    assert.equal(decodeSample(sampleOf(value)), value, `length ${n}`);
    const bytes = new TextEncoder().encode(value + "z");
    bytes[bytes.length - 1] = 0xff;
    assert.throws(
      () =>
        decodeSample(
          treeSample([TAG.STRING, ...varint(bytes.length), ...bytes]),
        ),
      Deno.errors.InvalidData,
      `invalid beside U+FFFD, length ${n}`,
    );
  }
});

test(
  "strings decode the same where Buffer has no utf8Slice (the TextDecoder path)",
  async () => {
    const script = `
    import { Buffer } from "node:buffer";
    delete Buffer.prototype.utf8Slice;
    const { channel } = await import(${
      JSON.stringify(new URL("../channel.ts", import.meta.url).href)
    });
    const [tx, rx] = channel();
    const sent = ["ascii ".repeat(20), "é😀\uFFFD".repeat(5), "short", ""];
    await tx.send(sent);
    const got = await rx.recv();
    tx.close();
    rx.close();
    console.log(JSON.stringify(got) === JSON.stringify(sent) ? "same" : "differ");
  `;
    const run = await runDeno(
      ["eval", "--ext=ts", script],
      30_000,
      "the decode without utf8Slice",
    );
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout.trim(), "same");
  },
  { run: true, read: true },
);

test("a string that begins with U+FEFF keeps it, as a value, a key, a Map key and a RegExp source, on every decoding path", () => {
  for (const n of [0, 1, 14, 15, 16, 600, 1100]) {
    for (const rest of ["x".repeat(n), "é".repeat(n)]) {
      const text = "\uFEFF" + rest;
      assert.equal(decodeSample(sampleOf(text)), text, `${n} after the mark`);
      // Keys that differ only by the mark stay two keys.
      const object = decodeSample(sampleOf({ [text]: 1, [rest]: 2 }));
      assert.deepEqual(Object.keys(object as object).sort(), [rest, text]);
      const map = decodeSample(sampleOf(new Map([[text, 1]])));
      assert.deepEqual([...(map as Map<string, number>).keys()], [text]);
    }
  }
  const source = "\uFEFF+b|\\uFEFF";
  const regexp = decodeSample(sampleOf(new RegExp(source, "u"))) as RegExp;
  assert.equal(regexp.source, source);
});

test("a string that starts with U+FEFF keeps it, as a value or a key, at every length the decoder treats apart", async () => {
  // U+FEFF is an ordinary character inside a value (structured clone keeps
  // it); only a file's first bytes take it for a byte order mark.
  for (const n of [0, 1, 14, 15, 16, 40, 1023, 1024, 1025]) {
    for (const rest of ["x".repeat(n), "é".repeat(n)]) {
      const value = "\uFEFF" + rest;
      assert.equal(decodeSample(sampleOf(value)), value, `length ${n}`);
      const keyed = decodeSample(sampleOf({ [value]: 1 }));
      assert.deepEqual(Object.keys(keyed as object), [value], `key ${n}`);
    }
  }
  const [tx, rx] = channel<string[]>();
  const sent = ["\uFEFF", "\uFEFFhello", "\uFEFF\uFEFF"];
  await tx.send(sent);
  assert.deepEqual(await withTimeout(rx.recv(), 2000, "recv"), sent);
  tx.close();
  rx.close();
});

test("strings travel as UTF-8: a lone surrogate arrives as U+FFFD, as the docs say", () => {
  for (const [sent, got] of [["\uD800", "\uFFFD"], ["a\uDC00b", "a\uFFFDb"]]) {
    assert.equal(decodeSample(sampleOf(sent)), got);
  }
  assert.equal(decodeSample(sampleOf("\uD83D\uDE00")), "\uD83D\uDE00");
});

test("a message without blobs has a blob table of one zero byte: blob bytes, or bytes after it, are InvalidData", () => {
  const tree = [TAG.STRING, ...varint(1), 0x61];
  const ok: Sample = {
    head: new Uint8Array([...tree, 0]),
    treeLength: tree.length,
    blobs: new Uint8Array(0),
  };
  assert.equal(decodeSample(ok), "a");
  for (
    const bad of [
      { ...ok, blobs: new Uint8Array(3) },
      { ...ok, head: new Uint8Array([...tree, 0, 0]) },
    ]
  ) {
    assert.throws(() => decodeSample(bad), Deno.errors.InvalidData);
  }
});

test("back-references are kept only once an object was met: a reference to none is InvalidData", () => {
  const shared = { n: 1 };
  const value = decodeSample(sampleOf([shared, shared, new Date(5), shared]));
  assert.ok(Array.isArray(value));
  assert.equal(value[0], value[1]);
  assert.equal(value[3], value[0]);
  assert.deepEqual(value[2], new Date(5));
  assert.throws(
    () => decodeSample(treeSample([TAG.REF, ...varint(0)])),
    Deno.errors.InvalidData,
  );
});

test("back-references hold past the first objects an encode looks up by a scan: 40 objects met twice, in a cycle, and a buffer", () => {
  const objects = Array.from({ length: 40 }, (_, i) => ({ i }));
  const root: { all: object[]; again: object[]; self?: unknown } = {
    all: objects,
    again: [...objects].reverse(),
  };
  root.self = root;
  const value = decodeSample(sampleOf(root)) as typeof root & {
    all: { i: number }[];
    again: { i: number }[];
  };
  assert.equal(value.self, value);
  assert.equal(value.all.length, 40);
  for (let i = 0; i < 40; i++) {
    assert.equal(value.all[i].i, i);
    assert.equal(value.again[39 - i], value.all[i], `object ${i}`);
  }
  // A second encode starts with nothing met: no reference to the last one.
  const fresh = decodeSample(sampleOf([objects[0], objects[0]])) as unknown[];
  assert.deepEqual(fresh[0], { i: 0 });
  assert.equal(fresh[1], fresh[0]);
});

test("a limit's error names what went over it: the container with its count, or the string with its size", () => {
  const cases: [unknown, Parameters<typeof decodeSample>[1], RegExp][] = [
    [[1, 2, 3, 4, 5], { maxElements: 3 }, /: an array of 5 items;/],
    [{ a: 1, b: 2, c: 3 }, { maxElements: 2 }, /: an object of 3 properties;/],
    [new Map([[1, 2], [3, 4]]), { maxElements: 3 }, /: a Map of 2 entries;/],
    [new Set([1, 2, 3]), { maxElements: 2 }, /: a Set of 3 items;/],
    [{ k: "x".repeat(5000) }, { maxBytes: 4000 }, /: a string of 5000 bytes;/],
    [{ ["y".repeat(5000)]: 1 }, { maxBytes: 4000 }, /: a key of 5000 bytes;/],
  ];
  for (const [value, limits, name] of cases) {
    assert.throws(
      () => decodeSample(sampleOf(value), limits),
      (error: Error) => {
        assert.ok(error instanceof Deno.errors.InvalidData, String(error));
        assert.match(error.message, name);
        return true;
      },
    );
  }
});

test("a tree cut anywhere is InvalidData, whatever bytes follow it: no read goes past the tree into the blob table", () => {
  const whole = seeds()[0] as Record<string, unknown>;
  // Each kind on its own too: a read past the end of the tree's last value
  // would make a whole value of the bytes after it.
  for (const value of [whole, ...Object.values(whole)]) {
    const { head, treeLength, blobs } = sampleOf(value);
    const specs = readBlobTable(head, treeLength, blobs.byteLength);
    const offsets: number[] = [];
    let at = 0;
    for (const spec of specs) {
      offsets.push(at);
      at += spec.length;
    }
    const blob = (i: number) =>
      blobs.slice(offsets[i], offsets[i] + specs[i].length).buffer;
    // The decoder reads the tree in [0, treeLength): what follows it (the
    // blob table on the wire; here also bytes that read as a tag, a hole,
    // a varint, a length, a float or UTF-8) must not change the outcome.
    const tails = [
      head.subarray(treeLength),
      new Uint8Array(16),
      new Uint8Array(16).fill(TAG.TRUE),
      new Uint8Array(16).fill(TAG.HOLE),
    ];
    for (const tail of tails) {
      for (let cut = 0; cut < treeLength; cut++) {
        const bytes = new Uint8Array(cut + tail.length);
        bytes.set(head.subarray(0, cut));
        bytes.set(tail, cut);
        // A proper prefix of a tree is never a whole value: a decode that
        // ends does so past the cut, having read what follows it.
        assert.throws(
          () => decode(bytes, cut, specs, blob, hooks),
          (error: Error) => {
            assert.ok(error instanceof Deno.errors.InvalidData, String(error));
            assert.doesNotMatch(error.message, /bytes after the value/);
            return true;
          },
          `tree cut at ${cut} of ${treeLength}`,
        );
      }
    }
    assert.deepEqual(decode(head, treeLength, specs, blob, hooks), value);
  }
});

test("every value, float and property is charged to the limits: a boxed primitive's and an error's inner value, a float's heap number, a property's slot", () => {
  // Two values each (the box or error and what is inside).
  for (const value of [Object(5), new Error("e", { cause: 1 })]) {
    assertOverLimit(sampleOf(value), "maxElements", { maxElements: 1 });
    assert.deepEqual(decodeSample(sampleOf(value), { maxElements: 2 }), value);
  }
  // 1000 floats take 16 KB more than 1000 small ints (which V8 keeps in
  // the array's slots).
  const ints = sampleOf(Array.from({ length: 1000 }, (_, i) => i));
  const floats = sampleOf(Array.from({ length: 1000 }, (_, i) => i + 0.5));
  assert.equal(
    (decodeSample(ints, { maxBytes: 16_000 }) as number[]).length,
    1000,
  );
  assertOverLimit(floats, "maxBytes", { maxBytes: 16_000 });
  assert.equal(
    (decodeSample(floats, { maxBytes: 32_000 }) as number[]).length,
    1000,
  );
  // 100 properties with keys of 100 bytes: 12,400 bytes of keys, and each
  // property's own slot on top.
  const object: Record<string, number> = {};
  for (let i = 0; i < 100; i++) object[String(i).padStart(100, "k")] = i;
  assertOverLimit(sampleOf(object), "maxBytes", { maxBytes: 15_000 });
  assert.deepEqual(
    decodeSample(sampleOf(object), { maxBytes: 20_000 }),
    object,
  );
});

/**
 * The iterator behind a receiver's `for await` keeps an async generator's
 * rules: calls settle in call order, errors and `return()`/`throw()` end it.
 */
import assert from "node:assert/strict";
import { CLOSED_NOW, untilClosed } from "../_channel_error.ts";
import { channel, ChannelClosedError } from "../channel.ts";
import { test } from "./_util.ts";

/** A recv() that gives what `feed` is given, in order, one by one. */
function fed<T>() {
  const waiting: ((value: T | Error) => void)[] = [];
  return {
    recv: () =>
      new Promise<T>((resolve, reject) =>
        waiting.push((v) => v instanceof Error ? reject(v) : resolve(v))
      ),
    feed: (value: T | Error) => waiting.shift()!(value),
    get waiting() {
      return waiting.length;
    },
  };
}

test("untilClosed: next() calls made together settle in call order, one recv() at a time", async () => {
  const source = fed<number>();
  const it = untilClosed(source.recv);
  const a = it.next();
  const b = it.next();
  const c = it.next();
  await Promise.resolve();
  assert.equal(source.waiting, 1, "the second call waits for the first");
  source.feed(1);
  await a;
  await new Promise((resolve) => setTimeout(resolve, 0));
  source.feed(2);
  await b;
  await new Promise((resolve) => setTimeout(resolve, 0));
  source.feed(new ChannelClosedError("Cannot receive on channel: closed"));
  assert.deepEqual(await a, { value: 1, done: false });
  assert.deepEqual(await b, { value: 2, done: false });
  assert.deepEqual(await c, { value: undefined, done: true });
  assert.deepEqual(await it.next(), { value: undefined, done: true });
});

test("untilClosed: values that are there come without a recv(); CLOSED_NOW ends it", async () => {
  const values: (number | typeof CLOSED_NOW)[] = [1, 2, CLOSED_NOW];
  let recvs = 0;
  const it = untilClosed<number>(() => {
    recvs++;
    return Promise.resolve(0);
  }, () => values.shift()!);
  const seen: number[] = [];
  for await (const value of it) seen.push(value);
  assert.deepEqual(seen, [1, 2]);
  assert.equal(recvs, 0);
  assert.deepEqual(await it.next(), { value: undefined, done: true });
});

test("untilClosed: an error other than the end rejects once and ends the iteration", async () => {
  const source = fed<number>();
  const it = untilClosed(source.recv);
  const first = it.next();
  source.feed(new TypeError("boom"));
  await assert.rejects(first, TypeError);
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  assert.equal(source.waiting, 0, "no recv() after the error");

  const throwing = untilClosed<number>(() => Promise.resolve(0), () => {
    throw new RangeError("sync");
  });
  await assert.rejects(throwing.next(), RangeError);
  assert.deepEqual(await throwing.next(), { value: undefined, done: true });
});

test("untilClosed: return() waits for a pending call, then ends it; throw() rejects and ends it", async () => {
  const source = fed<number>();
  const it = untilClosed(source.recv);
  const pending = it.next();
  const returned = it.return(7);
  let settled = false;
  returned.then(() => settled = true);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(settled, false, "return() waits for the pending next()");
  source.feed(5);
  assert.deepEqual(await pending, { value: 5, done: false });
  assert.deepEqual(await returned, { value: 7, done: true });
  assert.deepEqual(await it.next(), { value: undefined, done: true });

  const other = untilClosed(fed<number>().recv);
  await assert.rejects(other.throw(new SyntaxError("stop")), SyntaxError);
  assert.deepEqual(await other.next(), { value: undefined, done: true });
  assert.equal(other[Symbol.asyncIterator](), other);
  const disposed = untilClosed(fed<number>().recv);
  await disposed[Symbol.asyncDispose]();
  assert.deepEqual(await disposed.next(), { value: undefined, done: true });
});

test("for await over a receiver: next() calls made together get the messages in order, then the end", async () => {
  const [tx, rx] = channel<number>();
  const it = rx[Symbol.asyncIterator]();
  const calls = [it.next(), it.next(), it.next(), it.next()];
  for (const n of [1, 2, 3]) await tx.send(n);
  tx.close();
  assert.deepEqual(await Promise.all(calls), [
    { value: 1, done: false },
    { value: 2, done: false },
    { value: 3, done: false },
    { value: undefined, done: true },
  ]);
  rx.close();
});

test("for await over a receiver: the iterator reads as an AsyncGenerator, as the generator it replaced did", () => {
  const [tx, rx] = channel<number>();
  const it = rx[Symbol.asyncIterator]();
  assert.equal(Object.prototype.toString.call(it), "[object AsyncGenerator]");
  assert.match(Deno.inspect(it), /\[AsyncGenerator\]/);
  tx.close();
  rx.close();
});

test("untilClosed: once a call that waited has settled, the next call asks at once (no chain behind it)", async () => {
  let asked = 0;
  const it = untilClosed<number>(
    () => Promise.resolve(0),
    () => ++asked === 1 ? Promise.resolve(1) : asked,
  );
  assert.deepEqual(await it.next(), { value: 1, done: false });
  const pending = it.next();
  assert.equal(asked, 2, "the second call asked before any await");
  assert.deepEqual(await pending, { value: 2, done: false });
  for (let k = 3; k <= 5; k++) {
    const next = it.next();
    assert.equal(asked, k);
    assert.deepEqual(await next, { value: k, done: false });
  }
});

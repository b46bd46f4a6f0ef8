/**
 * The parser of what arrives on a sender's connection, which is never
 * trusted: {@linkcode FrameParser.check} takes a frame's header and shape
 * apart before the receiver acts on it, and {@linkcode FrameParser.message}
 * decodes a message frame (inline, in a memfd, or a batch record) with the
 * fds that came with it, closing them on any failure. Every failure is
 * `Deno.errors.InvalidData`.
 *
 * @module
 */

import { invalid, overMaxMessage } from "../_channel_error.ts";
import { MSG } from "../ffi/layout.ts";
import { closeAll } from "../_scm.ts";
import {
  checkBatch,
  FRAME,
  getU32,
  HEADER,
  INLINE_MAX,
  memfdSize,
  preadAll,
  seqpacketProblem,
  VERSION,
} from "../_channel_wire.ts";
import {
  type BlobSpec,
  checkHeadSize,
  decode,
  readBlobTable,
} from "./_codec_decode.ts";
import { type DecodeLimits, overLimit } from "./_codec_limits.ts";
import { MAX_CAPACITY, MODE_BYTES, notSeqpacket } from "./_connection.ts";
import { type ChannelEnds, ENDPOINT_BYTES, Incoming } from "./_marshal.ts";

/** Parses the frames of the receivers whose ends `ends` makes. */
export class FrameParser {
  #ends: ChannelEnds;
  /**
   * The hooks of a message without fds: an endpoint in it fails, but for a
   * receiver without connections (one serves every such message, reset
   * before each).
   */
  #noFds: Incoming | undefined;
  /**
   * The size of the last message frame decoded, its memfd's included: what
   * a receive loop's slice counts (see `_turn.ts`).
   */
  lastBytes = 0;

  constructor(ends: ChannelEnds) {
    this.#ends = ends;
  }

  /**
   * Checks a frame read into `buf`: not cut short, a header of this
   * version, and for a control frame (a new sender, a hello, a batch) its
   * shape, fds and fields. `first` says whether it is the connection's
   * first frame. Returns the frame type; the fds stay the caller's.
   */
  check(
    buf: Uint8Array,
    bytes: number,
    flags: number,
    fds: number[],
    first: boolean,
  ): number {
    if ((flags & MSG.TRUNC) !== 0) {
      throw invalid(`frame larger than ${INLINE_MAX} bytes`);
    }
    if (bytes < HEADER) throw invalid("bad frame header");
    if (buf[1] !== VERSION) {
      throw invalid(
        `wire version ${
          buf[1]
        }, where this end speaks ${VERSION} (both ends need the same version of this module)`,
      );
    }
    const a = getU32(buf, 4);
    const type = buf[0];
    if (type === FRAME.ADD_PEER) {
      if (fds.length !== 1 || bytes !== HEADER) {
        throw invalid("a new sender must come with one fd");
      }
      if (a < 1 || a > MAX_CAPACITY) throw invalid("bad capacity");
      if (seqpacketProblem(fds[0]) !== undefined) {
        throw notSeqpacket(
          `a new sender's connection (fd ${fds[0]} here)`,
          fds[0],
        );
      }
    } else if (type === FRAME.HELLO) {
      if (fds.length !== 0 || bytes !== HEADER) {
        throw invalid("a hello carries nothing but its header");
      }
      if (!first) throw invalid("a hello after the first frame");
      if (a < 1 || a > MAX_CAPACITY) throw invalid("bad capacity");
    } else if (type === FRAME.BATCH) {
      if (fds.length !== 0) throw invalid("a batch carries no fds");
      checkBatch(buf, HEADER, bytes, a);
    }
    return type;
  }

  /**
   * Decodes the message frame in `buf[start, end)`, with the fds that came
   * with it (closed on failure): a message (its memfd, if any, no larger
   * than `maxMessage`), decoded under `limits`, or bytes.
   */
  message(
    buf: Uint8Array,
    start: number,
    end: number,
    fds: number[],
    maxMessage: number,
    limits: Readonly<Required<DecodeLimits>>,
    mode?: number,
  ): unknown {
    const type = buf[start];
    this.lastBytes = end - start;
    // A receiver that knows its channel's mode takes only that kind of
    // frame: values on a bytesChannel() (or bytes on a channel()) come from
    // no sender of this channel.
    if (mode !== undefined) {
      const bytes = type === FRAME.BYTES || type === FRAME.BYTES_MEMFD;
      const values = type === FRAME.MESSAGE || type === FRAME.MESSAGE_MEMFD;
      if ((bytes && mode !== MODE_BYTES) || (values && mode === MODE_BYTES)) {
        closeAll(fds);
        throw invalid(
          `a ${bytes ? "bytes" : "value"} frame on a ${
            mode === MODE_BYTES ? "bytes" : "value"
          } channel`,
        );
      }
    }
    const a = getU32(buf, start + 4);
    const headLength = getU32(buf, start + 8);
    const treeLength = getU32(buf, start + 12);
    const size = end - start;
    // A large message's memfd is measured against the bound when it is
    // opened; one in the frame itself, here.
    if (
      (type === FRAME.BYTES || type === FRAME.MESSAGE) &&
      size - HEADER > maxMessage
    ) {
      closeAll(fds);
      throw overMaxMessage(size - HEADER, maxMessage);
    }
    if (type === FRAME.BYTES) {
      closeAll(fds);
      if (fds.length !== 0) throw invalid("a bytes frame carries no fds");
      return buf.slice(start + HEADER, end);
    }
    if (type === FRAME.BYTES_MEMFD) {
      try {
        if (fds.length !== 1 || size !== HEADER) {
          throw invalid("a large bytes frame carries exactly its memfd");
        }
        const length = memfdSize(fds[0], maxMessage);
        this.lastBytes = length;
        const out = new Uint8Array(length);
        preadAll(fds[0], out, 0);
        return out;
      } finally {
        closeAll(fds);
      }
    }
    if (type !== FRAME.MESSAGE && type !== FRAME.MESSAGE_MEMFD) {
      closeAll(fds);
      throw invalid(`unexpected frame type ${type}`);
    }
    if (type === FRAME.MESSAGE_MEMFD && fds.length === 0) {
      throw invalid("a large message frame carries its memfd");
    }
    const memfd = type === FRAME.MESSAGE_MEMFD ? fds.pop() : undefined;
    const incoming = fds.length === 0
      ? (this.#noFds ??= new Incoming([], this.#ends)).reset()
      : new Incoming(fds, this.#ends);
    try {
      if (fds.length !== a) {
        throw invalid(`frame says ${a} fds, ${fds.length} came`);
      }
      if (fds.length > limits.maxEndpoints) {
        throw overLimit(
          "maxEndpoints",
          limits.maxEndpoints,
          `it carries ${fds.length} endpoints`,
        );
      }
      // The head is head[headAt, headAt + headLength): the frame's own
      // bytes, or read from the memfd.
      let head: Uint8Array;
      let headAt: number;
      let blobsAt: number;
      let blobBytes: number;
      let source: Uint8Array | number;
      if (memfd === undefined) {
        if (HEADER + headLength > size) throw invalid("head past the frame");
        head = buf;
        headAt = start + HEADER;
        blobsAt = headAt + headLength;
        blobBytes = end - blobsAt;
        source = buf;
      } else {
        if (size !== HEADER) throw invalid("a large frame carries no data");
        const total = memfdSize(memfd, maxMessage);
        this.lastBytes = total;
        if (headLength > total) throw invalid("head past the memfd");
        // The blob table follows the tree: at least one byte.
        if (treeLength >= headLength) throw invalid("tree length out of range");
        // Sizes first, from the table's first bytes: a bogus head is refused
        // before it is allocated and read.
        const tableStart = new Uint8Array(Math.min(8, headLength - treeLength));
        preadAll(memfd, tableStart, treeLength);
        checkHeadSize(
          treeLength,
          headLength - treeLength,
          tableStart,
          limits,
          ENDPOINT_BYTES,
        );
        head = new Uint8Array(headLength);
        preadAll(memfd, head, 0);
        headAt = 0;
        blobsAt = headLength;
        blobBytes = total - headLength;
        source = memfd;
      }
      const specs = readBlobTable(
        head,
        treeLength,
        blobBytes,
        limits,
        headAt,
        headAt + headLength,
      );
      const value = decode(
        head,
        treeLength,
        specs,
        specs.length === 0 ? noBlob : blobReader(specs, blobsAt, source),
        incoming,
        limits,
        headAt,
      );
      if (fds.length > 0 && incoming.used.some(unused)) {
        throw invalid("fds that no endpoint in the value names");
      }
      return value;
    } catch (error) {
      incoming.fail();
      if (error instanceof Deno.errors.InvalidData) throw error;
      throw invalid((error as Error)?.message ?? String(error));
    } finally {
      if (memfd !== undefined) closeAll([memfd]);
    }
  }
}

/** What a decode asks for a blob when the message has none. */
function noBlob(index: number): ArrayBuffer {
  throw invalid(`blob ${index} does not exist`);
}

function unused(used: boolean): boolean {
  return !used;
}

/**
 * Reads blob `index` of a message whose blobs start at `blobsAt` of
 * `source` (the frame's bytes, or its memfd), one after another.
 */
function blobReader(
  specs: readonly BlobSpec[],
  blobsAt: number,
  source: Uint8Array | number,
): (index: number) => ArrayBuffer {
  const offsets: number[] = [];
  let at = blobsAt;
  for (const spec of specs) {
    offsets.push(at);
    at += spec.length;
  }
  return (index: number): ArrayBuffer => {
    const { length } = specs[index];
    if (typeof source === "number") {
      const out = new Uint8Array(length);
      preadAll(source, out, offsets[index]);
      return out.buffer;
    }
    return source.slice(offsets[index], offsets[index] + length).buffer;
  };
}

/**
 * Frames being sent: one encoded message ({@linkcode valueFrame} or
 * {@linkcode bytesFrame}), inline or in a sealed memfd, with what must
 * happen once it is sent or given up.
 *
 * @module
 */

import { libc } from "../ffi/libc.ts";
import {
  FRAME,
  HEADER,
  header,
  INLINE_MAX,
  sendHeaded,
  writeMemfd,
} from "../_channel_wire.ts";
import { encode } from "./_codec_encode.ts";
import { Outgoing } from "./_marshal.ts";

/** One encoded message and what must happen once it is sent or given up. */
export interface Frame {
  /** The header's type and fields. */
  type: number;
  a: number;
  b: number;
  c: number;
  /** What follows the header: head and blobs (none for a memfd frame). */
  body: Uint8Array[];
  /** How many leading parts of `body` are this frame's own copies. */
  owned: number;
  /**
   * Bytes of an inline frame, header included; -1 for a frame whose body
   * is in a memfd (it travels alone).
   */
  size: number;
  fds: number[];
  /** Runs once the frame is in the socket. */
  sent(): void;
  /** Runs when the frame will never be sent. */
  abandon(): void;
}

/** Whether a frame may travel in a batch: inline, without fds. */
export function batchable(frame: Frame): boolean {
  return frame.size >= 0 && frame.fds.length === 0;
}

/**
 * Sends the frame alone on `fd`, as `sendFrame()` does.
 *
 * @returns `true` when sent, `false` when the socket is full.
 */
export function sendAlone(fd: number, frame: Frame): boolean {
  return sendHeaded(
    fd,
    frame.type,
    frame.a,
    frame.b,
    frame.c,
    frame.body,
    frame.fds,
  );
}

/** The frame as parts to send: header, then body. */
export function partsOf(frame: Frame): Uint8Array[] {
  const head = header(frame.type, frame.a, frame.b, frame.c);
  return frame.body.length === 0 ? [head] : [head, ...frame.body];
}

/** What a plain frame does once sent or given up. */
function nothing(): void {}

/**
 * Encodes `value` into a frame; the endpoints in it travel as fds, and
 * those in `transfer` close once it is sent.
 */
export function valueFrame(
  value: unknown,
  transfer: readonly { close(): void }[] | undefined,
): Frame {
  const outgoing = new Outgoing();
  let encoded;
  try {
    encoded = encode(value, outgoing);
  } catch (error) {
    outgoing.abandon();
    throw error;
  }
  const { head, treeLength, blobs, blobBytes } = encoded;
  const total = HEADER + head.byteLength + blobBytes;
  if (total <= INLINE_MAX) {
    const plain = outgoing.fds.length === 0 && outgoing.clones.length === 0 &&
      outgoing.moving.length === 0 && (transfer?.length ?? 0) === 0;
    return {
      type: FRAME.MESSAGE,
      a: outgoing.fds.length,
      b: head.byteLength,
      c: treeLength,
      body: blobs.length === 0 ? [head] : [head, ...blobs],
      // The head is a view of the encoder's writer, copied if the frame
      // has to wait (the next encode reuses the writer).
      owned: 0,
      size: total,
      fds: outgoing.fds,
      sent: plain ? nothing : () => outgoing.finish(transfer),
      abandon: plain ? nothing : () => outgoing.abandon(),
    };
  }
  let memfd: number;
  try {
    memfd = writeMemfd([head, ...blobs]);
  } catch (error) {
    outgoing.abandon();
    throw error;
  }
  return {
    type: FRAME.MESSAGE_MEMFD,
    a: outgoing.fds.length,
    b: head.byteLength,
    c: treeLength,
    body: [],
    owned: 0,
    size: -1,
    fds: [...outgoing.fds, memfd],
    sent: () => {
      libc().close(memfd);
      outgoing.finish(transfer);
    },
    abandon: () => {
      libc().close(memfd);
      outgoing.abandon();
    },
  };
}

/** A frame of a bytes channel: the caller's bytes, unencoded. */
export function bytesFrame(bytes: Uint8Array): Frame {
  if (!(bytes instanceof Uint8Array)) {
    throw new TypeError(
      "Cannot send on bytes channel: the message must be a Uint8Array",
    );
  }
  if (HEADER + bytes.byteLength <= INLINE_MAX) {
    return {
      type: FRAME.BYTES,
      a: 0,
      b: 0,
      c: 0,
      body: [bytes],
      owned: 0,
      size: HEADER + bytes.byteLength,
      fds: [],
      sent: nothing,
      abandon: nothing,
    };
  }
  const memfd = writeMemfd([bytes]);
  const close = () => libc().close(memfd);
  return {
    type: FRAME.BYTES_MEMFD,
    a: 0,
    b: 0,
    c: 0,
    body: [],
    owned: 0,
    size: -1,
    fds: [memfd],
    sent: close,
    abandon: close,
  };
}

/**
 * Splits a byte stream into text lines, for the examples.
 *
 * @module
 */

/** Yields each line of `stream` (without its newline) until EOF. */
export async function* lines(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<string> {
  let rest = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    rest += text;
    let at: number;
    while ((at = rest.indexOf("\n")) !== -1) {
      yield rest.slice(0, at);
      rest = rest.slice(at + 1);
    }
  }
  if (rest !== "") yield rest;
}

/** Client-chosen chain ids: UUIDv7 (time-ordered, which the broker finds fastest). */
import { randomBytes } from "node:crypto";

let lastMs = 0;
let counter = 0;

/** A new UUIDv7 in its hyphenated form; monotonic within this process. */
export function newChainId(): string {
  let ms = Date.now();
  if (ms <= lastMs) {
    // Same millisecond (or the clock went back): keep ids increasing by
    // counting in the 12 bits of rand_a.
    ms = lastMs;
    counter += 1;
    if (counter > 0xfff) {
      ms += 1;
      counter = 0;
    }
  } else {
    counter = 0;
  }
  lastMs = ms;
  const b = randomBytes(16);
  b.writeUIntBE(ms, 0, 6);
  b[6] = 0x70 | ((counter >> 8) & 0x0f);
  b[7] = counter & 0xff;
  b[8] = 0x80 | ((b[8] ?? 0) & 0x3f);
  const hex = b.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

import { randomBytes, randomFillSync } from 'node:crypto';

/** Bytes fetched from the CSPRNG at a time: a login takes 22 of them (cancel key, nonce). */
const BATCH = 4096;
const batch = Buffer.alloc(BATCH);
let used = BATCH;

/**
 * `size` bytes from Node's CSPRNG, as `randomBytes(size)` gives, each handed out once.
 * They are fetched 4 KiB at a time because a login's two small `randomBytes` calls were 9%
 * of its user time in a `-C` profile: at a few hundred logins a second OpenSSL's generator
 * is never warm, and one call costs as much for 4 bytes as for 4 KiB. A forked worker is
 * a process of its own and starts with an empty batch.
 */
export function secureRandomBytes(size: number): Buffer {
  if (size > BATCH / 4) return randomBytes(size);
  if (used + size > BATCH) {
    randomFillSync(batch);
    used = 0;
  }
  const out = Buffer.from(batch.subarray(used, used + size));
  // What was handed out is not left readable in the batch.
  batch.fill(0, used, used + size);
  used += size;
  return out;
}

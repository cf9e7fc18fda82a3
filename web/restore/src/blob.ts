// Stored blobs, as in src/strongroom/blobs.py: nonce || AES-256-GCM(body), AAD = blob ID.
//
// body = flag(1) || pad_len(u32 LE) || payload || pad_len zero bytes (flags 2 raw, 3 zstd), or,
// written by older versions, flag(1) || payload (flags 0 raw, 1 zstd). Every check of
// BlobCodec.decode is made here too, with the same words.

import { decompress as zstdDecompress } from "fzstd";
import { unseal } from "./crypto";
import type { RepoKeys } from "./keys";
import { IntegrityError, equalBytes, toHex } from "./util";

export const MAX_BLOB_SIZE = 16 * 1024 * 1024;
const HEADER_SIZE = 5;
const ZSTD_BLOCK_MAX = 128 * 1024;

export function blobName(id: Uint8Array): string {
  return `blob ${toHex(id).slice(0, 16)}`;
}

export async function decodeBlob(keys: RepoKeys, id: Uint8Array, stored: Uint8Array): Promise<Uint8Array> {
  const what = blobName(id);
  const body = await unseal(keys.dataKey, stored, id, what);
  if (!body.length) throw new IntegrityError(`${what} is empty`);
  const flag = body[0];
  let plain: Uint8Array;
  if (flag === 2 || flag === 3) {
    if (body.length < HEADER_SIZE) throw new IntegrityError(`${what} has a truncated padding header`);
    const pad = new DataView(body.buffer, body.byteOffset, body.byteLength).getUint32(1, true);
    const end = body.length - pad;
    if (end < HEADER_SIZE) throw new IntegrityError(`${what} declares more padding than it holds`);
    for (let i = end; i < body.length; i++) {
      if (body[i] !== 0) throw new IntegrityError(`${what} has malformed padding`);
    }
    const payload = body.subarray(HEADER_SIZE, end);
    plain = flag === 2 ? payload : decompress(payload, what);
  } else if (flag === 0) {
    plain = body.subarray(1);
  } else if (flag === 1) {
    plain = decompress(body.subarray(1), what);
  } else {
    throw new IntegrityError(`${what} has unknown encoding ${flag}`);
  }
  if (!equalBytes(keys.hash(plain), id)) throw new IntegrityError(`${what} does not match its ID`);
  return plain;
}

interface FrameInfo {
  contentSize: number | null; // declared by the frame header, if it does
  bound: number; // the most its blocks can decompress to
}

/** Walk one zstd frame's header and block headers without decompressing: the frame must be
 * the whole payload (nothing after it, as zstandard's allow_extra_data=False), use no
 * dictionary, and declare (or bound) no more than 16 MiB before anything is allocated. */
export function checkFrame(data: Uint8Array, what: string): FrameInfo {
  const bad = () => new IntegrityError(`${what} does not decompress`);
  if (data.length < 6 || data[0] !== 0x28 || data[1] !== 0xb5 || data[2] !== 0x2f || data[3] !== 0xfd) {
    throw bad();
  }
  const fhd = data[4];
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictFlag = fhd & 3;
  if (fhd & 8) throw bad(); // reserved bit
  let at = 5;
  let windowSize = 0;
  if (!singleSegment) {
    const wd = data[at++];
    const base = 2 ** (10 + (wd >> 3));
    windowSize = base + (base / 8) * (wd & 7);
  }
  const dictSize = [0, 1, 2, 4][dictFlag];
  for (let i = 0; i < dictSize; i++) if (data[at + i]) throw bad(); // a dictionary ID: none is used
  at += dictSize;
  const fcsSize = [singleSegment, 2, 4, 8][fcsFlag];
  let contentSize: number | null = null;
  if (fcsSize) {
    if (at + fcsSize > data.length) throw bad();
    let v = 0;
    for (let i = fcsSize - 1; i >= 0; i--) v = v * 256 + data[at + i];
    contentSize = fcsSize === 2 ? v + 256 : v;
    at += fcsSize;
  }
  if (contentSize !== null && contentSize > MAX_BLOB_SIZE) {
    throw new IntegrityError(`${what} declares an oversized content`);
  }
  if (contentSize === null && windowSize > MAX_BLOB_SIZE) throw bad();
  let bound = 0;
  for (;;) {
    if (at + 3 > data.length) throw bad();
    const header = data[at] | (data[at + 1] << 8) | (data[at + 2] << 16);
    at += 3;
    const last = header & 1;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3) throw bad();
    if (type === 1) {
      at += 1; // RLE: one byte, repeated `size` times
      bound += size;
    } else {
      at += size;
      bound += type === 0 ? size : ZSTD_BLOCK_MAX;
    }
    if (at > data.length) throw bad();
    if (last) break;
  }
  at += checksum * 4;
  if (at !== data.length) throw bad();
  return { contentSize, bound };
}

export function decompress(frame: Uint8Array, what: string): Uint8Array {
  const info = checkFrame(frame, what);
  if (info.contentSize === null && info.bound > MAX_BLOB_SIZE + ZSTD_BLOCK_MAX) {
    throw new IntegrityError(`${what} is larger than allowed`);
  }
  let plain: Uint8Array;
  try {
    plain = zstdDecompress(frame);
  } catch {
    throw new IntegrityError(`${what} does not decompress`);
  }
  if (info.contentSize !== null && plain.length !== info.contentSize) {
    throw new IntegrityError(`${what} does not decompress`);
  }
  if (plain.length > MAX_BLOB_SIZE) throw new IntegrityError(`${what} is larger than allowed`);
  return plain;
}

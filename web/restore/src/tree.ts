// Tree blobs, as in src/strongroom/tree.py: canonical JSON {"entries":[…],"v":1}, or "v":2 when
// an entry has holes (a sparse file). Every check of decode_tree() is made here too, with the
// same words.

import { IntegrityError } from "./util";

export const TYPES = new Set(["file", "dir", "symlink", "fifo", "socket", "chardev", "blockdev"]);
const VERSIONS = new Set([1, 2]);
const XATTR_NAME_MAX = 255;
const XATTR_SIZE_MAX = 65536;

export interface ContentRef {
  id: string; // blob ID, lowercase hex
  offset: number;
  length: number;
}

export interface Entry {
  name: string; // may hold lone surrogates \udc80-\udcff: bytes that were not UTF-8
  type: string;
  mode: number;
  mtimeNs: number; // a float: nanoseconds past 2**53 lose their last digits (display only)
  size: number;
  content: ContentRef[];
  subtree: string | null;
  target: string | null;
  hardlink: string | null;
  /** A sparse file's holes, [offset, length], sorted and apart: `content` holds only the data
   * between them, back to back; `size` is the whole file's. */
  holes: [number, number][];
}

function int(value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new IntegrityError("tree has a malformed number");
  }
  return value;
}

/** Sizes and offsets must also be exact in a JavaScript number. */
function exact(value: unknown): number {
  const v = int(value);
  if (!Number.isSafeInteger(v)) throw new IntegrityError("tree has a malformed number");
  return v;
}

function str(value: unknown): string {
  if (typeof value !== "string") throw new IntegrityError("tree has a malformed string");
  return value;
}

function list(value: unknown): unknown[] {
  if (!Array.isArray(value)) throw new IntegrityError("tree has a malformed list");
  return value;
}

function blobId(value: unknown): string {
  if (typeof value !== "string" || value.length !== 64 || !/^[0-9a-fA-F]*$/.test(value)) {
    throw new IntegrityError("tree has a malformed blob ID");
  }
  return value.toLowerCase();
}

function contentRef(raw: unknown): ContentRef {
  if (!Array.isArray(raw) || raw.length !== 3) {
    throw new IntegrityError("tree has a malformed content reference");
  }
  const [id, offset, length] = raw;
  const o = exact(offset);
  const n = exact(length);
  if (o < 0 || n < 0) throw new IntegrityError("tree has a malformed content reference");
  return { id: blobId(id), offset: o, length: n };
}

function has(obj: Record<string, unknown>, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(obj, key);
}

function entry(raw: unknown): Entry {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new IntegrityError("tree entry is not an object");
  }
  const o = raw as Record<string, unknown>;
  for (const key of ["name", "type"]) {
    if (!has(o, key)) throw new IntegrityError(`tree entry lacks '${key}'`);
  }
  const e: Entry = {
    name: str(o.name),
    type: str(o.type),
    mode: int(has(o, "mode") ? o.mode : 0),
    mtimeNs: int(has(o, "mtime_ns") ? o.mtime_ns : 0),
    size: exact(has(o, "size") ? o.size : 0),
    content: list(has(o, "content") ? o.content : []).map(contentRef),
    subtree: has(o, "subtree") ? blobId(o.subtree) : null,
    target: has(o, "target") ? str(o.target) : null,
    hardlink: has(o, "hardlink") ? str(o.hardlink) : null,
    holes: [],
  };
  for (const key of ["ctime_ns", "inode", "uid", "gid", "device", "flags"]) {
    if (has(o, key)) int(o[key]);
  }
  if (has(o, "xattrs") && !validXattrs(o.xattrs)) {
    throw new IntegrityError("tree entry has malformed extended attributes");
  }
  if (has(o, "holes")) {
    e.holes = list(o.holes).map(extent);
    if (e.type !== "file" || !validHoles(e.holes, e.size)) throw new IntegrityError("tree entry has malformed holes");
  }
  if (!TYPES.has(e.type)) throw new IntegrityError("tree entry has an unknown type");
  if (e.type === "dir" && e.subtree === null) throw new IntegrityError("directory entry has no subtree");
  if (e.type === "symlink" && e.target === null) throw new IntegrityError("symlink entry has no target");
  return e;
}

function extent(raw: unknown): [number, number] {
  if (!Array.isArray(raw) || raw.length !== 2) throw new IntegrityError("tree entry has malformed holes");
  return [exact(raw[0]), exact(raw[1])];
}

/** sparse.valid(): sorted, not touching, not empty, inside the file. */
function validHoles(holes: [number, number][], size: number): boolean {
  let end = -1;
  for (const [start, length] of holes) {
    if (start <= end || length <= 0 || start + length > size) return false;
    end = start + length;
  }
  return true;
}

/** A name's length in the file system's bytes (fsencode: a lone \udc80-\udcff is one byte). */
function fsLength(name: string): number {
  let n = 0;
  for (const ch of name) {
    const c = ch.codePointAt(0) as number;
    n += c >= 0xdc80 && c <= 0xdcff ? 1 : c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
  }
  return n;
}

/** fsattrs.decode_pairs() would accept it: [[name, base64 value], …]. */
function validXattrs(raw: unknown): boolean {
  if (!Array.isArray(raw)) return false;
  for (const pair of raw) {
    if (!Array.isArray(pair) || pair.length !== 2) return false;
    const [name, value] = pair;
    if (typeof name !== "string" || typeof value !== "string") return false;
    const n = fsLength(name);
    if (n < 1 || n > XATTR_NAME_MAX || name.includes("\0")) return false;
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(value) || value.length % 4) return false;
    const bytes = (value.length / 4) * 3 - (value.endsWith("==") ? 2 : value.endsWith("=") ? 1 : 0);
    if (bytes > XATTR_SIZE_MAX) return false;
  }
  return true;
}

export function decodeTree(raw: Uint8Array): Entry[] {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch {
    throw new IntegrityError("tree blob is not valid JSON");
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc) || !VERSIONS.has((doc as { v?: unknown }).v as number)) {
    throw new IntegrityError("tree blob has an unsupported version");
  }
  return list((doc as { entries?: unknown }).entries).map(entry);
}

/** A name safe to write as one component of a path (a zip entry, a download's file name):
 * one plain component, as restore accepts (no "/", no NUL, not "." or "..", not empty). */
export function isPlainName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !name.includes("/") && !name.includes("\0");
}

/** How a name is shown and written: bytes that were not UTF-8 become U+FFFD. */
export function displayName(name: string): string {
  return name.replace(/[\ud800-\udfff]/g, (c, i: number, s: string) => {
    const code = c.charCodeAt(0);
    if (code < 0xdc00 && i + 1 < s.length) {
      const next = s.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) return c; // a real pair: kept
    }
    if (code >= 0xdc00 && i > 0) {
      const prev = s.charCodeAt(i - 1);
      if (prev >= 0xd800 && prev < 0xdc00) return c;
    }
    return "\ufffd";
  });
}

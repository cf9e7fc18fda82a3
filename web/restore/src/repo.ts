// Reading a snapshot in the browser: verified blobs, trees, files as streams, folder walks.

import type { Api } from "./api";
import { MAX_IDS } from "./api";
import { decodeBlob } from "./blob";
import type { RepoKeys } from "./keys";
import { type Snapshot, openSnapshot } from "./snapshot";
import { type ContentRef, type Entry, decodeTree } from "./tree";
import { IntegrityError, errorText, fromHex, toHex } from "./util";

/** A batch of blobs asked for at once while a file streams: memory stays bounded by about
 * AHEAD + 1 batches (one being written, the next ones being fetched), whatever the file's size. */
const BATCH_BYTES = 8 * 1024 * 1024;
const BATCH_BLOBS = 16;
const CACHE_BYTES = 32 * 1024 * 1024; // decoded blobs kept for small files (bundles)
const CACHE_BLOB_MAX = 2 * 1024 * 1024;
const TREE_CACHE = 4096;
const DECODING = 4;
const AHEAD = 2;
const ZEROS = new Uint8Array(1024 * 1024);

export interface SnapshotItem {
  snapshot: Snapshot | null; // null: it did not open (the error says why)
  id: string;
  timeNs: number;
  receivedNs: number;
  protected: boolean;
  error: string | null;
}

export interface Found {
  path: string[]; // names from the snapshot's root
  entry: Entry;
}

class Lru<V> {
  private map = new Map<string, V>();
  private used = 0;
  constructor(
    private limit: number,
    private cost: (v: V) => number,
  ) {}
  get(key: string): V | undefined {
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }
  set(key: string, v: V): void {
    if (this.map.has(key)) return;
    this.map.set(key, v);
    this.used += this.cost(v);
    for (const [k, old] of this.map) {
      if (this.used <= this.limit) break;
      this.map.delete(k);
      this.used -= this.cost(old);
    }
  }
}

export class Reader {
  private trees = new Lru<Entry[]>(TREE_CACHE, () => 1);
  private cache = new Lru<Uint8Array>(CACHE_BYTES, (b) => b.length);

  constructor(
    private api: Api,
    private keys: RepoKeys,
  ) {}

  async snapshots(): Promise<SnapshotItem[]> {
    const rows = await this.api.snapshots();
    const seen = new Set<string>();
    const out: SnapshotItem[] = [];
    for (const row of rows) {
      const item: SnapshotItem = {
        snapshot: null,
        id: row.id,
        timeNs: row.timeNs,
        receivedNs: row.receivedNs,
        protected: row.protected,
        error: null,
      };
      try {
        // A row listed twice is refused: a replayed row must not open as another snapshot.
        if (seen.has(row.id)) throw new IntegrityError(`snapshot ${row.id.slice(0, 8)} is listed twice`);
        seen.add(row.id);
        item.snapshot = await openSnapshot(this.keys, row.id, row.record);
        item.timeNs = item.snapshot.timeNs;
      } catch (err) {
        item.error = errorText(err);
      }
      out.push(item);
    }
    return out.sort((a, b) => b.timeNs - a.timeNs || (a.id < b.id ? 1 : -1));
  }

  /** Verified plaintexts of the asked blobs, as they arrive. Each must arrive exactly once:
   * one missing, repeated or not asked for is an error, never a hole in a file. */
  async *blobs(ids: string[], signal?: AbortSignal): AsyncGenerator<[string, Uint8Array]> {
    const want = new Set(ids);
    // Up to DECODING blobs are decrypted at once (WebCrypto works off the page's thread) while
    // the next ones arrive and earlier ones are hashed; they are yielded in arrival order.
    const decoding: Promise<[string, Uint8Array]>[] = [];
    for (let i = 0; i < ids.length; i += MAX_IDS) {
      const part = ids.slice(i, i + MAX_IDS);
      for await (const [id, stored] of this.api.readBlobs(part.map(fromHex), signal)) {
        const hex = toHex(id);
        if (!want.delete(hex)) {
          throw new IntegrityError(`the server sent blob ${hex.slice(0, 16)}, which was not asked for (or twice)`);
        }
        const decoded = decodeBlob(this.keys, id, stored).then((plain): [string, Uint8Array] => [hex, plain]);
        decoded.catch(() => undefined); // awaited below; not an unhandled rejection meanwhile
        decoding.push(decoded);
        if (decoding.length >= DECODING) yield await (decoding.shift() as Promise<[string, Uint8Array]>);
      }
    }
    while (decoding.length) yield await (decoding.shift() as Promise<[string, Uint8Array]>);
    if (want.size) {
      throw new IntegrityError(`${want.size} blob(s) were not received from the server`);
    }
  }

  async blob(id: string, signal?: AbortSignal): Promise<Uint8Array> {
    const cached = this.cache.get(id);
    if (cached) return cached;
    for await (const [, plain] of this.blobs([id], signal)) {
      if (plain.length <= CACHE_BLOB_MAX) this.cache.set(id, plain);
      return plain;
    }
    throw new IntegrityError(`blob ${id.slice(0, 16)} was not received from the server`);
  }

  async tree(id: string, signal?: AbortSignal): Promise<Entry[]> {
    const cached = this.trees.get(id);
    if (cached) return cached;
    let entries: Entry[];
    try {
      entries = decodeTree(await this.blob(id, signal));
    } catch (err) {
      if (err instanceof IntegrityError) throw new IntegrityError(`tree ${id.slice(0, 16)}: ${err.message}`);
      throw err;
    }
    this.trees.set(id, entries);
    return entries;
  }

  /** Many trees in one request (a search reads a folder level at a time). */
  async treeMany(ids: string[], signal?: AbortSignal): Promise<Map<string, Entry[]>> {
    const out = new Map<string, Entry[]>();
    const missing: string[] = [];
    for (const id of ids) {
      const cached = this.trees.get(id);
      if (cached) out.set(id, cached);
      else if (!out.has(id) && !missing.includes(id)) missing.push(id);
    }
    if (missing.length) {
      for await (const [id, plain] of this.blobs(missing, signal)) {
        let entries: Entry[];
        try {
          entries = decodeTree(plain);
        } catch (err) {
          if (err instanceof IntegrityError) throw new IntegrityError(`tree ${id.slice(0, 16)}: ${err.message}`);
          throw err;
        }
        this.trees.set(id, entries);
        out.set(id, entries);
      }
    }
    return out;
  }

  /** The entry at `path` (names from the root), or null if the snapshot has none there. */
  async resolve(snapshot: Snapshot, path: string[], signal?: AbortSignal): Promise<Entry | null> {
    let tree = snapshot.tree;
    let entry: Entry | null = null;
    for (const name of path) {
      if (entry && (entry.type !== "dir" || entry.subtree === null)) return null;
      if (entry) tree = entry.subtree as string;
      entry = (await this.tree(tree, signal)).find((e) => e.name === name) ?? null;
      if (!entry) return null;
    }
    return entry;
  }

  /** Every entry below a folder, a folder before what is in it: level by level, the trees of
   * up to MAX_IDS folders fetched in one request. */
  async *walk(treeId: string, prefix: string[], signal?: AbortSignal): AsyncGenerator<Found> {
    let level: { id: string; path: string[] }[] = [{ id: treeId, path: prefix }];
    while (level.length) {
      const next: typeof level = [];
      for (let i = 0; i < level.length; i += MAX_IDS) {
        const part = level.slice(i, i + MAX_IDS);
        const trees = await this.treeMany(part.map((p) => p.id), signal);
        for (const { id, path } of part) {
          for (const entry of trees.get(id) as Entry[]) {
            if (signal?.aborted) return;
            const full = [...path, entry.name];
            yield { path: full, entry };
            if (entry.type === "dir" && entry.subtree) next.push({ id: entry.subtree, path: full });
          }
        }
      }
      level = next;
    }
  }

  /** A file's content, fetched and verified a batch of blobs at a time, AHEAD batches ahead; a
   * sparse file's holes come out as zeros between its data. */
  fileStream(entry: Entry, what: string, signal?: AbortSignal): ReadableStream<Uint8Array> {
    const stop = new AbortController(); // a cancelled stream stops its reads in flight
    signal?.addEventListener("abort", () => stop.abort(), { once: true });
    const chunks = this.fileChunks(entry, what, stop.signal);
    return new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          const { value, done } = await chunks.next();
          if (done) controller.close();
          else controller.enqueue(value);
        },
        cancel: async () => {
          stop.abort();
          await chunks.return(undefined).catch(() => undefined);
        },
      },
      new CountQueuingStrategy({ highWaterMark: 1 }),
    );
  }

  private async *fileChunks(entry: Entry, what: string, signal: AbortSignal): AsyncGenerator<Uint8Array> {
    const batches = batchRefs(entry.content);
    const small = entry.size < 128 * 1024; // small files share bundles: keep those decoded
    const holes = entry.holes;
    let hole = 0; // the next hole
    let written = 0;
    const load = (refs: ContentRef[]) => {
      const p = this.load(refs, small, signal);
      p.catch(() => undefined); // awaited later; not an unhandled rejection meanwhile
      return p;
    };
    const tooLong = () =>
      new IntegrityError(`${what}: its content adds up to more than its size, ${entry.size} bytes`);
    function* zeros(): Generator<Uint8Array> {
      // The hole that starts here, if one does, as zeros (one shared, never written, buffer).
      if (hole < holes.length && holes[hole][0] === written) {
        let left = holes[hole][1];
        while (left > 0) {
          const n = Math.min(left, ZEROS.length);
          yield ZEROS.subarray(0, n);
          left -= n;
          written += n;
        }
        hole++;
      }
    }
    // Batches asked for ahead of the one being written: the server always has one to send.
    const ahead: Promise<Map<string, Uint8Array>>[] = [];
    let asked = 0;
    for (let i = 0; i < batches.length; i++) {
      while (asked < batches.length && asked <= i + AHEAD) ahead.push(load(batches[asked++]));
      const blobs = await (ahead.shift() as Promise<Map<string, Uint8Array>>);
      for (const ref of batches[i]) {
        const blob = blobs.get(ref.id) as Uint8Array;
        if (ref.offset + ref.length > blob.length) {
          throw new IntegrityError(`${what}: a content reference runs past the end of blob ${ref.id.slice(0, 16)}`);
        }
        let piece = blob.subarray(ref.offset, ref.offset + ref.length);
        while (piece.length) {
          yield* zeros();
          const room = hole < holes.length ? holes[hole][0] - written : Infinity;
          const take = Math.min(piece.length, room);
          if (written + take > entry.size) throw tooLong();
          yield piece.subarray(0, take);
          written += take;
          piece = piece.subarray(take);
        }
      }
    }
    yield* zeros(); // a hole at the end
    if (written !== entry.size || hole !== holes.length) {
      throw new IntegrityError(`${what}: its content adds up to ${written} bytes, but its size is ${entry.size}`);
    }
  }

  private async load(refs: ContentRef[], cache: boolean, signal?: AbortSignal): Promise<Map<string, Uint8Array>> {
    const out = new Map<string, Uint8Array>();
    const missing: string[] = [];
    for (const ref of refs) {
      if (out.has(ref.id)) continue;
      const hit = cache ? this.cache.get(ref.id) : undefined;
      if (hit) out.set(ref.id, hit);
      else if (!missing.includes(ref.id)) missing.push(ref.id);
    }
    if (missing.length) {
      for await (const [id, plain] of this.blobs(missing, signal)) {
        out.set(id, plain);
        if (cache && plain.length <= CACHE_BLOB_MAX) this.cache.set(id, plain);
      }
    }
    return out;
  }
}

function batchRefs(refs: ContentRef[]): ContentRef[][] {
  const batches: ContentRef[][] = [];
  let batch: ContentRef[] = [];
  let ids = new Set<string>();
  let bytes = 0;
  for (const ref of refs) {
    if (batch.length && !ids.has(ref.id) && (ids.size >= BATCH_BLOBS || bytes + ref.length > BATCH_BYTES)) {
      batches.push(batch);
      batch = [];
      ids = new Set();
      bytes = 0;
    }
    batch.push(ref);
    ids.add(ref.id);
    bytes += ref.length;
  }
  if (batch.length) batches.push(batch);
  return batches;
}

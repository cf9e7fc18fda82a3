// Snapshot records, as in src/strongroom/snapshot.py: nonce || AES-256-GCM(json || spaces),
// AAD = "strongroom v1 snapshot " + ID. Every check of open_snapshot() is made here too.

import { unseal } from "./crypto";
import type { RepoKeys } from "./keys";
import { IntegrityError, isHex, utf8 } from "./util";

export interface Snapshot {
  id: string;
  timeNs: number; // the client's clock (a float: display only)
  host: string;
  username: string;
  paths: string[];
  tree: string; // root tree ID, hex
  parent: string | null;
  tags: string[];
  excludes: string[];
  stats: Record<string, number>;
  origin: Record<string, unknown> | null; // set on copies made by `strongroom copy`
}

const REQUIRED = ["id", "time_ns", "host", "username", "paths", "tree"];

export function isSnapshotId(text: unknown): text is string {
  return isHex(text, 32);
}

function strings(value: unknown): string[] {
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) throw new TypeError("list");
  return value;
}

export async function openSnapshot(keys: RepoKeys, snapId: string, record: Uint8Array): Promise<Snapshot> {
  if (!isSnapshotId(snapId)) {
    throw new IntegrityError(`snapshot row '${String(snapId).slice(0, 8)}' has a malformed ID`);
  }
  const what = `snapshot ${snapId.slice(0, 8)}`;
  const raw = await unseal(keys.dataKey, record, utf8(`strongroom v1 snapshot ${snapId}`), what);
  let snap: Snapshot;
  try {
    const obj: unknown = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) throw new TypeError("object");
    const o = obj as Record<string, unknown>;
    if (!("v" in o)) throw new TypeError("no version");
    if (o.v !== 1) throw new IntegrityError(`${what} has an unsupported version`);
    // Fields a later version may add are ignored (the record is authenticated as a whole).
    for (const key of REQUIRED) if (!(key in o)) throw new TypeError(key);
    if (typeof o.time_ns !== "number" || typeof o.host !== "string" || typeof o.username !== "string") {
      throw new TypeError("fields");
    }
    const stats: Record<string, number> = {};
    if (o.stats !== undefined) {
      if (typeof o.stats !== "object" || o.stats === null || Array.isArray(o.stats)) throw new TypeError("stats");
      for (const [k, v] of Object.entries(o.stats)) if (typeof v === "number") stats[k] = v;
    }
    snap = {
      id: String(o.id),
      timeNs: o.time_ns,
      host: o.host,
      username: o.username,
      paths: strings(o.paths),
      tree: o.tree as string,
      parent: typeof o.parent === "string" ? o.parent : null,
      tags: o.tags === undefined ? [] : strings(o.tags),
      excludes: o.excludes === undefined ? [] : strings(o.excludes),
      stats,
      origin: (o.origin ?? null) as Record<string, unknown> | null,
    };
  } catch (err) {
    if (err instanceof IntegrityError) throw err;
    throw new IntegrityError(`${what} is malformed`);
  }
  if (snap.id !== snapId) throw new IntegrityError(`${what} was swapped with another`);
  if (snap.origin !== null && (typeof snap.origin !== "object" || Array.isArray(snap.origin))) {
    throw new IntegrityError(`${what} has a malformed origin`);
  }
  if (!isHex(snap.tree, 64)) throw new IntegrityError(`${what} has a malformed tree ID`);
  return snap;
}

// A folder as a zip, built in the browser as it streams (client-zip: stored entries, Zip64
// when needed). Files are fetched one after another, only when the zip writer reaches them.

import { makeZip, predictLength } from "client-zip";
import type { Reader } from "./repo";
import { type Entry, displayName, isPlainName } from "./tree";

export interface ZipPlan {
  items: { path: string; entry: Entry }[]; // folders end with "/"
  bytes: number; // file contents
  length: bigint; // the zip's exact length
  skipped: string[]; // names no zip should hold, links and special files
}

const MAX_ITEMS = 1_000_000;

/** Walk the folder's trees first (they are small): the zip's length is then known, so the
 * browser shows real progress, and a tree that does not open fails before any download. */
export async function planZip(
  reader: Reader,
  treeId: string,
  top: string,
  signal: AbortSignal,
  progress: (items: number) => void,
): Promise<ZipPlan> {
  const plan: ZipPlan = { items: [], bytes: 0, length: 0n, skipped: [] };
  const root = isPlainName(top) ? displayName(top) : "folder";
  plan.items.push({ path: `${root}/`, entry: folderEntry() });
  const seen = new Set<string>();
  for await (const found of reader.walk(treeId, [], signal)) {
    if (!found.path.slice(0, -1).every(isPlainName)) continue; // in a folder left out already
    const shown = found.path.map(displayName).join("/");
    if (!isPlainName(found.path[found.path.length - 1])) {
      plan.skipped.push(`${shown} (a name no file system should hold)`);
      continue;
    }
    if (seen.has(shown)) continue; // a name listed twice: the first one, as restore does
    seen.add(shown);
    const e = found.entry;
    if (e.type === "dir") {
      plan.items.push({ path: `${root}/${shown}/`, entry: e });
    } else if (e.type === "file") {
      plan.items.push({ path: `${root}/${shown}`, entry: e });
      plan.bytes += e.size;
    } else {
      plan.skipped.push(`${shown} (${e.type === "symlink" ? "a link" : e.type})`);
    }
    if (plan.items.length > MAX_ITEMS) throw new Error("this folder holds too many files for one zip; download its subfolders");
    if (plan.items.length % 500 === 0) progress(plan.items.length);
  }
  plan.length = predictLength(plan.items.map(metadata));
  return plan;
}

function folderEntry(): Entry {
  return { name: "", type: "dir", mode: 0o755, mtimeNs: Date.now() * 1e6, size: 0, content: [], subtree: null, target: null, hardlink: null, holes: [] };
}

function metadata(item: { path: string; entry: Entry }) {
  return item.path.endsWith("/") ? { name: item.path } : { name: item.path, size: item.entry.size };
}

function modified(entry: Entry): Date {
  const ms = entry.mtimeNs / 1e6;
  return new Date(Number.isFinite(ms) && ms > 315532800000 ? ms : 315532800000); // zip: 1980+
}

export function zipStream(reader: Reader, plan: ZipPlan, signal: AbortSignal): ReadableStream<Uint8Array> {
  async function* inputs() {
    for (const item of plan.items) {
      if (signal.aborted) return;
      const e = item.entry;
      if (item.path.endsWith("/")) {
        yield { name: item.path, lastModified: modified(e), mode: (e.mode & 0o777) || 0o755 };
      } else {
        yield {
          name: item.path,
          lastModified: modified(e),
          size: e.size,
          mode: (e.mode & 0o777) || 0o644,
          input: reader.fileStream(e, item.path, signal),
        };
      }
    }
  }
  return makeZip(inputs(), { buffersAreUTF8: true });
}

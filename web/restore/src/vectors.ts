// The shared test vectors (tests/vectors/restore-vectors.json, made by the Python client),
// checked by this page's own decoding code. tests/test_restore_browser.py loads this module
// into the restore page in chromium and runs runVectors(doc); tests/test_restore_vectors.py
// checks the same file with the Python code. Padmé lengths are not checked here: the page
// never pads (it only reads).

import type { Api, SnapshotRow } from "./api";
import { AUTH_INFO, KEK_INFO, aesKey, blobHasher, deriveMaster, hkdf, splitMaster } from "./crypto";
import { checkValue, importKeys, parseKeyFile, unwrapRaw } from "./keys";
import type { RepoKeys } from "./keys";
import { decodeBlob } from "./blob";
import { Reader } from "./repo";
import { openSnapshot } from "./snapshot";
import { decodeTree } from "./tree";
import { errorText, fromB64, fromHex, toHex, utf8 } from "./util";

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the vectors' JSON, checked by use
type Doc = any;

export interface VectorReport {
  passed: number;
  failures: string[];
}

async function keysFromHex(dataKey: string, idKey: string): Promise<RepoKeys> {
  return { dataKey: await aesKey(fromHex(dataKey)), hash: await blobHasher(fromHex(idKey)) };
}

async function kekFromPassword(password: string, keyfileText: string): Promise<CryptoKey> {
  const kf = parseKeyFile(keyfileText);
  const master = await deriveMaster(utf8(password), kf.salt, kf.kdf);
  return (await splitMaster(master)).kek;
}

/** Equal as JSON, objects' keys in any order. */
function same(a: unknown, b: unknown): boolean {
  const canon = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(canon)
      : v && typeof v === "object"
        ? Object.fromEntries(Object.entries(v).sort(([x], [y]) => (x < y ? -1 : 1)).map(([k, w]) => [k, canon(w)]))
        : v;
  return JSON.stringify(canon(a)) === JSON.stringify(canon(b));
}

async function sha256(data: Uint8Array): Promise<string> {
  return toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>)));
}

export async function runVectors(doc: Doc): Promise<VectorReport> {
  const report: VectorReport = { passed: 0, failures: [] };
  const check = async (name: string, test: () => Promise<void>) => {
    try {
      await test();
      report.passed++;
    } catch (err) {
      report.failures.push(`${name}: ${errorText(err)}`);
    }
  };
  const expectError = async (name: string, words: string, test: () => Promise<unknown>) => {
    await check(name, async () => {
      let message: string | null = null;
      try {
        await test();
      } catch (err) {
        message = errorText(err);
      }
      if (message === null) throw new Error("was accepted");
      if (!message.includes(words)) throw new Error(`refused with "${message}", not "${words}"`);
    });
  };

  for (const v of doc.kdf) {
    await check(`kdf ${v.password}`, async () => {
      const p = { memoryKib: v.memory_kib, iterations: v.iterations, lanes: v.lanes };
      const master = await deriveMaster(utf8(v.password), fromB64(v.salt), p);
      if (toHex(master) !== v.master) throw new Error("Argon2id output differs");
      if (toHex(await hkdf(master, AUTH_INFO)) !== v.auth_key) throw new Error("auth key differs");
      if (toHex(await hkdf(master, KEK_INFO)) !== v.kek) throw new Error("KEK differs");
    });
  }

  const k = doc.keys;
  await check("key file unlocks the keys", async () => {
    const raw = await unwrapRaw(parseKeyFile(k.keyfile), await kekFromPassword(k.password, k.keyfile));
    if (toHex(raw.dataKey) !== k.data_key || toHex(raw.idKey) !== k.id_key) throw new Error("keys differ");
    if ((await checkValue(raw)) !== k.check_value) throw new Error("check value differs");
  });
  await expectError("a wrong password", "wrong password", async () =>
    unwrapRaw(parseKeyFile(k.keyfile), await kekFromPassword(k.password + "x", k.keyfile)),
  );

  const keys = await keysFromHex(k.data_key, k.id_key);
  for (const v of doc.blobs) {
    await check(`blob: ${v.name}`, async () => {
      const plain = await decodeBlob(keys, fromHex(v.id), fromB64(v.stored));
      if (toHex(plain) !== toHex(fromB64(v.plaintext))) throw new Error("plaintext differs");
    });
  }
  for (const v of doc.bad_blobs) {
    await expectError(`bad blob: ${v.name}`, v.error, () => decodeBlob(keys, fromHex(v.id), fromB64(v.stored)));
  }
  for (const v of doc.trees) {
    await check(`tree: ${v.name}`, async () => {
      const raw = await decodeBlob(keys, fromHex(v.id), fromB64(v.stored));
      if (new TextDecoder().decode(raw) !== v.json) throw new Error("tree bytes differ");
      const got = decodeTree(raw).map((e) => ({
        name: e.name,
        type: e.type,
        mode: e.mode,
        mtime: e.mtimeNs,
        size: e.size,
        content: e.content.map((r) => [r.id, r.offset, r.length]),
        subtree: e.subtree,
        target: e.target,
        holes: e.holes,
      }));
      const want = v.entries.map((e: Doc) => ({
        name: e.name,
        type: e.type,
        mode: e.mode,
        mtime: Number(e.mtime_ns), // the same nearest double JSON.parse gives
        size: e.size,
        content: e.content,
        subtree: e.subtree,
        target: e.target,
        holes: e.holes,
      }));
      if (!same(got, want)) throw new Error(`entries differ: ${JSON.stringify(got)}`);
    });
  }
  for (const v of doc.bad_trees) {
    await expectError(`bad tree: ${v.name}`, v.error, async () => decodeTree(utf8(v.json)));
  }
  for (const v of doc.records) {
    await check(`record: ${v.name}`, async () => {
      const s = await openSnapshot(keys, v.snap_id, fromB64(v.record));
      const w = v.snapshot;
      const got = [s.id, s.timeNs, s.host, s.username, s.paths, s.tree, s.parent, s.tags, s.excludes, s.stats];
      const want = [w.id, Number(w.time_ns), w.host, w.username, w.paths, w.tree, w.parent, w.tags, w.excludes, w.stats];
      if (!same(got, want)) throw new Error(`snapshot differs: ${JSON.stringify(got)}`);
    });
  }
  for (const v of doc.bad_records) {
    await expectError(`bad record: ${v.name}`, v.error, () => openSnapshot(keys, v.snap_id, fromB64(v.record)));
  }
  await check("the repository made by the client", () => checkRepository(doc.repository));
  return report;
}

/** Open the client's repository from the vectors with the page's own Reader (its walk and its
 * file streams), the server's answers played from memory. */
async function checkRepository(repo: Doc): Promise<void> {
  const kf = parseKeyFile(repo.keyfile);
  const raw = await unwrapRaw(kf, await kekFromPassword(repo.password, repo.keyfile));
  const keys = await importKeys(raw);
  const stored = new Map<string, Uint8Array>(repo.blobs.map((b: Doc) => [b.id, fromB64(b.stored)]));
  const rows: SnapshotRow[] = repo.snapshots.map((s: Doc) => ({
    id: s.snap_id,
    timeNs: Number(s.time_ns),
    receivedNs: 0,
    record: fromB64(s.record),
    protected: false,
  }));
  const api = {
    snapshots: async () => rows,
    async *readBlobs(ids: Uint8Array[]) {
      for (const id of ids) {
        const blob = stored.get(toHex(id));
        if (!blob) throw new Error(`blob ${toHex(id)} is not in the vectors`);
        yield [id, blob] as [Uint8Array, Uint8Array];
      }
    },
  } as unknown as Api;
  const reader = new Reader(api, keys);
  const snaps = await reader.snapshots();
  if (snaps.some((s) => s.error)) throw new Error(snaps.map((s) => s.error).join("; "));
  const latest = snaps[0].snapshot;
  if (!latest) throw new Error("no snapshot");
  const top = await reader.tree(latest.tree);
  if (top.length !== 1 || top[0].name !== repo.top || !top[0].subtree) throw new Error("top folder differs");
  const found: Doc[] = [];
  for await (const { path, entry } of reader.walk(top[0].subtree, [])) {
    const p = path.join("/");
    if (entry.type === "dir") found.push({ path: p, type: "dir" });
    else if (entry.type === "symlink") found.push({ path: p, type: "symlink", target: entry.target });
    else {
      const data = new Uint8Array(await new Response(reader.fileStream(entry, p)).arrayBuffer());
      found.push({ path: p, type: "file", size: data.length, sha256: await sha256(data) });
    }
  }
  found.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  if (!same(found, repo.latest_files)) throw new Error(`files differ: ${JSON.stringify(found)}`);
}

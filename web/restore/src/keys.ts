// Key files and the repository keys, as in src/strongroom/keys.py.

import {
  type Hasher,
  type KdfParams,
  KEY_SIZE,
  aesKey,
  blobHasher,
  checkSalt,
  hkdf,
  unseal,
  validateKdf,
} from "./crypto";
import { IntegrityError, UserError, concat, fromB64, toHex, utf8 } from "./util";

const WRAP_AAD = utf8("strongroom v1 wrapped keys");

export interface KeyFile {
  salt: Uint8Array;
  kdf: KdfParams;
  wrapped: Uint8Array;
  authHash: Uint8Array;
}

/** The keys that open a repository's blobs and records: the data key as a non-extractable
 * WebCrypto key, the ID key inside the hasher (its WebAssembly memory and a private copy in
 * its closure); no raw key in an object the page passes around. */
export interface RepoKeys {
  dataKey: CryptoKey;
  hash: Hasher;
}

function int(value: unknown): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value)) throw new TypeError("expected an integer");
  return value;
}

/** KeyFile.from_json(): every field checked before the KDF runs. */
export function parseKeyFile(text: string): KeyFile {
  let keyfile: KeyFile;
  try {
    const obj: unknown = JSON.parse(text);
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
      throw new IntegrityError("key file is malformed");
    }
    const o = obj as Record<string, unknown>;
    if ((o.version !== 1 && o.version !== 2) || o.kdf !== "argon2id") {
      throw new IntegrityError("key file has an unsupported version (a newer strongroom may have written it)");
    }
    // Version 2 may add a recovery wrapping (recovery.py): checked as the client checks it,
    // never used here (this page opens the keys with the password only).
    if (o.version === 2 && o.recovery !== undefined && o.recovery !== null) checkRecovery(o.recovery);
    keyfile = {
      salt: fromB64(o.salt),
      kdf: { memoryKib: int(o.memory_kib), iterations: int(o.iterations), lanes: int(o.lanes) },
      wrapped: fromB64(o.wrapped),
      authHash: fromB64(o.auth_hash),
    };
  } catch (err) {
    if (err instanceof IntegrityError) throw err;
    throw new IntegrityError("key file is malformed");
  }
  checkSalt(keyfile.salt);
  validateKdf(keyfile.kdf);
  return keyfile;
}

const RECOVERY_MAX = 4096;

function checkRecovery(value: unknown): void {
  const r = value as Record<string, unknown>;
  if (typeof r !== "object" || Array.isArray(r) || r.kdf !== "hkdf-sha256") {
    throw new IntegrityError("key file has an unsupported recovery wrapping");
  }
  const wrapped = fromB64(r.wrapped);
  if (!(wrapped.length > 28 && wrapped.length <= RECOVERY_MAX)) {
    throw new IntegrityError("key file has a malformed recovery wrapping");
  }
}

export interface RawKeys {
  dataKey: Uint8Array;
  idKey: Uint8Array;
  chunkerSeed: number; // used by backups only (JSON numbers lose its low bits here)
}

/** Open the wrapped keys with the KEK (keys.unwrap()). A wrong KEK is a wrong password. */
export async function unwrapRaw(keyfile: KeyFile, kek: CryptoKey): Promise<RawKeys> {
  let raw: Uint8Array;
  try {
    raw = await unseal(kek, keyfile.wrapped, WRAP_AAD, "key file");
  } catch {
    throw new UserError("wrong password for this account's keys");
  }
  try {
    const obj = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
    raw.fill(0);
    const seed = obj.chunker_seed;
    if (typeof seed !== "number" || !Number.isInteger(seed)) throw new TypeError("seed");
    const keys = { dataKey: fromB64(obj.data_key), idKey: fromB64(obj.id_key), chunkerSeed: seed };
    if (keys.dataKey.length !== KEY_SIZE || keys.idKey.length !== KEY_SIZE) {
      throw new IntegrityError("key material has wrong key sizes");
    }
    return keys;
  } catch (err) {
    if (err instanceof IntegrityError) throw err;
    throw new IntegrityError("key material is malformed");
  }
}

/** The usable keys; the raw bytes are wiped once imported. */
export async function importKeys(raw: RawKeys): Promise<RepoKeys> {
  const keys = { dataKey: await aesKey(raw.dataKey), hash: await blobHasher(raw.idKey) };
  raw.dataKey.fill(0);
  raw.idKey.fill(0);
  return keys;
}

/** RepoKeys.check_value(): what the command-line client pins per account. */
export async function checkValue(raw: RawKeys): Promise<string> {
  return toHex((await hkdf(concat([raw.dataKey, raw.idKey]), "strongroom v1 key check")).subarray(0, 16));
}

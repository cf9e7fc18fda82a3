// The login's cryptography, as in src/strongroom/crypto.py: Argon2id (hash-wasm, WebAssembly),
// HKDF-SHA256 and AES-256-GCM (WebCrypto), keyed BLAKE3 blob IDs (hash-wasm).

import { argon2id, createBLAKE3 } from "hash-wasm";
import { IntegrityError, UserError, bs, utf8 } from "./util";

export const KEY_SIZE = 32;
export const NONCE_SIZE = 12;
export const TAG_SIZE = 16;

export interface KdfParams {
  memoryKib: number;
  iterations: number;
  lanes: number;
}

/** The weakest cost this page derives with (crypto.kdf_floor() of the client): nothing a
 * server sends can lower it. There is no test switch: test servers use the real cost. */
export const KDF_FLOOR = { memoryKib: 65536, iterations: 3 };
/** Pins only grow: a hostile server must not push an account out of reach of small machines
 * (or make this tab allocate gigabytes). client/login.py's KDF_MAX_*. */
export const KDF_MAX = { memoryKib: 1024 * 1024, iterations: 16 };

function cost(p: KdfParams): string {
  const memory = p.memoryKib % 1024 === 0 ? `${p.memoryKib / 1024} MiB` : `${p.memoryKib} KiB`;
  return `${memory}, ${p.iterations} pass${p.iterations === 1 ? "" : "es"}`;
}

/** The bounds KdfParams.validate() applies to anything read from a key file. */
export function validateKdf(p: KdfParams): void {
  const int = (v: number) => Number.isSafeInteger(v);
  if (!int(p.memoryKib) || p.memoryKib < 8 || p.memoryKib > 4 * 1024 * 1024) {
    throw new IntegrityError("key file has an invalid Argon2 memory cost");
  }
  if (!int(p.iterations) || !int(p.lanes) || p.iterations < 1 || p.iterations > 64 ||
      p.lanes < 1 || p.lanes > 64) {
    throw new IntegrityError("key file has invalid Argon2 parameters");
  }
  if (p.memoryKib < 8 * p.lanes) throw new IntegrityError("key file has an invalid Argon2 memory cost");
}

/** Refuse, before deriving or sending anything, a cost below the floor or above the ceiling
 * (client/login.py check_kdf, without the per-computer pin: this page remembers nothing). */
export function checkKdf(p: KdfParams, server: string): void {
  validateKdf(p);
  if (p.memoryKib < KDF_FLOOR.memoryKib || p.iterations < KDF_FLOOR.iterations) {
    throw new UserError(
      `server ${server} asks for weak password hashing (Argon2id ${cost(p)}; the minimum is ` +
        `${cost({ ...KDF_FLOOR, lanes: 1 })}). Nothing derived from your password was sent. A ` +
        "server that does this may be trying to guess your password; ask the admin",
    );
  }
  if (p.memoryKib > KDF_MAX.memoryKib || p.iterations > KDF_MAX.iterations) {
    throw new UserError(
      `server ${server} asks for more expensive password hashing (Argon2id ${cost(p)}) than ` +
        "this page allows (1 GiB, 16 passes); nothing was sent",
    );
  }
}

export function checkSalt(salt: Uint8Array): void {
  if (salt.length < 8 || salt.length > 64) throw new IntegrityError("key file has an invalid salt");
}

export async function deriveMaster(
  password: Uint8Array,
  salt: Uint8Array,
  p: KdfParams,
): Promise<Uint8Array> {
  validateKdf(p);
  checkSalt(salt);
  return argon2id({
    password,
    salt,
    parallelism: p.lanes,
    iterations: p.iterations,
    memorySize: p.memoryKib,
    hashLength: KEY_SIZE,
    outputType: "binary",
  });
}

const HKDF_SALT = new Uint8Array(0); // HKDF's default: HashLen zero bytes, the same HMAC key

/** HKDF-SHA256(secret, salt=None, info), 32 bytes: crypto.hkdf(). */
export async function hkdf(secret: Uint8Array, info: string): Promise<Uint8Array> {
  const base = await crypto.subtle.importKey("raw", bs(secret), "HKDF", false, ["deriveBits"]);
  const bits = await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: HKDF_SALT, info: bs(utf8(info)) },
    base,
    KEY_SIZE * 8,
  );
  return new Uint8Array(bits);
}

export const AUTH_INFO = "strongroom v1 auth key";
export const KEK_INFO = "strongroom v1 key-encryption key";

export interface PasswordKeys {
  authKey: Uint8Array; // shown to the server
  kek: CryptoKey; // never leaves this tab, and cannot be exported from WebCrypto
}

/** Split the Argon2id output, as crypto.split_master(): the KEK becomes a non-extractable
 * WebCrypto key at once. The caller wipes `master` afterwards. */
export async function splitMaster(master: Uint8Array): Promise<PasswordKeys> {
  const base = await crypto.subtle.importKey("raw", bs(master), "HKDF", false, [
    "deriveBits",
    "deriveKey",
  ]);
  const authKey = new Uint8Array(
    await crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: HKDF_SALT, info: bs(utf8(AUTH_INFO)) },
      base,
      256,
    ),
  );
  const kek = await crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: HKDF_SALT, info: bs(utf8(KEK_INFO)) },
    base,
    { name: "AES-GCM", length: 256 },
    false,
    ["decrypt"],
  );
  return { authKey, kek };
}

export async function aesKey(raw: Uint8Array): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", bs(raw), { name: "AES-GCM" }, false, ["decrypt"]);
}

/** nonce || AES-256-GCM(plaintext) with associated data, opened: crypto.unseal(). */
export async function unseal(
  key: CryptoKey,
  sealed: Uint8Array,
  aad: Uint8Array,
  what: string,
): Promise<Uint8Array> {
  if (sealed.length < NONCE_SIZE + TAG_SIZE) throw new IntegrityError(`${what} is truncated`);
  try {
    const plain = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: bs(sealed.subarray(0, NONCE_SIZE)), additionalData: bs(aad) },
      key,
      bs(sealed.subarray(NONCE_SIZE)),
    );
    return new Uint8Array(plain);
  } catch {
    throw new IntegrityError(`${what} failed authentication (damaged or tampered)`);
  }
}

export type Hasher = (data: Uint8Array) => Uint8Array;

/** Keyed BLAKE3 with the ID key: blob IDs (crypto.BlobHasher); each call runs
 * init/update/digest without yielding. hash-wasm keeps the array it is given and writes it
 * into the WebAssembly memory at every init(): it gets a private copy (the caller wipes its
 * own), held only by this closure. */
export async function blobHasher(idKey: Uint8Array): Promise<Hasher> {
  if (idKey.length !== KEY_SIZE) throw new IntegrityError("key material has wrong key sizes");
  const hasher = await createBLAKE3(256, idKey.slice());
  return (data: Uint8Array) => {
    hasher.init();
    hasher.update(data);
    return hasher.digest("binary");
  };
}

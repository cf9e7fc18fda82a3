// Signing in, as the command-line client logs in (client/login.py): the server's salt and
// Argon2id cost (refused below the floor before anything is derived), the auth key sent, the
// key file opened with the KEK. Only the auth key leaves the tab; the password's bytes and the
// Argon2id output are wiped as soon as they are used, the KEK and the data keys exist only as
// non-extractable WebCrypto keys (and the ID key inside the hasher's WebAssembly memory).

import { Api } from "./api";
import { checkKdf, deriveMaster, splitMaster } from "./crypto";
import { importKeys, parseKeyFile, unwrapRaw } from "./keys";
import { Reader } from "./repo";
import { equalBytes, utf8 } from "./util";

export interface Signed {
  api: Api;
  reader: Reader;
  user: string;
  appendOnly: boolean;
}

export async function signIn(
  user: string,
  password: string,
  step: (what: string) => void,
): Promise<Signed> {
  const api = new Api();
  step("Asking the server for your account's parameters…");
  const params = await api.authParams(user);
  checkKdf(params, api.server);
  step("Deriving your keys from the password (Argon2id, in this browser)…");
  const secret = utf8(password);
  try {
    const master = await deriveMaster(secret, params.salt, params);
    const { authKey, kek } = await splitMaster(master);
    master.fill(0);
    step("Signing in…");
    let answer;
    try {
      answer = await api.login(user, authKey);
    } finally {
      authKey.fill(0);
    }
    step("Opening your keys…");
    try {
      const keyfile = parseKeyFile(answer.keyfile);
      let unwrapWith = kek;
      const sameKdf =
        equalBytes(keyfile.salt, params.salt) &&
        keyfile.kdf.memoryKib === params.memoryKib &&
        keyfile.kdf.iterations === params.iterations &&
        keyfile.kdf.lanes === params.lanes;
      if (!sameKdf) {
        // Wrapped under other parameters (as the client allows): derived again with them,
        // after the same floor and ceiling checks.
        checkKdf(keyfile.kdf, api.server);
        const again = await deriveMaster(secret, keyfile.salt, keyfile.kdf);
        unwrapWith = (await splitMaster(again)).kek;
        again.fill(0);
      }
      const keys = await importKeys(await unwrapRaw(keyfile, unwrapWith));
      return { api, reader: new Reader(api, keys), user: answer.user, appendOnly: answer.appendOnly };
    } catch (err) {
      api.logout();
      throw err;
    }
  } finally {
    secret.fill(0);
  }
}

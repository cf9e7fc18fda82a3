// The server's restore API (docs/PROTOCOL.md, "The restore page"). The session ID lives in
// this object, in memory only, and goes out as a bearer header: no cookie, no storage.

import { IntegrityError, UserError, fromB64, toB64, toHex } from "./util";

export class ApiError extends UserError {
  constructor(
    message: string,
    readonly code: string,
    readonly status: number,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** Codes after which the session is gone and the page must sign in again. */
export const SESSION_OVER = new Set(["no_session", "session_ended", "account_gone"]);

export interface AuthParams {
  salt: Uint8Array;
  memoryKib: number;
  iterations: number;
  lanes: number;
}

export interface LoginAnswer {
  user: string;
  keyfile: string;
  repoId: string;
  appendOnly: boolean;
}

export interface SnapshotRow {
  id: string;
  timeNs: number;
  receivedNs: number;
  record: Uint8Array;
  protected: boolean;
}

const RECORD_HEADER = 37; // id(32) status(1) length(4, big-endian)
const STATUS_INTACT = 0;
const STATUS_ERROR = 0xfe;
const STATUS_END = 0xff;
export const MAX_IDS = 256;
const MAX_STORED = 16 * 1024 * 1024 + 1024;

async function failure(response: Response): Promise<ApiError> {
  let message = `the server answered ${response.status} ${response.statusText}`;
  let code = "http";
  try {
    const body = await response.json();
    if (typeof body?.error === "string") message = body.error;
    if (typeof body?.code === "string") code = body.code;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(message, code, response.status);
}

export class Api {
  private session: string | null = null;
  readonly server = location.host;
  /** When the server last heard from this tab (a download keeps the session in use). */
  lastUsed = Date.now();

  get signedIn(): boolean {
    return this.session !== null;
  }

  private async call(path: string, init: RequestInit): Promise<Response> {
    const headers = new Headers(init.headers);
    if (this.session) headers.set("Authorization", `Bearer ${this.session}`);
    this.lastUsed = Date.now();
    let response: Response;
    try {
      response = await fetch(`/api/user/${path}`, {
        ...init,
        headers,
        credentials: "omit",
        cache: "no-store",
        redirect: "error",
        referrerPolicy: "no-referrer",
      });
    } catch {
      throw new ApiError(`cannot reach the server ${this.server}; check the connection`, "network", 0);
    }
    if (!response.ok) {
      const err = await failure(response);
      if (SESSION_OVER.has(err.code)) this.session = null;
      throw err;
    }
    return response;
  }

  private async post(path: string, body: unknown): Promise<unknown> {
    const response = await this.call(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    return response.json();
  }

  async authParams(user: string): Promise<AuthParams> {
    const a = (await this.post("auth-params", { user })) as Record<string, unknown>;
    const num = (v: unknown) => (typeof v === "number" ? v : NaN);
    try {
      return {
        salt: fromB64(a.salt),
        memoryKib: num(a.memory_kib),
        iterations: num(a.iterations),
        lanes: num(a.lanes),
      };
    } catch {
      throw new IntegrityError(`server ${this.server} sent invalid login parameters`);
    }
  }

  async login(user: string, authKey: Uint8Array): Promise<LoginAnswer> {
    const a = (await this.post("login", { user, auth_key: toB64(authKey) })) as Record<string, unknown>;
    if (typeof a.session !== "string" || typeof a.keyfile !== "string" || typeof a.repo_id !== "string") {
      throw new IntegrityError(`server ${this.server} sent a malformed login answer`);
    }
    this.session = a.session;
    return {
      user: typeof a.user === "string" ? a.user : user,
      keyfile: a.keyfile,
      repoId: a.repo_id,
      appendOnly: a.append_only === true,
    };
  }

  /** Forget the session here and end it on the server (also when the tab closes). */
  logout(keepalive = false): void {
    const session = this.session;
    this.session = null;
    if (!session) return;
    fetch("/api/user/logout", {
      method: "POST",
      headers: { Authorization: `Bearer ${session}`, "Content-Type": "application/json" },
      body: "{}",
      keepalive,
      credentials: "omit",
    }).catch(() => undefined);
  }

  forget(): void {
    this.session = null;
  }

  async snapshots(): Promise<SnapshotRow[]> {
    const response = await this.call("snapshots", { method: "GET" });
    const body = (await response.json()) as { snapshots?: unknown };
    if (!Array.isArray(body.snapshots)) throw new IntegrityError("the snapshot list is malformed");
    return body.snapshots.map((r: Record<string, unknown>) => {
      if (typeof r.id !== "string" || typeof r.time_ns !== "number") {
        throw new IntegrityError("the snapshot list is malformed");
      }
      return {
        id: r.id,
        timeNs: r.time_ns,
        receivedNs: typeof r.received_ns === "number" ? r.received_ns : 0,
        record: fromB64(r.record),
        protected: r.protected === true,
      };
    });
  }

  /** Stored blobs by ID, in the server's storage order, as they arrive. The caller checks that
   * each asked-for blob comes exactly once; this checks the stream's own framing. */
  async *readBlobs(ids: Uint8Array[], signal?: AbortSignal): AsyncGenerator<[Uint8Array, Uint8Array]> {
    if (!ids.length || ids.length > MAX_IDS) throw new Error(`read 1 to ${MAX_IDS} blobs at a time`);
    const body = new Uint8Array(ids.length * 32);
    ids.forEach((id, i) => body.set(id, i * 32));
    const response = await this.call("blobs", {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body,
      signal,
    });
    if (!response.body) throw new IntegrityError("the server sent no blobs");
    const queue = new ByteQueue(response.body.getReader());
    let count = 0;
    try {
      for (;;) {
        const header = await queue.take(RECORD_HEADER);
        if (!header) throw new IntegrityError("the server's answer ended early (connection lost?)");
        const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
        const status = header[32];
        const length = view.getUint32(33);
        if (length > MAX_STORED) throw new IntegrityError("the server sent an oversized blob");
        const data = await queue.take(length);
        if (!data) throw new IntegrityError("the server's answer ended early (connection lost?)");
        if (status === STATUS_END) {
          const sent = new DataView(data.buffer, data.byteOffset).getBigUint64(0);
          if (Number(sent) !== count) throw new IntegrityError("the server miscounted its answer");
          if (await queue.take(1)) throw new IntegrityError("the server sent more than it should");
          return;
        }
        if (status === STATUS_ERROR) {
          throw new IntegrityError(`the server could not read a blob: ${new TextDecoder().decode(data)}`);
        }
        if (status !== STATUS_INTACT) {
          throw new IntegrityError(`the server sent blob ${toHex(header.subarray(0, 8))} as damaged`);
        }
        count++;
        yield [header.slice(0, 32), data];
      }
    } finally {
      queue.cancel();
    }
  }
}

/** Reads exact byte counts from a stream, copying only when a read spans chunks. */
class ByteQueue {
  private chunks: Uint8Array[] = [];
  private offset = 0; // into chunks[0]
  private size = 0;
  private done = false;

  constructor(private reader: ReadableStreamDefaultReader<Uint8Array>) {}

  async take(n: number): Promise<Uint8Array | null> {
    while (this.size < n && !this.done) {
      const { value, done } = await this.reader.read();
      if (done) this.done = true;
      else if (value.length) {
        this.chunks.push(value);
        this.size += value.length;
      }
    }
    if (this.size < n) return null;
    const first = this.chunks[0];
    if (n === 0) return new Uint8Array(0);
    if (first.length - this.offset >= n) {
      const out = first.subarray(this.offset, this.offset + n);
      this.advance(n);
      return out;
    }
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0];
      const part = Math.min(n - filled, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + part), filled);
      filled += part;
      this.advance(part);
    }
    return out;
  }

  private advance(n: number): void {
    this.offset += n;
    this.size -= n;
    if (this.offset === this.chunks[0].length) {
      this.chunks.shift();
      this.offset = 0;
    }
  }

  cancel(): void {
    this.reader.cancel().catch(() => undefined);
  }
}

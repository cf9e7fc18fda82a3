// Where a download goes, streamed so that no file is ever held whole in memory:
// 1. "worker": a service worker answers a hidden frame's request for /restore/dl/<random ID>
//    with a stream the page feeds chunk by chunk through a MessageChannel, as the browser asks
//    for more: the browser's own download (Chromium, Firefox, Safari). The URL holds no name:
//    if the worker is not there, the server sees only the random ID. Browsers register no
//    worker on a certificate they do not trust (a self-signed one clicked through), hence:
// 2. "picker": the File System Access API (Chromium on desktops): the user picks the file, the
//    page writes to it chunk by chunk; an error leaves no partial file (the write is aborted).
// 3. "memory": a Blob assembled from the chunks (a browser with neither; Chromium and Firefox
//    keep large Blobs on disk, others may not).

import { errorText, toHex } from "./util";

export type SinkKind = "picker" | "worker" | "memory";

export interface Target {
  name: string; // shown and suggested; made safe here
  size: number | null; // bytes, when known: the browser then shows the progress itself
  type: string;
}

export interface Sink {
  kind: SinkKind;
  writable: WritableStream<Uint8Array>;
}

interface FilePickerWindow {
  showSaveFilePicker?: (options: { suggestedName: string }) => Promise<{
    createWritable(): Promise<WritableStream<Uint8Array>>;
  }>;
}

let worker: Promise<ServiceWorker | null> | null = null;

/** Register the download worker (once). Browsers refuse it on a certificate they do not
 * trust (a self-signed one clicked through): then the other ways are used. */
export function startWorker(): Promise<ServiceWorker | null> {
  if (worker) return worker;
  worker = (async () => {
    if (!("serviceWorker" in navigator) || !navigator.serviceWorker) return null;
    try {
      const reg = await navigator.serviceWorker.register("/restore/sw.js", { scope: "/restore/" });
      const active = reg.active ?? (await waitActive(reg));
      return active;
    } catch {
      return null;
    }
  })();
  return worker;
}

function waitActive(reg: ServiceWorkerRegistration): Promise<ServiceWorker | null> {
  return new Promise((resolve) => {
    const sw = reg.installing ?? reg.waiting;
    if (!sw) return resolve(reg.active);
    const timer = setTimeout(() => resolve(reg.active), 10000);
    sw.addEventListener("statechange", () => {
      if (sw.state === "activated") {
        clearTimeout(timer);
        resolve(sw);
      } else if (sw.state === "redundant") {
        clearTimeout(timer);
        resolve(null);
      }
    });
  });
}

export function safeFileName(name: string): string {
  const clean = name
    .replace(/[\u0000-\u001f\u007f/\\:*?"<>|]/g, "_")
    .replace(/^[.\s]+|[.\s]+$/g, "")
    .slice(0, 200);
  return clean || "download";
}

export function available(): SinkKind[] {
  const kinds: SinkKind[] = [];
  if (typeof (window as FilePickerWindow).showSaveFilePicker === "function") kinds.push("picker");
  if ("serviceWorker" in navigator && navigator.serviceWorker) kinds.push("worker");
  kinds.push("memory");
  return kinds;
}

/** Open a sink, the best kind first; null if the user cancelled the save dialog. Call it
 * straight from the click: the picker needs the user's gesture. */
export async function openSink(target: Target): Promise<Sink | null> {
  const name = safeFileName(target.name);
  // The worker first: the browser's own downloads (its progress, its folder), no dialog.
  const sw = await startWorker();
  if (sw) {
    try {
      return { kind: "worker", writable: await workerSink(sw, { ...target, name }) };
    } catch {
      // the worker did not take it: the others
    }
  }
  const picker = (window as FilePickerWindow).showSaveFilePicker;
  if (typeof picker === "function") {
    try {
      const handle = await picker.call(window, { suggestedName: name });
      return { kind: "picker", writable: await handle.createWritable() };
    } catch (err) {
      if (err instanceof DOMException && err.name === "AbortError") return null;
      // e.g. the click's user activation has expired: memory
    }
  }
  return { kind: "memory", writable: memorySink({ ...target, name }) };
}

function workerSink(sw: ServiceWorker, target: Target): Promise<WritableStream<Uint8Array>> {
  const id = toHex(crypto.getRandomValues(new Uint8Array(16)));
  const channel = new MessageChannel();
  const port = channel.port1;
  let credit = 0;
  let wake: (() => void) | null = null;
  let failure: Error | null = null;
  let started = false;
  const keepAlive = setInterval(() => sw.postMessage({ type: "ping" }), 10000);
  const stop = (err: Error) => {
    failure = err;
    clearInterval(keepAlive);
    wake?.();
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop(new Error("the download did not start (the browser did not ask for it)"));
      reject(failure);
    }, 15000);
    port.onmessage = (event: MessageEvent) => {
      const type = event.data?.type;
      if (type === "ready") {
        const frame = document.createElement("iframe");
        frame.hidden = true;
        frame.src = `/restore/dl/${id}`;
        document.body.appendChild(frame);
        setTimeout(() => frame.remove(), 120000);
      } else if (type === "pull") {
        credit++;
        if (!started) {
          started = true;
          clearTimeout(timer);
          resolve(writable);
        }
        wake?.();
      } else if (type === "cancel") {
        stop(new Error("the download was cancelled in the browser"));
      }
    };
    const writable = new WritableStream<Uint8Array>(
      {
        async write(chunk) {
          while (!credit && !failure) await new Promise<void>((r) => (wake = r));
          wake = null;
          if (failure) throw failure;
          credit--;
          // A copy, handed over: the chunk may be a view of a cached blob, and cloning a view
          // would copy its whole buffer.
          const copy = chunk.slice();
          port.postMessage({ type: "chunk", chunk: copy }, [copy.buffer]);
        },
        close() {
          clearInterval(keepAlive);
          port.postMessage({ type: "end" });
        },
        abort(reason) {
          clearInterval(keepAlive);
          port.postMessage({ type: "abort", message: errorText(reason) });
        },
      },
      new CountQueuingStrategy({ highWaterMark: 1 }),
    );
    sw.postMessage({ type: "download", id, name: target.name, size: target.size, mime: target.type }, [
      channel.port2,
    ]);
  });
}

/** The file as a Blob, grown 16 MiB at a time: each part becomes a Blob at once (browsers keep
 * large Blobs on disk, Chromium and Firefox do), so the page holds at most one part. */
function memorySink(target: Target): WritableStream<Uint8Array> {
  let parts: Blob[] = [];
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  const flush = () => {
    if (pending.length) parts.push(new Blob(pending as BlobPart[]));
    pending = [];
    pendingBytes = 0;
  };
  return new WritableStream<Uint8Array>({
    write(chunk) {
      pending.push(chunk.slice()); // a copy: the chunk may be a view of a larger cached blob
      pendingBytes += chunk.length;
      if (pendingBytes >= 16 * 1024 * 1024) flush();
    },
    close() {
      flush();
      const url = URL.createObjectURL(new Blob(parts, { type: target.type }));
      parts = [];
      const link = document.createElement("a");
      link.href = url;
      link.download = target.name;
      link.hidden = true;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    },
    abort() {
      parts = [];
      pending = [];
    },
  });
}

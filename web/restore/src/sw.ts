// The download worker: answers /restore/dl/<random ID> with a stream that the restore page
// feeds, chunk by chunk, through a MessageChannel, asking for the next chunk only when the
// browser has taken the previous one (bounded memory for files of any size). It knows no key
// and no plaintext but the bytes passing through; a download it does not know gets a 404.

export {}; // a module: its `self` below is the service worker's own type

declare const self: ServiceWorkerGlobalScope;

interface Pending {
  name: string;
  size: number | null;
  mime: string;
  port: MessagePort;
}

const PREFIX = "/restore/dl/";
const pending = new Map<string, Pending>();

self.addEventListener("install", () => {
  void self.skipWaiting();
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener("message", (event) => {
  const data = event.data;
  if (data?.type !== "download" || !event.ports[0] || typeof data.id !== "string") return;
  const port = event.ports[0];
  pending.set(data.id, {
    name: String(data.name),
    size: typeof data.size === "number" ? data.size : null,
    mime: typeof data.mime === "string" ? data.mime : "application/octet-stream",
    port,
  });
  setTimeout(() => pending.delete(data.id), 60000); // never asked for: forgotten
  port.postMessage({ type: "ready" });
});

function disposition(name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\%]/g, "_");
  const encoded = encodeURIComponent(name).replace(/['()*]/g, (c) => "%" + c.charCodeAt(0).toString(16));
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encoded}`;
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin || !url.pathname.startsWith(PREFIX)) return;
  const id = url.pathname.slice(PREFIX.length);
  const download = pending.get(id);
  pending.delete(id);
  if (!download) {
    event.respondWith(
      new Response("This download has expired; start it again from the restore page.", {
        status: 404,
        headers: { "Content-Type": "text/plain; charset=utf-8" },
      }),
    );
    return;
  }
  const port = download.port;
  let arrived: (() => void) | null = null;
  const stream = new ReadableStream<Uint8Array>(
    {
      start(controller) {
        port.onmessage = (message: MessageEvent) => {
          const data = message.data;
          if (data?.type === "chunk") controller.enqueue(new Uint8Array(data.chunk.buffer));
          else if (data?.type === "end") controller.close();
          else if (data?.type === "abort") controller.error(new Error(String(data.message)));
          arrived?.();
          arrived = null;
        };
      },
      pull() {
        port.postMessage({ type: "pull" });
        return new Promise<void>((resolve) => (arrived = resolve));
      },
      cancel() {
        port.postMessage({ type: "cancel" });
      },
    },
    new CountQueuingStrategy({ highWaterMark: 1 }),
  );
  const headers: Record<string, string> = {
    "Content-Type": download.mime,
    "Content-Disposition": disposition(download.name),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
  };
  if (download.size !== null) headers["Content-Length"] = String(download.size);
  event.respondWith(new Response(stream, { headers }));
});

// Previews: the start of a text file, or an image (shown from a blob: URL in an <img>, where
// an SVG's scripts do not run). Read through the same verified stream as a download.

import { h } from "./dom";
import type { Reader } from "./repo";
import type { Entry } from "./tree";

const TEXT_LIMIT = 256 * 1024;
const IMAGE_LIMIT = 32 * 1024 * 1024;

const IMAGES: Record<string, string> = {
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  gif: "image/gif",
  webp: "image/webp",
  avif: "image/avif",
  bmp: "image/bmp",
  ico: "image/x-icon",
  svg: "image/svg+xml",
};
const TEXTS = new Set(
  ("txt md markdown log csv tsv json xml yaml yml toml ini cfg conf py js ts tsx jsx c h cc cpp hpp " +
    "rs go java kt rb php sh bash zsh ps1 bat sql html htm css scss tex rst org diff patch env " +
    "gitignore dockerfile makefile cmake gradle properties srt vtt").split(" "),
);

function extension(name: string): string {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(dot + 1).toLowerCase() : name.toLowerCase();
}

export type PreviewKind = "text" | "image" | null;

export function previewKind(entry: Entry): PreviewKind {
  if (entry.type !== "file") return null;
  const ext = extension(entry.name);
  if (ext in IMAGES && entry.size <= IMAGE_LIMIT) return "image";
  if (TEXTS.has(ext)) return "text";
  return null;
}

async function readStart(stream: ReadableStream<Uint8Array>, limit: number): Promise<Uint8Array> {
  const reader = stream.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  try {
    while (n < limit) {
      const { value, done } = await reader.read();
      if (done) break;
      parts.push(value);
      n += value.length;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  const out = new Uint8Array(Math.min(n, limit));
  let at = 0;
  for (const p of parts) {
    const take = Math.min(p.length, out.length - at);
    out.set(p.subarray(0, take), at);
    at += take;
  }
  return out;
}

/** The preview's element; image URLs are revoked when `signal` aborts (the preview closed). */
export async function renderPreview(reader: Reader, entry: Entry, what: string, signal: AbortSignal): Promise<HTMLElement> {
  const kind = previewKind(entry);
  if (kind === "image") {
    const data = await readStart(reader.fileStream(entry, what, signal), IMAGE_LIMIT);
    const url = URL.createObjectURL(new Blob([data as Uint8Array<ArrayBuffer>], { type: IMAGES[extension(entry.name)] }));
    signal.addEventListener("abort", () => URL.revokeObjectURL(url), { once: true });
    return h("div.preview-image", {}, h("img", { src: url, alt: `preview of ${entry.name}` }));
  }
  const data = await readStart(reader.fileStream(entry, what, signal), TEXT_LIMIT);
  const text = new TextDecoder("utf-8").decode(data);
  const cut = entry.size > TEXT_LIMIT;
  return h(
    "div.preview-text",
    {},
    h("pre", {}, text),
    cut ? h("p.muted.small", {}, `The first ${TEXT_LIMIT / 1024} KiB are shown; download the file for the rest.`) : null,
  );
}

// The downloads panel: each download is a stream of verified bytes piped into a sink (sink.ts),
// shown with its progress, speed and a Stop button. A failed check stops the download and
// says why; the half-written file is discarded (the picker aborts its write, the browser marks
// a worker download as failed).

import { clear, h, size } from "./dom";
import { type Sink, type Target, openSink } from "./sink";
import { errorText } from "./util";

export interface Source {
  /** The bytes to save; called once the sink is open (a zip plans its folder first). */
  open(signal: AbortSignal, note: (text: string) => void): Promise<{ stream: ReadableStream<Uint8Array>; size: number | null }>;
  /** Known before anything is read (a file's size); a zip's comes with open(). */
  size: number | null;
  /** Open the sink before open() (a zip without a download worker: the save dialog needs
   * the click, which would have expired by the time the folder is planned). */
  sinkFirst?: boolean;
}

export class Downloads {
  private list: HTMLElement;

  constructor(private box: HTMLElement) {
    this.list = h("ul.downloads");
    clear(box, h("h2", {}, "Downloads"), this.list);
    box.hidden = true;
  }

  /** Start a download; resolves when it ended (done, failed or stopped). */
  async start(name: string, type: string, source: Source): Promise<void> {
    const stop = new AbortController();
    const state = h("span.state", {}, "starting…");
    const button = h("button.small-btn", { type: "button", onclick: () => stop.abort(new Error("stopped")) }, "Stop");
    const bar = h("span.fill");
    const row = h("li.download", { "data-state": "running" },
      h("div.line", {}, h("span.name", {}, name), button),
      h("div.meter.wide", {}, bar),
      state);
    this.list.prepend(row);
    this.box.hidden = false;
    const finish = (kind: "done" | "failed" | "stopped", text: string) => {
      row.dataset.state = kind;
      row.classList.add(kind);
      state.textContent = text;
      button.remove();
    };
    let early: Sink | null = null; // opened, not yet piped to
    try {
      let total = source.size;
      if (source.sinkFirst) {
        early = await openSink({ name, size: null, type });
        if (!early) return finish("stopped", "cancelled");
      }
      const { stream, size: known } = await source.open(stop.signal, (text) => (state.textContent = text));
      total = known ?? total;
      const target: Target = { name, size: total, type };
      const sink = early ?? (await openSink(target));
      early = null; // from here on, pipeTo aborts the sink on any failure
      if (!sink) {
        await stream.cancel().catch(() => undefined);
        finish("stopped", "cancelled");
        return;
      }
      const started = performance.now();
      let done = 0;
      let shown = 0;
      const show = () => {
        const seconds = (performance.now() - started) / 1000;
        const rate = seconds > 0.5 ? ` · ${size(done / seconds)}/s` : "";
        state.textContent = `${size(done)}${total !== null ? ` of ${size(total)}` : ""} verified${rate}`;
        if (total) bar.className = `fill w${Math.min(100, Math.floor((done / total) * 20) * 5)}`;
      };
      const counter = new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          done += chunk.length;
          const now = performance.now();
          if (now - shown > 250) {
            shown = now;
            show();
          }
          controller.enqueue(chunk);
        },
      });
      await stream.pipeThrough(counter, { signal: stop.signal }).pipeTo(sink.writable, { signal: stop.signal });
      show();
      const seconds = (performance.now() - started) / 1000;
      const where = sink.kind === "picker" ? "saved" : sink.kind === "worker" ? "handed to the browser's downloads" : "saved by the browser";
      finish("done", `${size(done)} verified and ${where} in ${seconds.toFixed(1)} s`);
      row.dataset.seconds = seconds.toFixed(3);
      row.dataset.sink = sink.kind;
    } catch (err) {
      await early?.writable.abort(err).catch(() => undefined);
      if (stop.signal.aborted) finish("stopped", "stopped");
      else finish("failed", `failed: ${errorText(err)}. The download was stopped; no unverified byte was written.`);
    }
  }
}

// The restore page: sign in, snapshots, a folder tree per snapshot, search by name, a file's
// versions across snapshots, previews and downloads. Everything it shows is decrypted here;
// the state lives in this tab's memory only (no storage, no cookie, no names in the URL).

import { ApiError, SESSION_OVER } from "./api";
import { append, clear, count, h, size, when } from "./dom";
import { Downloads, type Source } from "./downloads";
import { previewKind, renderPreview } from "./preview";
import type { SnapshotItem } from "./repo";
import { type Signed, signIn } from "./signin";
import { available, startWorker } from "./sink";
import type { Snapshot } from "./snapshot";
import { type Entry, displayName, isPlainName } from "./tree";
import { errorText } from "./util";
import { planZip, zipStream } from "./zip";

const SEARCH_LIMIT = 1000;

const $ = (id: string) => document.getElementById(id) as HTMLElement;

let signed: Signed | null = null;
let snapshots: SnapshotItem[] = [];
let work = new AbortController(); // the current view's reads: aborted when the view changes
let idle: ReturnType<typeof setTimeout> | undefined;
const downloads = new Downloads($("downloads"));

// ---- chrome ------------------------------------------------------------------------------

function flash(text: string, kind: "error" | "ok" | "info" = "error"): void {
  clear($("flash"), text ? h(`div.flash.${kind}`, { role: kind === "error" ? "alert" : "status" }, text) : null);
}

function view(...children: (Node | null)[]): HTMLElement {
  work.abort();
  work = new AbortController();
  const el = $("view");
  clear(el, ...children);
  window.scrollTo(0, 0);
  return el;
}

function nav(): void {
  const el = $("nav");
  if (!signed) return clear(el);
  clear(
    el,
    h("span.who", {}, signed.user),
    h("button.link", { type: "button", onclick: () => signOut("You signed out.") }, "Sign out"),
  );
}

/** A failure shown in words; a session that ended goes back to the sign-in form. */
function failed(err: unknown, what = ""): void {
  if (err instanceof DOMException && err.name === "AbortError") return;
  if (err instanceof ApiError && SESSION_OVER.has(err.code)) {
    signOut(err.message);
    return;
  }
  flash(`${what}${errorText(err)}`);
}

const IDLE_MS = 30 * 60 * 1000;

function touch(): void {
  // The server ends a session after 30 minutes without a request; the keys go with it here.
  // Every request counts (a long download keeps the tab signed in).
  clearTimeout(idle);
  if (!signed) return;
  const left = signed.api.lastUsed + IDLE_MS - Date.now();
  idle = setTimeout(() => (left > 0 ? touch() : signOut("You were signed out after 30 minutes without use.")), Math.max(left, 0) + 1000);
}

function signOut(message: string): void {
  signed?.api.logout();
  signed = null;
  snapshots = [];
  clearTimeout(idle);
  nav();
  showSignIn();
  flash(message, "info");
}

// ---- sign in -----------------------------------------------------------------------------

function showSignIn(): void {
  const user = h("input", { id: "user", name: "username", autocomplete: "username", required: true, autocapitalize: "off", spellcheck: "false" });
  const password = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const button = h("button.primary", { type: "submit" }, "Sign in");
  const status = h("p.muted.small.status", { "aria-live": "polite" });
  const form = h(
    "form",
    {
      onsubmit: async (event: Event) => {
        event.preventDefault();
        flash("");
        button.disabled = true;
        try {
          signed = await signIn(user.value.trim(), password.value, (text) => (status.textContent = text));
          password.value = "";
          status.textContent = "";
          nav();
          touch();
          void startWorker();
          await showSnapshots();
        } catch (err) {
          status.textContent = "";
          button.disabled = false;
          password.select();
          flash(errorText(err));
        }
      },
    },
    h("label", { for: "user" }, "User name", user),
    h("label", { for: "password" }, "Password", password),
    button,
    status,
  );
  view(
    h(
      "section.login",
      {},
      h(
        "div.card",
        {},
        h("h1", {}, "Restore your files"),
        h("p.muted.small", {}, "Sign in with your strongroom account. Your password and your keys never leave this browser: everything is decrypted here, on your device."),
        form,
      ),
    ),
  );
  user.focus();
}

// ---- snapshots ---------------------------------------------------------------------------

function crumbs(...parts: (Node | string)[]): HTMLElement {
  const el = h("nav.crumbs", { "aria-label": "where you are" });
  parts.forEach((p, i) => append(el, i ? " › " : null, p));
  return el;
}

function linkButton(text: string, onclick: () => void, label?: string): HTMLButtonElement {
  const attrs: Record<string, string | ((e: Event) => void)> = { type: "button", onclick };
  if (label) attrs["aria-label"] = label;
  return h("button.link.go", attrs, text);
}

function snapLabel(s: Snapshot): string {
  return `${when(s.timeNs)} · ${s.host}`;
}

async function showSnapshots(): Promise<void> {
  if (!signed) return;
  const reader = signed.reader;
  const body = h("tbody");
  const note = h("p.muted.small", {}, "Loading your snapshots…");
  view(h("div.card", {}, h("h1", {}, "Snapshots"), note, h("div.scroll", {}, h("table.snapshots", {},
    h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th.wide-only", {}, "Host"), h("th", {}, "Paths"),
      h("th.num.wide-only", {}, "Files"), h("th.num", {}, "Size"))),
    body))));
  try {
    snapshots = await reader.snapshots();
  } catch (err) {
    note.textContent = "";
    return failed(err, "Could not list your snapshots: ");
  }
  touch();
  note.textContent = snapshots.length
    ? `${count(snapshots.length, "snapshot")}, newest first. Open one to browse its files.`
    : "No snapshots yet: back up with the strongroom program first.";
  for (const item of snapshots) {
    const s = item.snapshot;
    if (!s) {
      append(body, h("tr.bad", {}, h("td", {}, when(item.timeNs)), h("td", { colspan: "4" }, h("span.danger-text", {}, `cannot be opened: ${item.error}`))));
      continue;
    }
    const files = s.stats.files;
    const bytes = s.stats.bytes_scanned;
    append(
      body,
      h("tr", {},
        h("td", {}, linkButton(when(s.timeNs), () => void browse(s, []), `open snapshot of ${when(s.timeNs)}`),
          h("div.muted.small", {}, h("code", {}, s.id.slice(0, 8)), ...s.tags.map((t) => h("span.tag", {}, t)), item.protected ? h("span.tag", {}, "protected") : null)),
        h("td.wide-only", {}, s.host),
        h("td.paths", {}, s.paths.join(", ")),
        h("td.num.wide-only", {}, files ? files.toLocaleString("en") : "—"),
        h("td.num", {}, bytes !== undefined ? size(bytes) : "—")),
    );
  }
}

// ---- a folder ----------------------------------------------------------------------------

function snapCrumb(s: Snapshot): HTMLElement {
  return linkButton(snapLabel(s), () => void browse(s, []));
}

function pathCrumbs(s: Snapshot, path: string[]): (Node | string)[] {
  const parts: (Node | string)[] = [linkButton("Snapshots", () => void showSnapshots()), snapCrumb(s)];
  path.forEach((name, i) => {
    parts.push(i === path.length - 1 ? h("strong", {}, displayName(name)) : linkButton(displayName(name), () => void browse(s, path.slice(0, i + 1))));
  });
  return parts;
}

function sorted(entries: Entry[]): Entry[] {
  return [...entries].sort((a, b) => Number(b.type === "dir") - Number(a.type === "dir") || a.name.localeCompare(b.name));
}

function searchForm(s: Snapshot, query = ""): HTMLElement {
  const input = h("input", { type: "search", name: "q", placeholder: "Search names in this snapshot", "aria-label": "Search names in this snapshot", value: query });
  return h("form.search", { role: "search", onsubmit: (e: Event) => { e.preventDefault(); if (input.value.trim()) void search(s, input.value.trim()); } },
    input, h("button", { type: "submit" }, "Search"));
}

function icon(e: Entry): HTMLElement {
  return h(`span.icon.${e.type === "dir" ? "dir" : e.type === "file" ? "file" : "other"}`, { "aria-hidden": "true" });
}

function entryRow(s: Snapshot, path: string[], e: Entry, showPath = false): HTMLElement {
  const full = [...path, e.name];
  const name = displayName(e.name);
  const shown = showPath ? full.map(displayName).join("/") : name;
  let title: Node;
  let action: Node | null = null;
  if (e.type === "dir") {
    title = linkButton(shown, () => void browse(s, full), `open folder ${name}`);
    action = h("button.small-btn", { type: "button", onclick: () => void downloadZip(s, full, e) }, "Zip");
  } else if (e.type === "file") {
    title = linkButton(shown, () => void showFile(s, full, e), `details of ${name}`);
    action = h("button.small-btn", { type: "button", onclick: () => void downloadFile(e, name) }, "Download");
  } else {
    title = h("span", {}, shown, h("span.muted.small", {}, e.type === "symlink" ? ` → ${e.target ?? ""}` : ` (${e.type})`));
  }
  return h("tr", {}, h("td.name", {}, icon(e), title), h("td.num", {}, e.type === "file" ? size(e.size) : ""),
    h("td.wide-only.muted", {}, when(e.mtimeNs)), h("td.act", {}, action));
}

function entryTable(): { table: HTMLElement; body: HTMLElement } {
  const body = h("tbody");
  const table = h("div.scroll", {}, h("table.entries", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th.num", {}, "Size"), h("th.wide-only", {}, "Modified"), h("th", {}, ""))), body));
  return { table, body };
}

async function browse(s: Snapshot, path: string[]): Promise<void> {
  if (!signed) return;
  const reader = signed.reader;
  flash("");
  const { table, body } = entryTable();
  const zipName = path.length ? displayName(path[path.length - 1]) : `snapshot ${s.id.slice(0, 8)}`;
  const zipButton = h("button", { type: "button" }, "Download folder as zip");
  view(
    crumbs(...pathCrumbs(s, path)),
    h("div.card", {},
      h("div.toolbar", {}, h("h1", {}, path.length ? displayName(path[path.length - 1]) : "All folders"), searchForm(s)),
      h("p.muted.small", {}, `Snapshot ${s.id.slice(0, 8)} of ${s.host}, ${when(s.timeNs)}: ${s.paths.join(", ")}`),
      table,
      h("div.foot", {}, zipButton)),
  );
  const signal = work.signal;
  try {
    let treeId = s.tree;
    if (path.length) {
      const entry = await reader.resolve(s, path, signal);
      if (!entry || entry.type !== "dir" || !entry.subtree) throw new Error("this folder is not in the snapshot");
      treeId = entry.subtree;
      zipButton.addEventListener("click", () => void downloadZip(s, path, entry));
    } else {
      zipButton.addEventListener("click", () => void downloadZip(s, [], { ...rootEntry(s), name: zipName }));
    }
    const entries = sorted(await reader.tree(treeId, signal));
    touch();
    if (!entries.length) append(body, h("tr", {}, h("td.muted", { colspan: "4" }, "This folder is empty.")));
    for (const e of entries) append(body, entryRow(s, path, e));
  } catch (err) {
    failed(err, "Could not open this folder: ");
  }
}

function rootEntry(s: Snapshot): Entry {
  return { name: "", type: "dir", mode: 0o755, mtimeNs: s.timeNs, size: 0, content: [], subtree: s.tree, target: null, hardlink: null, holes: [] };
}

// ---- search ------------------------------------------------------------------------------

async function search(s: Snapshot, query: string): Promise<void> {
  if (!signed) return;
  const reader = signed.reader;
  flash("");
  const { table, body } = entryTable();
  const status = h("p.muted.small", { "aria-live": "polite" }, "Searching…");
  const stop = h("button.small-btn", { type: "button", onclick: () => work.abort() }, "Stop");
  view(
    crumbs(linkButton("Snapshots", () => void showSnapshots()), snapCrumb(s), h("strong", {}, "Search")),
    h("div.card", {}, h("div.toolbar", {}, h("h1", {}, `Names containing “${query}”`), searchForm(s, query)), h("div.line", {}, status, stop), table),
  );
  const signal = work.signal;
  const needle = query.toLocaleLowerCase();
  let folders = 1;
  let found = 0;
  let seen = 0;
  try {
    for await (const { path, entry } of reader.walk(s.tree, [], signal)) {
      if (entry.type === "dir") folders++;
      if (displayName(entry.name).toLocaleLowerCase().includes(needle)) {
        found++;
        append(body, entryRow(s, path.slice(0, -1), entry, true));
        if (found >= SEARCH_LIMIT) break;
      }
      if (++seen % 200 === 0) status.textContent = `${count(found, "match", "matches")} in ${count(folders, "folder")} so far…`;
    }
    touch();
    const more = found >= SEARCH_LIMIT ? ` (the first ${SEARCH_LIMIT}; search for something longer)` : "";
    status.textContent = `${count(found, "match", "matches")} in ${count(folders, "folder")}${more}.`;
  } catch (err) {
    status.textContent = signal.aborted ? `Stopped: ${count(found, "match", "matches")} in ${count(folders, "folder")}.` : "";
    failed(err, "The search failed: ");
  } finally {
    stop.remove();
  }
}

// ---- a file and its versions ---------------------------------------------------------------

function contentKey(e: Entry): string {
  return e.content.map((r) => `${r.id}:${r.offset}:${r.length}`).join(",");
}

async function showFile(s: Snapshot, path: string[], e: Entry): Promise<void> {
  if (!signed) return;
  const reader = signed.reader;
  flash("");
  const name = displayName(e.name);
  const previewBox = h("div.preview-box");
  const kind = previewKind(e);
  const versions = h("tbody");
  const status = h("p.muted.small", {}, "Looking for this file in your other snapshots…");
  view(
    crumbs(...pathCrumbs(s, path)),
    h("div.card", {},
      h("h1", {}, name),
      h("dl.facts", {},
        h("dt", {}, "Size"), h("dd", {}, `${size(e.size)} (${e.size.toLocaleString("en")} bytes)`),
        h("dt", {}, "Modified"), h("dd", {}, when(e.mtimeNs)),
        h("dt", {}, "Folder"), h("dd", {}, h("code", {}, "/" + path.slice(0, -1).map(displayName).join("/"))),
        h("dt", {}, "Snapshot"), h("dd", {}, `${s.id.slice(0, 8)} · ${snapLabel(s)}`)),
      h("div.buttons", {},
        h("button.primary", { type: "button", onclick: () => void downloadFile(e, name) }, "Download"),
        kind ? h("button", { type: "button", onclick: () => void preview(e, name, previewBox) }, "Preview") : null),
      previewBox),
    h("div.card", {}, h("h2", {}, "Versions in your snapshots"), status,
      h("div.scroll", {}, h("table.versions", {}, h("thead", {}, h("tr", {}, h("th", {}, "Snapshot"), h("th.num", {}, "Size"),
        h("th.wide-only", {}, "Modified"), h("th", {}, ""), h("th", {}, ""))), versions))),
  );
  const signal = work.signal;
  let present = 0;
  let previous: string | null = null;
  try {
    for (const item of snapshots) {
      if (signal.aborted) return;
      const other = item.snapshot;
      if (!other) continue;
      const found = await reader.resolve(other, path, signal);
      if (!found || found.type !== "file") continue;
      present++;
      const key = contentKey(found);
      const note = other.id === s.id ? "this one" : key === previous ? "unchanged" : "";
      previous = key;
      append(versions, h("tr", other.id === s.id ? { class: "current" } : {},
        h("td", {}, linkButton(snapLabel(other), () => void showFile(other, path, found))),
        h("td.num", {}, size(found.size)),
        h("td.wide-only.muted", {}, when(found.mtimeNs)),
        h("td.muted.small", {}, note),
        h("td.act", {}, h("button.small-btn", { type: "button", onclick: () => void downloadFile(found, name) }, "Download"))));
    }
    touch();
    status.textContent = `In ${count(present, "snapshot")} of ${snapshots.length}, newest first.`;
  } catch (err) {
    status.textContent = "";
    failed(err, "Could not list the versions: ");
  }
}

async function preview(e: Entry, name: string, box: HTMLElement): Promise<void> {
  if (!signed) return;
  clear(box, h("p.muted.small", {}, "Loading the preview…"));
  try {
    clear(box, await renderPreview(signed.reader, e, name, work.signal));
    touch();
  } catch (err) {
    clear(box);
    failed(err, "The preview failed: ");
  }
}

// ---- downloads ---------------------------------------------------------------------------

async function downloadFile(e: Entry, name: string): Promise<void> {
  if (!signed) return;
  const reader = signed.reader;
  const safe = isPlainName(e.name) ? name : "download";
  const source: Source = {
    size: e.size,
    open: async (signal) => ({ stream: reader.fileStream(e, name, signal), size: e.size }),
  };
  touch();
  await downloads.start(safe, "application/octet-stream", source);
}

async function downloadZip(s: Snapshot, path: string[], e: Entry): Promise<void> {
  if (!signed || !e.subtree) return;
  const reader = signed.reader;
  const top = path.length ? path[path.length - 1] : e.name;
  const name = `${isPlainName(top) ? displayName(top) : "folder"}.zip`;
  const tree = e.subtree;
  const source: Source = {
    size: null,
    sinkFirst: !(await startWorker()) && available().includes("picker"),
    open: async (signal, note) => {
      const plan = await planZip(reader, tree, top || `snapshot-${s.id.slice(0, 8)}`, signal, (n) => note(`listing the folder: ${count(n, "entry", "entries")}…`));
      if (plan.skipped.length) flash(`Not in the zip: ${plan.skipped.slice(0, 5).join("; ")}${plan.skipped.length > 5 ? ` and ${plan.skipped.length - 5} more` : ""}.`, "info");
      return { stream: zipStream(reader, plan, signal), size: Number(plan.length) };
    },
  };
  touch();
  await downloads.start(name, "application/zip", source);
}

// ---- start -------------------------------------------------------------------------------

window.addEventListener("pagehide", () => signed?.api.logout(true));
window.addEventListener("unhandledrejection", (event) => failed(event.reason));
showSignIn();

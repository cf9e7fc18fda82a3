// Builds the restore page into the Python package, where strongroom-server serves it from:
// src/strongroom/server/web/static/restore/. The output is committed, so `pip install .`
// needs no npm. Rebuild after changing anything here (see README.md):
//
//   cd web/restore && npm ci && npm run check && npm run build
//
// Output: index.html and restore.css (copied), restore.js and vectors.js (ES modules; the
// decoding code they share is one chunk), sw.js (the download worker, a classic script),
// third-party-licenses.txt (the bundled libraries' licences).

import { build } from "esbuild";
import { copyFile, mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "src", "strongroom", "server", "web", "static", "restore");

await rm(out, { recursive: true, force: true }); // no stale chunk left behind
await mkdir(out, { recursive: true });

const common = {
  bundle: true,
  minify: true,
  target: ["chrome111", "firefox111", "safari16.4"],
  legalComments: "eof", // the libraries' licence notices stay in the files
  logLevel: "warning",
  charset: "utf8",
};

await build({
  ...common,
  entryPoints: { restore: join(here, "src", "main.ts"), vectors: join(here, "src", "vectors.ts") },
  outdir: out,
  format: "esm",
  splitting: true,
  chunkNames: "shared-[hash]",
});

await build({
  ...common,
  entryPoints: { sw: join(here, "src", "sw.ts") },
  outdir: out,
  format: "iife",
});

for (const name of ["index.html", "restore.css"]) await copyFile(join(here, name), join(out, name));

// The bundled libraries' licences, served beside the page.
const notices = [];
for (const [pkg, file] of [["hash-wasm", "LICENSE"], ["fzstd", "LICENSE"], ["client-zip", "LICENSE.txt"]]) {
  const { version } = JSON.parse(await readFile(join(here, "node_modules", pkg, "package.json"), "utf8"));
  const text = await readFile(join(here, "node_modules", pkg, file), "utf8");
  notices.push(`${pkg} ${version}\n${"=".repeat(40)}\n${text.trim()}\n`);
}
await writeFile(join(out, "third-party-licenses.txt"), notices.join("\n"));

const files = (await readdir(out)).sort();
console.log(`built ${files.length} files into ${out}: ${files.join(", ")}`);

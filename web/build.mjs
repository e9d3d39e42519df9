// Bundles the playground into src/execbox/playground/static/ (committed, so that
// installing execbox needs no Node). `npm install && npm run build` after a change.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const out = new URL("../src/execbox/playground/static/", import.meta.url).pathname;
await rm(out, { recursive: true, force: true }); // no stale chunks left behind
await mkdir(out, { recursive: true });
await build({
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  format: "esm",
  splitting: true, // each language's grammar is a chunk loaded when chosen
  chunkNames: "chunks/[name]-[hash]",
  target: "es2020",
  outdir: out,
  logLevel: "info",
});
await build({
  entryPoints: { app: "src/style.css" },
  bundle: true,
  minify: true,
  outdir: out,
  logLevel: "info",
});
await copyFile("src/index.html", `${out}index.html`);

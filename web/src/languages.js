// Editor modes per execbox language name. Each grammar is its own chunk, fetched
// (from execbox itself) when its language is first chosen, so the page starts small.
const MODES = {
  python: () => import("@codemirror/lang-python").then((m) => m.python()),
  javascript: () => import("@codemirror/lang-javascript").then((m) => m.javascript()),
  typescript: () =>
    import("@codemirror/lang-javascript").then((m) => m.javascript({ typescript: true })),
  java: () => import("@codemirror/lang-java").then((m) => m.java()),
  go: () => import("@codemirror/lang-go").then((m) => m.go()),
  c: () => import("@codemirror/lang-cpp").then((m) => m.cpp()),
  cpp: () => import("@codemirror/lang-cpp").then((m) => m.cpp()),
  rust: () => import("@codemirror/lang-rust").then((m) => m.rust()),
  ruby: () => legacy(import("@codemirror/legacy-modes/mode/ruby").then((m) => m.ruby)),
  php: () => import("@codemirror/lang-php").then((m) => m.php()),
  bash: () => legacy(import("@codemirror/legacy-modes/mode/shell").then((m) => m.shell)),
};

async function legacy(mode) {
  const { StreamLanguage } = await import("@codemirror/language");
  return StreamLanguage.define(await mode);
}

export async function editorMode(name) {
  const load = MODES[name];
  return load ? load() : [];
}

export function indentUnitFor(name) {
  if (name === "go") return "\t";
  return name === "ruby" || name === "bash" ? "  " : "    ";
}

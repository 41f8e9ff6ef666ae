#!/usr/bin/env python3
"""One abathur stand-in service. `abathur-api` answers GET /health on
127.0.0.1:<port>: {"status": "healthy"} when the database opens read-only,
passes PRAGMA quick_check and its core tables answer; 503 otherwise. The
other services (workers, document sync, ollama) just run until stopped."""
import argparse, http.server, json, signal, sqlite3, sys, time

p = argparse.ArgumentParser()
p.add_argument("--root", required=True)
p.add_argument("--db", required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--name", required=True)
a = p.parse_args()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def check():
    conn = sqlite3.connect("file:%s?mode=ro" % a.db, uri=True, timeout=30)
    try:
        qc = conn.execute("PRAGMA quick_check").fetchone()[0]
        if qc != "ok":
            return "quick_check: %s" % qc
        for t in ("tasks", "agents", "audit", "checkpoints", "state", "metrics"):
            conn.execute('SELECT count(*) FROM "%s"' % t).fetchone()
        return None
    finally:
        conn.close()


class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/health":
            self.send_response(404)
            self.end_headers()
            return
        try:
            err = check()
        except Exception as e:
            err = str(e)
        body = json.dumps({"status": "healthy"} if err is None else {"status": "unhealthy", "error": err})
        self.send_response(200 if err is None else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())


if a.name == "abathur-api":
    http.server.ThreadingHTTPServer(("127.0.0.1", a.port), H).serve_forever()
else:
    while True:
        time.sleep(1)

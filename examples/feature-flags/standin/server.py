#!/usr/bin/env python3
"""A stand-in for the application of the feature-flags runbook
(ROLLBACK_PROCEDURES.md: GAP-001 parallel spawning, QW-001 parallel uploads,
QW-002 MCP tracking), for tests and demos. It lives in the application's git
tree, and everything it does follows from the tree it runs from:

- `release.json` (tracked, one per release) says what this release gets
  wrong: `broken_features` fail while their flag is on, `core_broken` fails
  everything, `schema` is the memory-database schema the code supports and
  `migrate` makes it migrate the database to that schema when it starts;
- `VERSION` is what GET /api/health reports;
- `.env` holds the feature flags (the last definition wins, like dotenv);
- `node_modules/.installed` must hold package.json's version (npm ci) and
  `.next/BUILD_ID` the VERSION (npm run build), or the app is unhealthy;
- `.swarm/memory.db` is the MCP memory database (table agent_activities).

It serves GET /api/health, POST /api/agents/spawn and POST /api/upload on
127.0.0.1, and writes timestamped lines to the log file: one line per unit of
background work (spawn, upload, MCP tracking), and the runbook's fallback
markers ("sequential spawning", "sequential upload", "MCP ... unavailable")
when a feature is disabled.

    server.py --port 3000 --log /var/log/app.log [--tick 0.1] [--untimed-work]

With --untimed-work the work lines carry no timestamp (an app logging its
requests with console.log); only the lifecycle lines have one.
"""

import argparse
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.abspath(__file__))
FEATURES = [
    ("spawning", "ENABLE_PARALLEL_SPAWNING"),
    ("uploads", "ENABLE_PARALLEL_UPLOADS"),
    ("mcp", "ENABLE_MCP_TRACKING"),
]


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Log:
    def __init__(self, path, untimed_work=False):
        self.path = path
        self.untimed_work = untimed_work
        self.lock = threading.Lock()

    def write(self, level, msg, work=False):
        # --untimed-work: the work lines go out like console.log, without a
        # timestamp; lifecycle lines keep theirs.
        stamp = "" if work and self.untimed_work else f"{now()} "
        with self.lock, open(self.path, "a") as f:
            f.write(f"{stamp}{level:<5} {msg}\n")


def read(rel, default=None):
    try:
        with open(os.path.join(ROOT, rel)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default


def read_env():
    env = {}
    for line in (read(".env", "") or "").splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("export "):
            s = s[len("export "):].strip()
        if "=" not in s:
            continue
        key, value = s.split("=", 1)
        value = value.strip()
        if value[:1] in ("'", '"') and value[0] in value[1:]:
            value = value[1 : value.index(value[0], 1)]
        else:
            value = value.split(" #")[0].strip()
        env[key.strip()] = value
    return env


def enabled(env, flag):
    return env.get(flag, "true").strip().lower() not in ("false", "0", "no", "off")


class App:
    def __init__(self, log):
        self.log = log
        self.release = json.loads(read("release.json", "{}") or "{}")
        self.version = read("VERSION", "unknown")
        self.env = read_env()
        self.on = {name: enabled(self.env, flag) for name, flag in FEATURES}
        self.problems = []
        pkg = json.loads(read("package.json", "{}") or "{}").get("version")
        installed = read("node_modules/.installed")
        if installed != pkg:
            self.problems.append(
                f"dependencies out of date: node_modules has {installed!r}, package.json {pkg!r}"
            )
        built = read(".next/BUILD_ID")
        if built != self.version:
            self.problems.append(f"build out of date: .next has {built!r}, the tree {self.version!r}")
        self.check_memory_db()
        if self.release.get("core_broken"):
            self.problems.append(
                self.release.get(
                    "core_error", "TypeError: Cannot read properties of undefined (reading 'agents')"
                )
            )

    def check_memory_db(self):
        path = os.path.join(ROOT, ".swarm", "memory.db")
        if not os.path.exists(path):
            return
        supported = int(self.release.get("schema", 1))
        try:
            db = sqlite3.connect(path)
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if self.release.get("migrate") and version < supported:
                db.execute("ALTER TABLE agent_activities ADD COLUMN batch_id TEXT")
                db.execute(f"PRAGMA user_version = {supported}")
                db.commit()
                self.log.write("INFO", f"memory database migrated from schema {version} to {supported}")
                version = supported
            if version > supported:
                self.problems.append(
                    f"memory database error: schema {version} is newer than this build supports ({supported})"
                )
            db.execute("SELECT COUNT(*) FROM agent_activities").fetchone()
            db.close()
        except sqlite3.Error as e:
            self.problems.append(f"memory database error: {e}")

    def fails(self, feature):
        if self.problems:
            return self.problems[0]
        if self.on[feature] and feature in self.release.get("broken_features", []):
            return {
                "spawning": "parallel spawn timed out waiting for MCP dependency resolution",
                "uploads": "parallel upload failed: HTTP 207 Multi-Status, S3 connection reset",
                "mcp": "MCP connection failed: memory database unavailable",
            }[feature]
        return None

    def work(self, feature, why=""):
        """One unit of background work; returns (ok, message)."""
        err = self.fails(feature)
        word = {"spawning": "spawn", "uploads": "upload", "mcp": "mcp tracking"}[feature]
        if err:
            self.log.write("ERROR", f"{word} failed{why}: {err} duration_ms=5000", work=True)
            return False, err
        if not self.on[feature]:
            msg = {
                "spawning": "spawn ok: sequential spawning, 750ms per agent duration_ms=750",
                "uploads": "upload ok: sequential upload duration_ms=300",
                "mcp": "MCP tracking unavailable: local-only tracking duration_ms=1",
            }[feature]
            self.log.write("INFO", msg + why, work=True)
            return True, msg
        self.log.write("INFO", f"{word} ok mode=parallel{why} duration_ms=120", work=True)
        return True, "ok"

    def start(self):
        self.log.write("INFO", f"server started version={self.version} pid={os.getpid()}")
        if not self.on["spawning"]:
            self.log.write("INFO", "ENABLE_PARALLEL_SPAWNING=false: using sequential spawning")
        if not self.on["uploads"]:
            self.log.write("INFO", "ENABLE_PARALLEL_UPLOADS=false: using sequential upload")
        if not self.on["mcp"]:
            self.log.write("WARN", "MCP tracking unavailable (ENABLE_MCP_TRACKING=false): local-only, no persistence")
        for p in self.problems:
            self.log.write("ERROR", f"health check failing: {p}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--tick", type=float, default=0.1)
    ap.add_argument("--untimed-work", action="store_true")
    args = ap.parse_args()
    log = Log(args.log, args.untimed_work)
    app = App(log)

    def stop(signum, frame):
        log.write("INFO", f"server stopping (signal {signum})")
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path != "/api/health":
                return self.reply(404, {"error": "not found"})
            body = {"status": "healthy", "version": app.version, "timestamp": now()}
            if app.problems:
                body["status"] = "unhealthy"
                body["error"] = "; ".join(app.problems)
                return self.reply(503, body)
            self.reply(200, body)

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            feature = {"/api/agents/spawn": "spawning", "/api/upload": "uploads"}.get(self.path)
            if feature is None:
                return self.reply(404, {"error": "not found"})
            ok, msg = app.work(feature, " (request)")
            self.reply(200 if ok else 500, {"ok": ok, "message": msg})

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    app.start()

    def background():
        i = 0
        while True:
            app.work(FEATURES[i % len(FEATURES)][0])
            i += 1
            time.sleep(args.tick)

    threading.Thread(target=background, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())

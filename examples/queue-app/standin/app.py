#!/usr/bin/env python3
"""The queue app stand-in: a python3 HTTP server on loopback with the
runbook's endpoints, and its "workers" (a thread) processing Bull-like
queues held in memory.

    app.py --dir APP_DIR

Settings come from APP_DIR/run/standin.json (port, queues and their
initial counts, tick, log files, Redis port). The code it runs is what
`ctl.py build` put in APP_DIR/dist: dist/app.json (version, health, error
rate, delay, features, "down": every endpoint fails) and dist/queues.json (the queue workers' code:
fail_percent). Every request is logged to the calls log as one JSON line
with a timestamp, the total of active jobs and the paused queues.
"""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = sys.argv[sys.argv.index("--dir") + 1]
SETTINGS = json.load(open(os.path.join(APP, "run", "standin.json")))
LOCK = threading.RLock()


def load(name, default):
    try:
        return json.load(open(os.path.join(APP, "dist", name)))
    except (OSError, ValueError):
        return default


CODE = load("app.json", {"version": "unbuilt", "healthy": False})
WORKER = load("queues.json", {"fail_percent": 0})
QUEUES = {}
for name in SETTINGS["queues"]:
    init = SETTINGS.get("initial", {}).get(name, {})
    QUEUES[name] = {
        "waiting": init.get("waiting", 0),
        "active": init.get("active", 0),
        "completed": init.get("completed", 0),
        "failed": init.get("failed", 0),
        "paused": init.get("paused", False),
        "done": 0,
        "backlog": init.get("waiting", 0),
    }
def redis(*args):
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(SETTINGS["redis_port"])] + list(args),
        capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def set_paused(name, paused):
    # Like Bull, the pause is kept in Redis: it outlives a restart.
    QUEUES[name]["paused"] = paused
    if paused:
        redis("SET", "bull:%s:meta-paused" % name, "1")
    else:
        redis("DEL", "bull:%s:meta-paused" % name)


for name in QUEUES:
    if redis("GET", "bull:%s:meta-paused" % name) == "1":
        QUEUES[name]["paused"] = True
FLAGS = {}
STATE = {"maintenance": False, "requests": 0}


def log(line):
    with open(SETTINGS["app_log"], "a") as f:
        f.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), line))


def workers_stopped():
    return os.path.exists(os.path.join(APP, "run", "workers.stopped"))


def tick():
    global WORKER
    while True:
        time.sleep(SETTINGS.get("tick_ms", 100) / 1000.0)
        reload = os.path.join(APP, "run", "workers.reload")
        if os.path.exists(reload):
            WORKER = load("queues.json", {"fail_percent": 0})
            os.remove(reload)
            log("INFO workers restarted with queue code %s" % WORKER.get("version", "?"))
        with LOCK:
            for q in QUEUES.values():
                # An active job finishes (also when the workers were closed:
                # close() lets the active jobs complete).
                if q["active"] > 0:
                    q["active"] -= 1
                    n = q["done"]
                    q["done"] += 1
                    p = WORKER.get("fail_percent", 0)
                    if (n + 1) * p // 100 > n * p // 100:
                        q["failed"] += 1
                    else:
                        q["completed"] += 1
                # Workers take the next job unless paused or closed.
                if not q["paused"] and not workers_stopped() and q["waiting"] > 0:
                    q["waiting"] -= 1
                    q["active"] += 1
                # Traffic: new jobs keep the backlog full while not paused.
                if not q["paused"] and q["waiting"] < q["backlog"]:
                    q["waiting"] += 1


def total_active():
    return sum(q["active"] for q in QUEUES.values())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        with LOCK:
            entry = {
                "t": time.time(),
                "m": self.command,
                "p": self.path,
                "s": status,
                "active": total_active(),
                "paused": sorted(n for n, q in QUEUES.items() if q["paused"]),
                "version": CODE.get("version"),
                "pid": os.getpid(),
            }
        with open(SETTINGS["calls_log"], "a") as f:
            f.write(json.dumps(entry) + "\n")

    def down(self):
        # A release whose API is completely down: every endpoint fails.
        if CODE.get("down"):
            log("ERROR %s %s failed: service unavailable in version %s" % (self.command, self.path, CODE.get("version")))
            self.reply(500, {"error": "service unavailable"})
            return True
        return False

    def do_GET(self):
        if self.down():
            return
        path = self.path.split("?")[0]
        if path == "/health":
            if CODE.get("healthy"):
                return self.reply(200, {"status": "ok", "version": CODE["version"]})
            log("ERROR health check failed: version %s" % CODE.get("version"))
            return self.reply(500, {"status": "error", "version": CODE.get("version")})
        if path == "/api/version":
            return self.reply(200, CODE.get("version", "?"))
        if path == "/api/queue/stats":
            with LOCK:
                body = {"queues": {n: {k: v for k, v in q.items() if k not in ("done", "backlog")} for n, q in QUEUES.items()}}
            return self.reply(200, body)
        if path in ("/api/projects", "/api/analysis"):
            time.sleep(CODE.get("delay_ms", 0) / 1000.0)
            with LOCK:
                n = STATE["requests"]
                STATE["requests"] += 1
            p = CODE.get("error_percent", 0)
            if (n + 1) * p // 100 > n * p // 100:
                log("ERROR %s failed in version %s" % (path, CODE.get("version")))
                return self.reply(500, {"error": "internal"})
            return self.reply(200, {"items": [], "version": CODE.get("version")})
        if path.startswith("/api/features/"):
            name = path.rsplit("/", 1)[1]
            if FLAGS.get(name) == "disabled":
                return self.reply(404, {"feature": name, "disabled": True})
            if CODE.get("features", {}).get(name) == "broken":
                log("ERROR feature %s failed" % name)
                return self.reply(500, {"feature": name, "error": "broken"})
            return self.reply(200, {"feature": name, "ok": True})
        return self.reply(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.down():
            return
        path = self.path.split("?")[0]
        parts = path.strip("/").split("/")
        with LOCK:
            if path == "/api/queue/pause-all":
                for n in QUEUES:
                    set_paused(n, True)
                return self.reply(200, {"paused": list(QUEUES)})
            if path == "/api/queue/resume-all":
                for n in QUEUES:
                    set_paused(n, False)
                return self.reply(200, {"resumed": list(QUEUES)})
            if path == "/api/queue/clean-all":
                cleaned = sum(q["failed"] for q in QUEUES.values())
                for q in QUEUES.values():
                    q["failed"] = 0
                return self.reply(200, {"cleaned": cleaned})
            if len(parts) == 4 and parts[:2] == ["api", "queue"] and parts[3] in ("pause", "resume"):
                q = QUEUES.get(parts[2])
                if q is None:
                    return self.reply(404, {"error": "no queue %s" % parts[2]})
                set_paused(parts[2], parts[3] == "pause")
                return self.reply(200, {parts[3]: parts[2]})
            if path in ("/api/maintenance/enable", "/api/maintenance/disable"):
                STATE["maintenance"] = path.endswith("enable")
                return self.reply(200, {"maintenance": STATE["maintenance"]})
            if len(parts) == 4 and parts[:2] == ["api", "flags"] and parts[3] == "disable":
                FLAGS[parts[2]] = "disabled"
                return self.reply(200, {"flag": parts[2], "disabled": True})
        if path == "/api/cache/warm":
            ok = redis("SET", "cache:warm:projects", CODE.get("version", "?")) == "OK"
            return self.reply(200 if ok else 500, {"warmed": ok})
        return self.reply(404, {"error": "not found"})


def main():
    log("INFO started version %s pid %d" % (CODE.get("version"), os.getpid()))
    threading.Thread(target=tick, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", SETTINGS["port"]), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()

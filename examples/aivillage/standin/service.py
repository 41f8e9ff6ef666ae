#!/usr/bin/env python3
"""One AIVillage service of the rewind stand-in: gateway, p2p, agents or rag.

    service.py --root ROOT --name NAME

Reads ROOT/config/.env, imports the component's module from the tree
(core/gateway/server.py, core/p2p/mesh_protocol.py,
core/agents/cognative_nexus_controller.py, core/rag/hyper_rag.py) once at
start, like the real service, and serves on 127.0.0.1:<NAME>_PORT (from
the .env):

    GET  /health     200 when the module's health(env) is true, else 500,
                     with {"service", "status", "detail", "version", "release"}
    POST /api/query  (gateway) answers {"query", "user_id"}; appended to
                     ROOT/logs/queries.log

Once it listens it writes its pid to ROOT/run/NAME.pid and appends
"NAME <pid> <version>" to ROOT/logs/starts.log; on TERM it removes the pid
file and exits. A module that does not import, or a port that is taken,
makes it exit 1 at start.
"""

import argparse
import importlib.util
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.dont_write_bytecode = True

MODULES = {
    "gateway": "core/gateway/server.py",
    "p2p": "core/p2p/mesh_protocol.py",
    "agents": "core/agents/cognative_nexus_controller.py",
    "rag": "core/rag/hyper_rag.py",
}


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--name", required=True, choices=sorted(MODULES))
    a = ap.parse_args()
    try:
        os.setsid()  # its own session: outlives whoever started it
    except OSError:
        pass
    root, name = os.path.abspath(a.root), a.name
    env = read_env(os.path.join(root, "config/.env"))
    port = int(env[name.upper() + "_PORT"])
    sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(
        "aivillage_" + name, os.path.join(root, MODULES[name])
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    version = str(getattr(module, "VERSION", "unknown"))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass  # no request log: probes must not change the tree

        def reply(self, code, obj):
            body = (json.dumps(obj) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path != "/health":
                return self.reply(404, {"error": "not found"})
            try:
                ok = bool(module.health(env))
                detail = "ok" if ok else "health() returned false"
            except Exception as e:  # a broken release
                ok, detail = False, "%s: %s" % (type(e).__name__, e)
            self.reply(
                200 if ok else 500,
                {
                    "service": name,
                    "status": "ok" if ok else "unhealthy",
                    "detail": detail,
                    "version": version,
                    "release": env.get("RELEASE", "unknown"),
                },
            )

        def do_POST(self):
            if name != "gateway" or self.path != "/api/query":
                return self.reply(404, {"error": "not found"})
            n = int(self.headers.get("Content-Length") or 0)
            try:
                q = json.loads(self.rfile.read(n) or b"{}")
            except ValueError:
                return self.reply(400, {"error": "bad JSON"})
            answer = module.answer(q.get("query", "")) if hasattr(module, "answer") else "ok"
            with lock, open(os.path.join(root, "logs/queries.log"), "a") as f:
                f.write(json.dumps({"user_id": q.get("user_id"), "query": q.get("query")}) + "\n")
            self.reply(200, {"answer": answer, "user_id": q.get("user_id"), "version": version})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    os.makedirs(os.path.join(root, "run"), exist_ok=True)
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    pid_file = os.path.join(root, "run", name + ".pid")

    def stop(*_):
        try:
            if open(pid_file).read().strip() == str(os.getpid()):
                os.remove(pid_file)
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(os.path.join(root, "logs/starts.log"), "a") as f:
        f.write("%s %d %s\n" % (name, os.getpid(), version))
    tmp = pid_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % os.getpid())
    os.rename(tmp, pid_file)
    print("aivillage-%s %s listening on 127.0.0.1:%d" % (name, version, port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

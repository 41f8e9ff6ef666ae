#!/usr/bin/env python3
"""What npm and pm2 do for the queue app stand-in (app.py).

    ctl.py --dir APP_DIR install | build | start | stop | restart-all |
                         stop-worker | restart-worker | smoke

install   npm install: node_modules/.installed <- app.json "deps"
build     npm run build: dist/ <- app.json, backend/src/queues/worker.json;
          fails when the installed deps are not the app's
start     start app.py detached, pid in run/app.pid; wait until it answers
stop      TERM the pid in run/app.pid, wait until it is gone
restart-all     pm2 restart all: stop, start
stop-worker     pm2 stop queue-worker: the workers take no new job
restart-worker  pm2 restart queue-worker: reload dist/queues.json, run again
smoke     npm run test:smoke: /health and /api/projects answer 200
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

APP = os.path.abspath(sys.argv[sys.argv.index("--dir") + 1])
CMD = sys.argv[-1]
RUN = os.path.join(APP, "run")
HERE = os.path.dirname(os.path.abspath(__file__))


def settings():
    return json.load(open(os.path.join(RUN, "standin.json")))


def pid():
    try:
        return int(open(os.path.join(RUN, "app.pid")).read().strip())
    except (OSError, ValueError):
        return None


def alive(p):
    try:
        with open("/proc/%d/stat" % p) as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def get(path):
    url = "http://127.0.0.1:%d%s" % (settings()["port"], path)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def stop():
    p = pid()
    if p and alive(p):
        os.kill(p, signal.SIGTERM)
        for _ in range(200):
            if not alive(p):
                break
            time.sleep(0.02)
        if alive(p):
            os.kill(p, signal.SIGKILL)
    print("stopped %s" % p)


def start():
    s = settings()
    log = open(s["app_log"], "a")
    child = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "app.py"), "--dir", APP],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    with open(os.path.join(RUN, "app.pid"), "w") as f:
        f.write("%d\n" % child.pid)
    for _ in range(500):
        if get("/api/version") is not None:
            print("started pid %d" % child.pid)
            return
        time.sleep(0.02)
    sys.exit("app.py did not answer")


def main():
    os.makedirs(RUN, exist_ok=True)
    with open(os.path.join(RUN, "ctl.log"), "a") as f:
        f.write("%f %s\n" % (time.time(), CMD))
    app = json.load(open(os.path.join(APP, "app.json")))
    if CMD == "install":
        os.makedirs(os.path.join(APP, "node_modules"), exist_ok=True)
        with open(os.path.join(APP, "node_modules", ".installed"), "w") as f:
            f.write(app["deps"])
        print("installed deps %s" % app["deps"])
    elif CMD == "build":
        try:
            installed = open(os.path.join(APP, "node_modules", ".installed")).read()
        except OSError:
            installed = None
        if installed != app["deps"]:
            sys.exit("build failed: installed deps %r, the app needs %r (run install)" % (installed, app["deps"]))
        os.makedirs(os.path.join(APP, "dist"), exist_ok=True)
        shutil.copy(os.path.join(APP, "app.json"), os.path.join(APP, "dist", "app.json"))
        shutil.copy(os.path.join(APP, "backend/src/queues/worker.json"), os.path.join(APP, "dist", "queues.json"))
        print("built version %s" % app["version"])
    elif CMD == "start":
        start()
    elif CMD == "stop":
        stop()
    elif CMD == "restart-all":
        stop()
        start()
    elif CMD == "stop-worker":
        open(os.path.join(RUN, "workers.stopped"), "w").close()
        print("queue-worker stopped")
    elif CMD == "restart-worker":
        open(os.path.join(RUN, "workers.reload"), "w").close()
        if os.path.exists(os.path.join(RUN, "workers.stopped")):
            os.remove(os.path.join(RUN, "workers.stopped"))
        print("queue-worker restarted")
    elif CMD == "smoke":
        for path in ("/health", "/api/projects"):
            status = get(path)
            if status != 200:
                sys.exit("smoke: GET %s -> %s" % (path, status))
        print("smoke tests passed")
    else:
        sys.exit("unknown command %s" % CMD)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write a release of the queue app stand-in into its checkout, for
`rewind drill` (the [[drill]] scenarios of examples/queue-app/rewind.toml):
the edit a developer makes before the team's deployment (git commit, then
ctl.py install, build, restart-all).

    release.py --dir APP_DIR [--worker] KEY=VALUE...

Sets each KEY of APP_DIR/app.json (with --worker: of
APP_DIR/backend/src/queues/worker.json, the queue workers' code) to VALUE:
a string where the key holds a string (version=1.1.0, deps=2), else read
as JSON (healthy=false, fail_percent=20, features={"export": "broken"}).
Every other key is kept. It only writes the file: nothing is committed,
built or restarted.
"""

import json
import os
import sys


def main():
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "--dir":
        sys.exit("usage: release.py --dir APP_DIR [--worker] KEY=VALUE...")
    app = os.path.abspath(args[1])
    rest = args[2:]
    rel = "app.json"
    if rest and rest[0] == "--worker":
        rel, rest = "backend/src/queues/worker.json", rest[1:]
    if not rest or not all("=" in kv for kv in rest):
        sys.exit("usage: release.py --dir APP_DIR [--worker] KEY=VALUE...")
    path = os.path.join(app, rel)
    with open(path) as f:
        doc = json.load(f)
    for kv in rest:
        key, value = kv.split("=", 1)
        if isinstance(doc.get(key), str):
            doc[key] = value
        else:
            try:
                doc[key] = json.loads(value)
            except ValueError:
                doc[key] = value
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
    os.rename(tmp, path)
    print("%s: %s" % (rel, ", ".join(rest)))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A deployment of a bad AIVillage release on the stand-in, for `rewind drill`
(the [[drill]] scenarios of examples/aivillage/rewind.toml).

    deploy.py --root ROOT --release VERSION [--fault broken|slow:MS] [--config] COMPONENT...

Like the real deployment the runbook rolls back, it first copies every file
it replaces to `<file>.backup` (files it adds get none), writes the release,
then restarts the deployed components through svc, in the runbook's order:

- each COMPONENT's module (core/gateway/server.py, ...) at VERSION with a
  fault: `broken` (default): health() raises, the service answers 500 (a
  critical component failure); `slow:MS`: health() answers after MS ms (the
  system's performance degraded from its baseline);
- with --config: config/.env (RELEASE=VERSION, SCHEMA=2, the ports kept),
  config/database_config.json (schema 2), the deployed components' unit
  files under config/systemd, and, when agents is deployed, the legacy shim
  packages/core/legacy/error_handling.py (added: no backup).

Exits non-zero (with svc's message) when a component does not start.
"""

import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["gateway", "p2p", "agents", "rag"]
MODULES = {
    "gateway": "core/gateway/server.py",
    "p2p": "core/p2p/mesh_protocol.py",
    "agents": "core/agents/cognative_nexus_controller.py",
    "rag": "core/rag/hyper_rag.py",
}


def module_text(name, version, fault):
    if fault == "broken":
        return (
            'VERSION = "%s"\napp = None\n\n\ndef health(env):\n'
            '    raise RuntimeError("%s %s: cannot reach its peers")\n' % (version, name, version)
        )
    ms = int(fault.split(":", 1)[1])
    return (
        'import time\n\nVERSION = "%s"\napp = {"name": "%s", "version": VERSION}\n\n\n'
        "def health(env):\n    time.sleep(%g)  # %s %s: %d ms per request\n    return True\n\n\n"
        'def answer(query):\n    return "%s %%s answers %%r" %% (VERSION, query)\n'
        % (version, name, ms / 1000.0, name, version, ms, name)
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--release", required=True)
    ap.add_argument("--fault", default="broken")
    ap.add_argument("--config", action="store_true")
    ap.add_argument("components", nargs="+", choices=ORDER)
    a = ap.parse_args()
    if a.fault != "broken" and not (a.fault.startswith("slow:") and a.fault[5:].isdigit()):
        ap.error("--fault is broken or slow:MS")
    root = os.path.abspath(a.root)
    deployed = [c for c in ORDER if c in a.components]

    def write(rel, text):
        path = os.path.join(root, rel)
        if os.path.exists(path):
            shutil.copy2(path, path + ".backup")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".deploying"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)
        print("deployed %s" % rel)

    for c in deployed:
        write(MODULES[c], module_text(c, a.release, a.fault))
    if a.config:
        env = []
        with open(os.path.join(root, "config/.env")) as f:
            for line in f:
                key = line.split("=", 1)[0].strip()
                if key == "RELEASE":
                    line = "RELEASE=%s\n" % a.release
                elif key == "SCHEMA":
                    line = "SCHEMA=2\n"
                env.append(line)
        write("config/.env", "".join(env))
        write(
            "config/database_config.json",
            '{"url": "postgresql://localhost/aivillage_v2", "schema": 2}\n',
        )
        for c in deployed:
            unit = "config/systemd/aivillage-%s.service" % c
            if os.path.exists(os.path.join(root, unit)):
                write(unit, "[Service]\nExecStart=/opt/aivillage/bin/%s --release %s\n" % (c, a.release))
        if "agents" in deployed:
            write("packages/core/legacy/error_handling.py", "raise ImportError('legacy shim')\n")

    svc = os.path.join(HERE, "svc")
    for c in deployed:
        for cmd in ("stop", "start"):
            out = subprocess.run([svc, "--root", root, cmd, c], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit("svc %s %s: %s%s" % (cmd, c, out.stdout, out.stderr))
        print("restarted aivillage-%s on %s" % (c, a.release))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The rewind demo, from the repository root: bash examples/demo/demo.sh
#
# Starts rewind-demo-service (release 1.0.0, healthy) in a temporary
# directory, breaks it with a deploy of 1.1.0, then lets rewind check, plan
# and run the rollback in examples/demo/rewind.toml, and shows 1.0.0 back.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# GET a URL and print "STATUS BODY" (python3, since curl may be missing).
get() {
  python3 - "$1" <<'PY'
import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=2)
    print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except OSError as e:
    print("no answer:", e)
PY
}

say "Building rewind, the demo service and the demo plugin"
rustup target add wasm32-wasip2
cargo build -p rewind --bins
# The same command and target dir as tests/artifacts/build.rs.
cargo build --target wasm32-wasip2 --profile plugin -p rewind-plugin-demo --target-dir target/plugins

ROOT=$(mktemp -d)
# rewind's journals and state live beside the site, out of the plugin's
# write grant.
STATE=$(mktemp -d)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export REWIND_DEMO_ROOT=$ROOT REWIND_DEMO_STATE=$STATE REWIND_DEMO_PORT=$PORT
SERVICE=target/debug/rewind-demo-service
URL=http://127.0.0.1:$PORT

# On exit, stop the service of this demo only (the pid in its pid file, if
# that process is a `serve --root $ROOT`), and remove its directory.
cleanup() {
  local pid
  pid=$(cat "$ROOT/run/service.pid" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "serve --root $ROOT "; then
    kill "$pid" 2>/dev/null || true
  fi
  rm -rf "$ROOT" "$STATE"
}
trap cleanup EXIT

say "Release 1.0.0 is live in $ROOT, on port $PORT"
"$SERVICE" init --root "$ROOT" --release 1.0.0:healthy --release 1.1.0:broken --current 1.0.0
"$SERVICE" deploy --root "$ROOT" --port "$PORT" --version 1.0.0 >/dev/null
echo "GET /healthz -> $(get "$URL/healthz")"
echo "GET /version -> $(get "$URL/version")"

say "A deploy of 1.1.0 breaks it"
"$SERVICE" deploy --root "$ROOT" --port "$PORT" --version 1.1.0 >/dev/null
echo "GET /healthz -> $(get "$URL/healthz")"

say "rewind check: the runbook grants what the plugin needs"
target/debug/rewind check examples/demo/rewind.toml

say "rewind plan: what a rollback would do (nothing is changed)"
target/debug/rewind plan examples/demo/rewind.toml

say "rewind run: assess, roll back, verify"
target/debug/rewind run examples/demo/rewind.toml

say "Back on 1.0.0"
echo "GET /healthz -> $(get "$URL/healthz")"
version=$(get "$URL/version")
echo "GET /version -> $version"
if [[ "$version" != "200 1.0.0" ]]; then
  echo "demo failed: expected 1.0.0 to be served again" >&2
  exit 1
fi

#!/usr/bin/env bash
# rewind against what a team would otherwise run, side by side in one run:
# a runbook of N steps, each running /bin/true, as
#   - `rewind run` (release build, the fixture plugin, compiled cache warm),
#   - a bash script running /bin/true N times,
#   - an ansible-playbook with N `command: /bin/true` tasks (connection:
#     local), when ansible-playbook is on PATH.
# N = 1, 10, 100, interleaved (every tool and N once per round), RUNS rounds
# (default 7). Prints medians: the fixed cost (N = 1), the per-step slope
# ((T(100) - T(1)) / 99), the peak RSS, and the ratios to bash, with the
# targets of issue 13 (fixed within 2x bash's, per step within 1.3x).
#
#   bench/steps.sh            # RUNS=15 bench/steps.sh for steadier medians
#
# Needs /usr/bin/time (Debian package `time`) for the peak RSS. Touches
# only a temporary directory; starts only the commands it times.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-7}
STEPS=(1 10 100)

say() { printf 'bench/steps.sh: %s\n' "$*" >&2; }
[ -x /usr/bin/time ] || { say "needs /usr/bin/time (apt-get install time)"; exit 2; }

# REWIND_BIN: time that binary instead of building the release one.
if [ -z "${REWIND_BIN:-}" ]; then
  say "building rewind (release)"
  cargo build --release --locked -q -p rewind --bin rewind
fi
say "building the fixture plugin"
cargo build --locked -q -p rewind-test-artifacts
REWIND=${REWIND_BIN:-$PWD/target/release/rewind}
FIXTURE=$PWD/target/plugins/wasm32-wasip2/plugin/rewind_fixture.wasm
[ -f "$FIXTURE" ] || { say "no fixture plugin at $FIXTURE"; exit 1; }
ANSIBLE=$(command -v ansible-playbook || true)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export REWIND_CACHE_DIR=$tmp/cache REWIND_LOCK_DIR=$tmp/locks
export ANSIBLE_LOCALHOST_WARNING=False ANSIBLE_INVENTORY_UNPARSED_WARNING=False
export ANSIBLE_LOCAL_TEMP=$tmp/ansible-local ANSIBLE_REMOTE_TEMP=$tmp/ansible-remote

for n in "${STEPS[@]}"; do
  d=$tmp/n$n
  mkdir -p "$d"
  {
    printf 'name = "steps-%s"\nstate_dir = "state"\n\n[[plugin]]\nname = "fx"\ncomponent = "%s"\n' "$n" "$FIXTURE"
    printf '[plugin.grants]\nexec = ["/bin/true"]\n[plugin.config]\nsteps = [\n'
    for ((i = 1; i <= n; i++)); do
      printf '  { id = "s%s", op = { call = "run", args = { cmd = { program = "/bin/true", args = [], env = [], timeout_ms = 0 } } } },\n' "$i"
    done
    printf ']\n'
  } >"$d/rewind.toml"
  printf '#!/bin/bash\nset -e\nfor ((i = 0; i < %s; i++)); do /bin/true; done\n' "$n" >"$d/run.sh"
  {
    printf -- '- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n'
    for ((i = 1; i <= n; i++)); do
      printf '    - command: /bin/true\n      changed_when: false\n'
    done
  } >"$d/play.yml"
  # Warm the compiled-code cache and check the runbook works.
  "$REWIND" -q compile "$d/rewind.toml" >/dev/null
  "$REWIND" -q run "$d/rewind.toml" >/dev/null || { say "rewind run of $n steps failed"; "$REWIND" run "$d/rewind.toml"; exit 1; }
done

# One timed command: wall time (us) from bash's clock, peak RSS (KiB) from
# /usr/bin/time; both appended to $tmp/<tool>-<n>.
measure() {
  local tool=$1 n=$2
  shift 2
  local t0 t1
  t0=$EPOCHREALTIME
  /usr/bin/time -f '%M' -o "$tmp/rss" "$@" >/dev/null 2>&1 || { say "$tool n=$n failed: $*"; exit 1; }
  t1=$EPOCHREALTIME
  echo $(((${t1/./} - ${t0/./}))) "$(cat "$tmp/rss")" >>"$tmp/$tool-$n"
}

tools=(rewind bash)
[ -n "$ANSIBLE" ] && tools+=(ansible)
say "timing ${tools[*]} at N = ${STEPS[*]}, $RUNS rounds"
for ((r = 0; r < RUNS; r++)); do
  for n in "${STEPS[@]}"; do
    d=$tmp/n$n
    measure rewind "$n" "$REWIND" -q run "$d/rewind.toml"
    measure bash "$n" bash "$d/run.sh"
    [ -n "$ANSIBLE" ] && measure ansible "$n" "$ANSIBLE" -i localhost, "$d/play.yml"
  done
done

python3 - "$tmp" "${tools[@]}" <<'EOF'
import sys, statistics, os
tmp, tools = sys.argv[1], sys.argv[2:]
def col(tool, n, c):
    rows = [l.split() for l in open(os.path.join(tmp, f"{tool}-{n}"))]
    return statistics.median(float(r[c]) for r in rows)
res = {}
for t in tools:
    t1, t10, t100 = (col(t, n, 0) / 1000 for n in (1, 10, 100))
    rss = max(col(t, n, 1) for n in (1, 10, 100)) / 1024
    res[t] = (t1, t10, t100, (t100 - t1) / 99, rss)
print()
print(f"{'':<10} {'N=1 (fixed)':>12} {'N=10':>10} {'N=100':>10} {'per step':>10} {'peak RSS':>9}")
for t in tools:
    t1, t10, t100, slope, rss = res[t]
    print(f"{t:<10} {t1:>9.1f} ms {t10:>7.1f} ms {t100:>7.1f} ms {slope:>7.2f} ms {rss:>6.1f} MB")
print()
b = res["bash"]
r = res["rewind"]
fixed, step = r[0] / b[0], r[3] / b[3]
print(f"rewind / bash: fixed {fixed:.2f}x (target <= 2x: {'PASS' if fixed <= 2 else 'MISS'}), "
      f"per step {step:.2f}x (target <= 1.3x: {'PASS' if step <= 1.3 else 'MISS'})")
if "ansible" in res:
    a = res["ansible"]
    print(f"ansible / rewind: fixed {a[0] / r[0]:.0f}x, per step {a[3] / r[3]:.0f}x, N=100 {a[2] / r[2]:.0f}x")
EOF

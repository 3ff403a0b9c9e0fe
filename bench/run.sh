#!/usr/bin/env bash
# The side-by-side benchmark of issue 4: cohort, instance-chart 0.4 and
# mdns-sd on the same scenarios, as real processes. From the repository root:
#
#   bench/run.sh            # the full run (about 30 minutes), writes
#                           # bench/RESULTS.md and bench/convergence.svg
#   QUICK=1 bench/run.sh    # a smoke run with few, short runs (a few minutes)
#
# Tunables (environment): RUNS (convergence runs per size and library, 5),
# ROUNDS (steady-state + departure rounds, 3), SETTLE and WINDOW (seconds
# before and of the steady-state count, 40 and 120), RES_RUNS (resilience, 3),
# LAN_RUNS (3), SIM_SIZES ("1000 3000").
#
# Isolation: the only step outside a namespace is the build (it fetches
# crates). Every scenario runs under scripts/isolated, a fresh network
# namespace with only loopback; the multi-host scenario builds its LAN with
# scripts/lan.sh inside such a namespace. No datagram can leave the machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/bench/target}
if [ "${QUICK:-0}" = 1 ]; then
  RUNS=${RUNS:-1} ROUNDS=${ROUNDS:-1} SETTLE=${SETTLE:-5} WINDOW=${WINDOW:-15}
  RES_RUNS=${RES_RUNS:-1} LAN_RUNS=${LAN_RUNS:-1} SIM_SIZES=${SIM_SIZES:-"100 300"}
fi
RUNS=${RUNS:-5} ROUNDS=${ROUNDS:-3} SETTLE=${SETTLE:-40} WINDOW=${WINDOW:-120}
RES_RUNS=${RES_RUNS:-3} LAN_RUNS=${LAN_RUNS:-3} SIM_SIZES=${SIM_SIZES:-"1000 3000"}

cargo build --release --manifest-path bench/Cargo.toml
bin=$CARGO_TARGET_DIR/release
iso=$root/scripts/isolated
lan=$root/scripts/lan.sh
out=$root/bench/results
mkdir -p "$out"
rm -f "$out"/*.tsv "$out"/machine.txt
log() { echo "== $(date -u +%H:%M:%S) $*" >&2; echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*" >>"$out/machine.txt.load"; }
: >"$out/machine.txt.load"

{
  echo "date (UTC):    $(date -u '+%Y-%m-%d %H:%M')"
  echo "nproc:         $(nproc)"
  echo "kernel:        $(uname -r)"
  echo "rustc:         $(rustc --version)"
  echo "cohort commit: $(git rev-parse --short HEAD)"
  echo "libraries:     $(grep -A1 -E '^name = "(instance-chart|mdns-sd)"' bench/Cargo.lock | grep -v -- -- | paste -sd' ' | sed 's/name = //g; s/version = //g; s/"//g')"
  echo "settings:      RUNS=$RUNS ROUNDS=$ROUNDS SETTLE=${SETTLE}s WINDOW=${WINDOW}s RES_RUNS=$RES_RUNS LAN_RUNS=$LAN_RUNS SIM_SIZES=\"$SIM_SIZES\""
  echo "free -h:"
  free -h
} >"$out/machine.txt"

log "convergence on one host"
"$iso" "$bin/driver" converge --out "$out/converge.tsv" --runs "$RUNS" --timeout 30

for ((r = 0; r < ROUNDS; r++)); do
  log "steady state and departure, round $r (the three libraries at once, one namespace each)"
  pids=()
  for lib in cohort instance-chart mdns-sd; do
    "$iso" "$bin/driver" idle --out "$out/idle-$lib.tsv" --lib "$lib" --round "$r" \
      --settle "$SETTLE" --window "$WINDOW" >/dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
done

log "resilience"
"$iso" "$bin/driver" resilience --out "$out/resilience.tsv" --runs "$RES_RUNS"

if [ -x "$lan" ] && "$iso" "$lan" check; then
  log "convergence and departures on the simulated LAN"
  "$iso" bash -c '
    set -euo pipefail
    lan=$1 bin=$2 out=$3 runs=$4 rounds=$5
    "$lan" up bench 30 >/dev/null
    trap "\"$lan\" down bench >/dev/null" EXIT
    for hosts in 10 30; do
      "$bin/driver" lan --out "$out/lan.tsv" --hosts "$hosts" --runs "$runs" --lan "$lan" --run bench --timeout 30
    done
    # Departures across hosts: the three libraries at once, 10 hosts each.
    for ((r = 0; r < rounds; r++)); do
      first=1
      for lib in cohort instance-chart mdns-sd; do
        "$bin/driver" lan-depart --out "$out/lan-depart-$lib.tsv" --lib "$lib" --round "$r" \
          --first "$first" --hosts 10 --lan "$lan" --run bench >/dev/null &
        first=$((first + 10))
      done
      wait
    done' lan "$lan" "$bin" "$out" "$LAN_RUNS" "$ROUNDS"
else
  echo "scripts/lan.sh missing or cannot build namespaces here: LAN scenarios skipped" | tee -a "$out/machine.txt" >&2
fi

log "simulation of cohort's sans-IO core"
for n in $SIM_SIZES; do
  "$iso" "$bin/sim" --n "$n" --out "$out/sim.tsv"
done
log "done"

{
  echo "load average (1, 5, 15 min) when each step started:"
  cat "$out/machine.txt.load"
} >>"$out/machine.txt"
rm -f "$out/machine.txt.load"
"$bin/report" "$out" "$root/bench/RESULTS.md" "$root/bench/convergence.svg"
echo "wrote bench/RESULTS.md and bench/convergence.svg" >&2

#!/usr/bin/env bash
# Restore a process holding 1 GiB of patterned anonymous memory from cryo's own dump
# (images on tmpfs, so in page cache) and report the restore time, best and median of
# RUNS restores of the same images. Each restored process must log a tick with its
# pattern intact before it counts. If a `criu` that works on this kernel is on PATH,
# CRIU restores the same images in the same run for comparison.
# Usage: benches/restore-1g.sh [MiB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."

MIB=${1:-1024}
RUNS=${2:-5}
WORK=/dev/shm/cryo-bench-restore.$$
mkdir -p "$WORK"
cleanup() { [[ -n "${PID:-}" ]] && kill -9 "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cargo build --release -q -p cryo-dumper -p cryo-restorer -p cryo-fixtures
DUMPER=target/release/dumper
RESTORER=target/release/restorer
COUNTER=$(ls -t target/release/build/cryo-fixtures-*/out/counter | head -1)
LOG=$WORK/log

wait_gone() { for _ in $(seq 500); do [[ -e /proc/$1 ]] || return 0; sleep 0.01; done; echo "pid $1 still there" >&2; exit 1; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

setsid "$COUNTER" "$MIB" "$LOG" 1 </dev/null >/dev/null 2>&1 &
PID=$!
for _ in $(seq 600); do grep -q '^ready' "$LOG" 2>/dev/null && break; sleep 0.1; done
"$DUMPER" dump -t "$PID" -D "$WORK/img" >/dev/null 2>&1
wait "$PID" 2>/dev/null || true
ROOT=$PID; PID=
wait_gone "$ROOT"
cat "$WORK"/img/pages-*.img >/dev/null
echo "cryo restorer: ${MIB} MiB workload (pid $ROOT), $(du -sh "$WORK/img" | cut -f1) of images on /dev/shm, ${RUNS} runs ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"

: >"$WORK/times"
for i in $(seq "$RUNS"); do
    lines=$(wc -l <"$LOG")
    t0=$(date +%s%N)
    "$RESTORER" restore -D "$WORK/img" -d 2>"$WORK/err" || { cat "$WORK/err"; exit 1; }
    t1=$(date +%s%N)
    PID=$ROOT
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
    # The restored process must go on counting over its intact pattern.
    for _ in $(seq 300); do (( $(wc -l <"$LOG") > lines )) && break; sleep 0.01; done
    line=$(tail -n +"$((lines + 1))" "$LOG" | head -1)
    [[ "$line" == *"pid=$ROOT tick="*" bad=0"* ]] || { echo "run $i: bad log line after restore: '$line'" >&2; exit 1; }
    echo "  run $i: restore ${secs} s; then: $line"
    echo "$secs" >>"$WORK/times"
    kill -9 "$ROOT"; PID=; wait_gone "$ROOT"
done
echo "cryo: restore best $(sort -g "$WORK/times" | head -1) s, median $(median <"$WORK/times") s"

if command -v criu >/dev/null && criu check >/dev/null 2>&1; then
    t0=$(date +%s%N)
    if criu restore -D "$WORK/img" -d -o restore.log >/dev/null 2>&1; then
        t1=$(date +%s%N)
        kill -9 "$ROOT" 2>/dev/null || true
        echo "criu: restore $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}') s"
    else
        echo "criu: restore failed here ($(tail -1 "$WORK/img/restore.log" 2>/dev/null)); no comparison"
    fi
else
    echo "criu: no criu on PATH that passes 'criu check' on this kernel ($(criu --version 2>/dev/null | head -1 || echo absent)); no comparison"
fi

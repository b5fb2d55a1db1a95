# Shared by the benches that compare with CRIU in the same run. Source it from benches/*.sh
# after `cd` to the repo root.

# Puts a CRIU that works on this kernel on PATH: trixie's 4.1 installed privately by
# scripts/criu-setup.sh (Debian 12's 3.17 cannot dump on kernel 6.x). Sets CRIU_OK=1 when
# `criu check` passes, and CRIU_VERSION.
criu_on_path() {
    local bin
    if bin=$(scripts/criu-setup.sh 2>"${WORK:-/tmp}/criu-setup.log"); then
        PATH=$bin:$PATH
    fi
    CRIU_OK=0
    CRIU_VERSION=$(criu --version 2>/dev/null | head -1 || echo "no criu")
    if command -v criu >/dev/null && criu check >/dev/null 2>&1; then
        CRIU_OK=1
    fi
}

# Starts `counter MIB LOG 1` detached and waits for its "ready" line; sets PID. Wait for its
# end with wait_gone.
start_counter() {
    local log=$1
    setsid "$COUNTER" "$MIB" "$log" 1 </dev/null >/dev/null 2>&1 &
    PID=$!
    # Not a job of this shell: no "Killed" report when a dump ends it (bash still reaps it).
    disown "$PID"
    for _ in $(seq 600); do grep -q '^ready' "$log" 2>/dev/null && return; sleep 0.1; done
    echo "workload did not become ready" >&2
    exit 1
}

wait_gone() {
    for _ in $(seq 500); do [[ -e /proc/$1 ]] || return 0; sleep 0.01; done
    echo "pid $1 still there" >&2
    exit 1
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
best_low() { sort -g | head -1; }
best_high() { sort -g | tail -1; }
now_ns() { date +%s%N; }
secs_between() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b - a) / 1e9}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# `stats-dump` of a CRIU dump dir as "frozen_s memdump_s pages_written".
criu_dump_stats() {
    crit decode -i "$1/stats-dump" | python3 -c '
import json, sys
d = json.load(sys.stdin)["entries"][0]["dump"]
print(d["frozen_time"] / 1e6, d["memdump_time"] / 1e6, d["pages_written"])'
}

# Puts the machine's free memory in the same warm state before every timed step: this VM
# hands memory untouched for a few seconds back to its host, and touching such memory
# again is ~3x slower, so a dump's fresh tmpfs pages cost whatever the last few seconds
# left behind. Writing and dropping MIB+256 MiB of tmpfs first makes that the same for
# every run of every tool.
warm_memory() {
    dd if=/dev/zero of="$WORK/warm" bs=1M count=$((MIB + 256)) status=none
    rm -f "$WORK/warm"
}

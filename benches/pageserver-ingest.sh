#!/usr/bin/env bash
# Page-server ingest: 1 GiB patterned pages (and a Python-heap-like mix) streamed over loopback
# into a fresh `pageserver` store per run, dedup + compression on. See benches/README.md.
#
#   benches/pageserver-ingest.sh [MiB] [RUNS] [ZSTD_LEVEL]    (defaults 1024, 3, 1)
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
RUNS=${2:-3}
LEVEL=${3:-1}

cargo build --release -q -p cryo-pageserver --bin pageserver --example ingest_bench
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$RUNS"); do
    echo "--- run $run"
    target/release/examples/ingest_bench --server target/release/pageserver \
        --mib "$MIB" --zstd-level "$LEVEL"
done

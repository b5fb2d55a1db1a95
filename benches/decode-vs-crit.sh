#!/usr/bin/env bash
# imgtool decode / x ps against python crit on the same CRIU image set, in one run.
#
#   benches/decode-vs-crit.sh [SET_DIR] [ROUNDS]
#
# SET_DIR defaults to fixtures/criu-images/pipe-tree, ROUNDS to 5. Each round decodes every
# non-raw image of the set once per tool, one process per image (that is how crit is used),
# with --pretty, output to /dev/null. imgtool is also timed decoding the whole directory in
# one process (-D, parallel). Then `x SET ps` is run ROUNDS times per tool. Prints the
# mean time per round and the ratio crit / imgtool.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
set_dir=${1:-$root/fixtures/criu-images/pipe-tree}
rounds=${2:-5}
crit=${CRIT:-/usr/bin/crit}

[ -x "$crit" ] || { echo "crit not found at $crit (set CRIT=...)" >&2; exit 1; }
cargo build --release -q -p cryo-tools --manifest-path "$root/Cargo.toml"
imgtool=$root/target/release/imgtool

images=()
for f in "$set_dir"/*; do
    name=$(basename "$f")
    case $name in pages-*|*.json|parent) continue ;; esac
    [ -f "$f" ] && images+=("$f")
done
[ ${#images[@]} -gt 0 ] || { echo "no images in $set_dir" >&2; exit 1; }

now() { date +%s%N; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

time_rounds() { # label, command...
    local start end
    start=$(now)
    for ((r = 0; r < rounds; r++)); do "$@"; done
    end=$(now)
    echo $(( (end - start) / rounds ))
}

decode_each_imgtool() { for f in "${images[@]}"; do "$imgtool" decode --pretty -i "$f" >/dev/null; done; }
decode_each_crit() { for f in "${images[@]}"; do "$crit" decode --pretty -i "$f" >/dev/null; done; }
decode_dir_imgtool() { "$imgtool" decode --pretty -D "$set_dir" -o "$out/json" >/dev/null; }
ps_imgtool() { "$imgtool" x "$set_dir" ps >/dev/null; }
ps_crit() { "$crit" x "$set_dir" ps >/dev/null; }

# Warm the page cache and python's bytecode cache once.
decode_each_imgtool; decode_each_crit; ps_crit

t_img=$(time_rounds decode_each_imgtool)
t_dir=$(time_rounds decode_dir_imgtool)
t_crit=$(time_rounds decode_each_crit)
p_img=$(time_rounds ps_imgtool)
p_crit=$(time_rounds ps_crit)

ms() { awk -v ns="$1" 'BEGIN { printf "%.2f ms", ns / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }

echo "set: $set_dir (${#images[@]} images, $rounds rounds, $(nproc) cores)"
echo "decode --pretty, one process per image:"
echo "  crit     $(ms "$t_crit")"
echo "  imgtool  $(ms "$t_img")   crit/imgtool = $(ratio "$t_crit" "$t_img")"
echo "decode --pretty, whole directory in one imgtool process (-D):"
echo "  imgtool  $(ms "$t_dir")   crit/imgtool = $(ratio "$t_crit" "$t_dir")"
echo "x ps:"
echo "  crit     $(ms "$p_crit")"
echo "  imgtool  $(ms "$p_img")   crit/imgtool = $(ratio "$p_crit" "$p_img")"

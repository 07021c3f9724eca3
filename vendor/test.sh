#!/usr/bin/env bash
# Runs a vendored crate's own unit tests (its `src/` test modules) against zkgate's patched copies.
# usage: vendor/test.sh CRATE [cargo test args...]    e.g. vendor/test.sh pingora-core protocols::http::v1
#
# vendor/ is outside the workspace, and a vendored crate's manifest lists dev-dependencies for
# upstream's tests, benches and examples that are not kept here, so `cargo test` cannot run in it
# directly. This writes a manifest under target/vendor-test/CRATE that builds the crate's `src/`
# in place, keeps the dev-dependencies its test modules use (criterion, for benches, is dropped),
# points [patch.crates-io] at the other vendored crates, and starts from zkgate's Cargo.lock so the
# versions are the ones zkgate ships with. A few pingora-core tests dial the Internet
# (connectors::http::v1::tests::test_connect, connectors::l4::tests::test_conn_*); they fail
# without it.
set -euo pipefail
crate="${1:?usage: vendor/test.sh CRATE [cargo test args...]}"
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/vendor/$crate"
[ -f "$src/Cargo.toml" ] || { echo "no vendored crate $crate" >&2; exit 1; }
dir="$root/target/vendor-test/$crate"
mkdir -p "$dir"
python3 - "$src" "$root" "$crate" >"$dir/Cargo.toml" <<'EOF'
import os, re, sys
src, root, crate = sys.argv[1:]
manifest = open(os.path.join(src, "Cargo.toml")).read()
out = []
for table in re.split(r"(?m)^(?=\[)", manifest):
    head = table.split("\n", 1)[0]
    if "dev-dependencies.criterion" in head:
        continue
    if head.startswith("[lib]"):
        table = re.sub(r"(?m)^path = .*$", 'path = "%s/src/lib.rs"' % src, table)
    out.append(table)
print("".join(out))
print("[workspace]\n\n[patch.crates-io]")
for other in sorted(os.listdir(os.path.join(root, "vendor"))):
    if other != crate and os.path.isfile(os.path.join(root, "vendor", other, "Cargo.toml")):
        print('%s = { path = "%s/vendor/%s" }' % (other, root, other))
EOF
[ -f "$dir/Cargo.lock" ] || cp "$root/Cargo.lock" "$dir/Cargo.lock"
cd "$dir"
CARGO_TARGET_DIR="$root/target/vendor-test/target" exec cargo test --lib "$@"

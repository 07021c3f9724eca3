#!/usr/bin/env bash
# Prints the directory cargo builds into for this workspace, as cargo itself resolves it:
# `target/` here, or $CARGO_TARGET_DIR, or `build.target-dir` from a cargo config. Scripts and the
# Makefile find the binaries through it rather than assuming `target/`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"${CARGO:-cargo}" metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'

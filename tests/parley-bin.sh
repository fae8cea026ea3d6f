# Sourced by the test scripts under tests/: sets and exports PARLEY_BIN, the parley binary the
# suite runs: $PARLEY_BIN when set, else target/debug/parley under $CARGO_TARGET_DIR (or the
# repository's target/), built with `cargo build -p parley-node` when missing.
# Needs $repo: the repository's root.
if [[ -z "${PARLEY_BIN:-}" ]]; then
  PARLEY_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/parley"
  if [[ ! -x "$PARLEY_BIN" ]]; then
    echo "building parley (cargo build -p parley-node)" >&2
    (cd "$repo" && cargo build -p parley-node)
  fi
fi
export PARLEY_BIN

#!/usr/bin/env bash
# The whole test suite. Installs what the tests need from outside the
# Rust toolchain first (each step is skipped when already done), starts a
# throwaway PostgreSQL cluster, then runs every test with the SQLite
# station, and the station and end-to-end tests again with the PostgreSQL
# station. FR_REQUIRE_TOOLS=1 and FR_REQUIRE_POSTGRES=1 make a missing tool
# or database fail instead of skip. Extra arguments go to `cargo nextest run`.
#
#   apt:   qpdf, poppler-utils (pdftotext)   evidence PDF checks
#          chromium                          dashboard browser test
#          sqlite3                           the stock tool must fail to
#                                            open an encrypted store
#   npm:   playwright-core (under ~/.cache/fieldreport/playwright)
#   PyPI:  bagit (bagit.py --validate)       evidence bag checks,
#          schemathesis                      API fuzzing, and
#          openapi-spec-validator            the OpenAPI description,
#          openapi-python-client             a client generated from it, in a
#                                            venv under ~/.cache/fieldreport
#   PostgreSQL 15 (installed on the machine, not running): a cluster in a
#   temporary directory, stopped and removed on exit
#   cargo-fuzz (crates.io): scripts/fuzz.sh runs each target for 15 s
#   scripts/bindings.sh: the Kotlin compiler (npm), JNA and JUnit (apt) and
#   Swift (a Debian trixie chroot under ~/.cache/fieldreport, built once)
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive

# The project's standards first, so drift fails in seconds, not at the end.
echo "== cargo fmt --check"
cargo fmt --all -- --check
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/fieldreport"
VENV="$CACHE/venv"
BAGIT_VERSION=1.9.0
SCHEMATHESIS_VERSION=4.32.5
OPENAPI_VALIDATOR_VERSION=0.7.2
OPENAPI_CLIENT_VERSION=0.29.1

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else
    echo "scripts/test.sh: need root to install $*; install it yourself and re-run" >&2
    exit 1
  fi
}

apt_missing=()
command -v qpdf >/dev/null || apt_missing+=(qpdf)
command -v pdftotext >/dev/null || apt_missing+=(poppler-utils)
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_missing+=(python3-venv)
command -v chromium >/dev/null || apt_missing+=(chromium)
command -v sqlite3 >/dev/null || apt_missing+=(sqlite3)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "== installing from apt: ${apt_missing[*]}"
  as_root apt-get update -q
  as_root apt-get install -y -q "${apt_missing[@]}"
fi

if [ ! -x "$VENV/bin/pip" ]; then
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/bagit.py" ]; then
  echo "== installing bagit $BAGIT_VERSION from PyPI into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "bagit==$BAGIT_VERSION"
fi
if [ ! -x "$VENV/bin/schemathesis" ]; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
if [ ! -x "$VENV/bin/openapi-spec-validator" ]; then
  echo "== installing openapi-spec-validator $OPENAPI_VALIDATOR_VERSION from PyPI into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION"
fi
if [ ! -x "$VENV/bin/openapi-python-client" ]; then
  echo "== installing openapi-python-client $OPENAPI_CLIENT_VERSION from PyPI into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "openapi-python-client==$OPENAPI_CLIENT_VERSION"
fi
export PATH="$VENV/bin:$PATH"

# The dashboard's browser test drives Debian's chromium with playwright-core
# (no browser download), installed under the cache.
PLAYWRIGHT_VERSION=1.65.1
export FR_PLAYWRIGHT_DIR="$CACHE/playwright"
if [ ! -f "$FR_PLAYWRIGHT_DIR/node_modules/playwright-core/package.json" ] ||
   ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$FR_PLAYWRIGHT_DIR/node_modules/playwright-core/package.json"; then
  echo "== installing playwright-core $PLAYWRIGHT_VERSION from npm into $FR_PLAYWRIGHT_DIR"
  mkdir -p "$FR_PLAYWRIGHT_DIR"
  [ -f "$FR_PLAYWRIGHT_DIR/package.json" ] || echo '{"private": true}' > "$FR_PLAYWRIGHT_DIR/package.json"
  (cd "$FR_PLAYWRIGHT_DIR" && npm install --silent --no-audit --no-fund "playwright-core@$PLAYWRIGHT_VERSION")
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

PGDIR=$(mktemp -d /tmp/fieldreport-pg.XXXXXX)
PGPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
  scripts/pg-cluster.sh stop "$PGDIR" || true
  rm -rf "$PGDIR"
}
trap cleanup EXIT
echo "== starting a throwaway PostgreSQL cluster in $PGDIR"
FR_TEST_DATABASE_URL=$(scripts/pg-cluster.sh start "$PGDIR" "$PGPORT" fsync=off)
export FR_TEST_DATABASE_URL
export FR_REQUIRE_TOOLS=1 FR_REQUIRE_POSTGRES=1

# Clippy's lints (-D warnings) run in the test build itself: clippy-driver
# compiles the workspace's own crates, every target the tests build
# (libraries, binaries, tests, examples: what `cargo clippy --workspace
# --all-targets` checks), so the dependencies are compiled once instead of
# being checked a second time. Every later cargo command of the suite
# keeps these variables, so nothing is rebuilt. A probe first proves the
# lints really fail the build.
CLIPPY_DRIVER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)
if [ ! -x "$CLIPPY_DRIVER" ]; then
  echo "scripts/test.sh: no clippy-driver (rustup component add clippy)" >&2
  exit 1
fi
export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
probe=$(mktemp -d)
echo 'pub fn probe(v: &[u8]) -> bool { v.len() == 0 }' > "$probe/probe.rs"
if "$CLIPPY_DRIVER" rustc --edition 2021 --crate-type lib --out-dir "$probe" "$probe/probe.rs" 2>/dev/null; then
  echo "scripts/test.sh: clippy-driver let a lint through: the lint pass is not working" >&2
  exit 1
fi
rm -rf "$probe"
echo "== building every test with clippy's lints (-D warnings)"
cargo nextest run --workspace --no-run

status=0
echo "== every test; stations on SQLite"
cargo nextest run --workspace --no-fail-fast "$@" || status=1
echo "== station and end-to-end tests; stations on PostgreSQL, their clock a year ahead"
# The same build as the first pass (selecting packages with -p would change
# feature unification and rebuild); a filter picks the tests. The stations
# and the tests' devices run 365 days ahead of the real date
# (FIELDREPORT_CLOCK_OFFSET_MS): no test may depend on the day it runs.
FIELDREPORT_CLOCK_OFFSET_MS=$((365 * 86400000)) \
FR_TEST_ENGINE=postgres cargo nextest run --workspace --no-fail-fast \
  -E 'package(fieldreport-station) | package(fieldreport-e2e)' "$@" || status=1
echo "== bindings: Kotlin (JVM + JNA), Swift (trixie chroot) and Python against the real library (scripts/bindings.sh)"
bash scripts/bindings.sh || status=1
echo "== fuzzing every decoder of outside input briefly (scripts/fuzz.sh)"
# Its own workspace and flags; clippy stays with the main build.
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS bash scripts/fuzz.sh 15 || status=1
exit $status

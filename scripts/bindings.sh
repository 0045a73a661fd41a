#!/usr/bin/env bash
# Builds the FFI library, generates the Kotlin, Swift and Python bindings
# fresh, and runs each language's tests against the real library and a real
# station. Prints one `LANG: N passed, N failed` line per language and exits
# non-zero if any test failed.
#
#   bash scripts/bindings.sh [all|python|kotlin|swift|size]...   (default: all)
#
# Toolchains are installed on first use and cached outside the repo, under
# ~/.cache/fieldreport (FR_CACHE): the Kotlin compiler from npm, JNA and
# JUnit from apt, and Swift in a Debian trixie chroot (about 3 GB, once).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CACHE="${FR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fieldreport}"
# Cargo's output directory, wherever CARGO_TARGET_DIR puts it.
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
OUT="$TARGET/bindings"
# Where the test build leaves the cdylib (it is not a root unit there).
LIB="$TARGET/debug/deps/libfieldreport_ffi.so"
# The station's command line as the end-to-end tests build it.
STATION="$TARGET/debug/station-cli"
BINDGEN="$TARGET/debug/examples/uniffi-bindgen"
KOTLIN_VERSION=2.4.20
SWIFT_ROOT="$CACHE/swift-trixie"
mkdir -p "$CACHE" "$OUT"

log() { echo "== bindings: $*" >&2; }

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

build() {
  # The test suite's own build (debug: the library carries the uniffi
  # metadata), which makes the library, the generator (an example) and the
  # station's command line: after `scripts/test.sh`'s test passes it has
  # nothing left to do. Selecting packages with -p would resolve features
  # anew and rebuild much of the tree.
  log "building the library, the generator and a station (the test build)"
  cargo test -q --workspace --no-run 2> >(grep -v '^\s*Executable' >&2)
}

generate() {
  rm -rf "$OUT/kotlin" "$OUT/swift" "$OUT/python"
  for lang in kotlin swift python; do
    "$BINDGEN" generate --no-format --library "$LIB" \
      -l "$lang" -o "$OUT/$lang" >/dev/null
  done
  cp "$LIB" "$OUT/python/"
  # The Swift package's generated targets (git-ignored), so ios/FieldReport
  # opens as a complete package.
  local pkg=ios/FieldReport/Sources
  rm -rf "$pkg/FieldReportFFIC" "$pkg/FieldReportFFI"
  mkdir -p "$pkg/FieldReportFFIC" "$pkg/FieldReportFFI"
  cp "$OUT/swift/FieldReportFFIC.h" "$pkg/FieldReportFFIC/"
  cp "$OUT/swift/FieldReportFFIC.modulemap" "$pkg/FieldReportFFIC/module.modulemap"
  cp "$OUT/swift/FieldReportFFI.swift" "$pkg/FieldReportFFI/"
  log "generated bindings in $OUT (and the Swift package's generated sources)"
}

run_python() {
  PYTHONPATH="$OUT/python" FR_STATION_BIN="$STATION" RUST_BACKTRACE=0 \
    python3 bindings/tests/python/smoke.py
}

setup_kotlin() {
  apt_install libjna-java junit4 default-jre-headless
  local dir="$CACHE/kotlin-compiler-$KOTLIN_VERSION"
  if [[ ! -x "$dir/package/bin/kotlinc" ]]; then
    log "fetching kotlin-compiler $KOTLIN_VERSION (npm)"
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack -q "kotlin-compiler@$KOTLIN_VERSION" >/dev/null && tar xzf "kotlin-compiler-$KOTLIN_VERSION.tgz")
    rm -rf "$dir" && mkdir -p "$dir" && mv "$tmp/package" "$dir/" && rm -rf "$tmp"
  fi
  KOTLINC="$dir/package/bin/kotlinc"
  KOTLIN_STDLIB="$dir/package/lib/kotlin-stdlib.jar"
}

run_kotlin() {
  setup_kotlin
  local cp=/usr/share/java/jna.jar:/usr/share/java/junit4.jar:/usr/share/java/hamcrest.jar
  local jar="$OUT/kotlin-tests.jar"
  log "compiling the Kotlin library and its tests"
  "$KOTLINC" -nowarn \
    $(find "$OUT/kotlin" -name '*.kt') \
    $(find android/fieldreport/src/main/kotlin -name '*.kt') \
    $(find android/fieldreport/src/test/kotlin -name '*.kt') \
    -cp "$cp" -d "$jar" 2> >(grep -v '^warning:' >&2)
  # Every compiled test class (top-level `*Test`), so none is forgotten.
  local classes
  mapfile -t classes < <(python3 -c '
import re, sys, zipfile
for n in zipfile.ZipFile(sys.argv[1]).namelist():
    if re.fullmatch(r"org/fieldreport/\w+Test\.class", n):
        print(n[:-6].replace("/", "."))' "$jar")
  FR_STATION_BIN="$STATION" RUST_BACKTRACE=0 \
    java -Djna.library.path="$(dirname "$LIB")" -cp "$jar:$cp:$KOTLIN_STDLIB" \
    org.fieldreport.RunTestsKt "${classes[@]}"
}

setup_swift() {
  # A marker, not `-x usr/bin/swift`: that is an absolute symlink, only valid inside.
  if [[ ! -f "$SWIFT_ROOT/.fieldreport-ready" ]]; then
    apt_install debootstrap
    local mirror
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    log "building a Debian trixie chroot for Swift in $SWIFT_ROOT (once; about 3 GB)"
    rm -rf "$SWIFT_ROOT.tmp"
    debootstrap --variant=minbase trixie "$SWIFT_ROOT.tmp" "$mirror" >/dev/null
    cp /etc/resolv.conf "$SWIFT_ROOT.tmp/etc/"
    mount_chroot "$SWIFT_ROOT.tmp"
    chroot "$SWIFT_ROOT.tmp" env DEBIAN_FRONTEND=noninteractive bash -c \
      'apt-get update -qq && apt-get install -y -qq swiftlang >/dev/null' || { umount_chroot "$SWIFT_ROOT.tmp"; exit 1; }
    umount_chroot "$SWIFT_ROOT.tmp"
    touch "$SWIFT_ROOT.tmp/.fieldreport-ready"
    rm -rf "$SWIFT_ROOT"
    mv "$SWIFT_ROOT.tmp" "$SWIFT_ROOT"
  fi
}

mount_chroot() {
  mountpoint -q "$1/proc" || mount -t proc proc "$1/proc"
  mountpoint -q "$1/dev" || mount --rbind /dev "$1/dev"
  mountpoint -q "$1/sys" || mount -t sysfs sys "$1/sys"
}

umount_chroot() {
  for m in proc dev sys; do
    mountpoint -q "$1/$m" && umount -R "$1/$m" || true
  done
}

run_swift() {
  setup_swift
  # The package is assembled in the chroot from ios/ plus the generated files.
  local work="$SWIFT_ROOT/fieldreport"
  rm -rf "$work" && mkdir -p "$work/lib" "$work/bin"
  cp -r ios/FieldReport/Package.swift ios/FieldReport/Sources ios/FieldReport/Tests "$work/"
  cp "$LIB" "$work/lib/"
  cp "$STATION" "$work/bin/fieldreport-station"
  cp /etc/resolv.conf "$SWIFT_ROOT/etc/"
  mount_chroot "$SWIFT_ROOT"
  trap 'umount_chroot "$SWIFT_ROOT"' RETURN
  log "swift test (inside the trixie chroot)"
  local out status=0
  out="$(chroot "$SWIFT_ROOT" env HOME=/root FR_STATION_BIN=/fieldreport/bin/fieldreport-station \
    RUST_BACKTRACE=0 LD_LIBRARY_PATH=/fieldreport/lib bash -c \
    'cd /fieldreport && swift test -Xlinker -L/fieldreport/lib 2>&1')" || status=$?
  echo "$out" | grep -E "error:|failed|passed|Executed" | grep -v "^✔" >&2 || true
  # XCTest prints one line per test case; its summary counts failed assertions.
  local total fails
  total="$(echo "$out" | grep -cE "^Test Case '.*' (passed|failed)" || true)"
  fails="$(echo "$out" | grep -cE "^Test Case '.*' failed" || true)"
  if [[ "$total" -eq 0 ]]; then
    echo "$out" | tail -40 >&2
    echo "swift: 0 passed, 1 failed (no test ran)"
    return 1
  fi
  echo "swift: $((total - fails)) passed, $fails failed"
  [[ "$status" -eq 0 && "$fails" -eq 0 ]]
}

# Stripped size of the phone library (mobile profile: opt-level z, LTO),
# with SQLCipher (the default) and without it (plain SQLite), one after
# the other in the same run.
run_size() {
  local so="$TARGET/mobile/libfieldreport_ffi.so" with without
  log "building the mobile profile without SQLCipher"
  cargo build -q -p fieldreport-ffi --lib --profile mobile --no-default-features
  without=$(stat -c %s "$so")
  log "building the mobile profile with SQLCipher"
  cargo build -q -p fieldreport-ffi --lib --profile mobile
  with=$(stat -c %s "$so")
  echo "library size (mobile profile, stripped, $(uname -m)): $with bytes with SQLCipher, $without bytes without"
  python3 -c "print(f'SQLCipher adds {($with - $without) / 1e6:.2f} MB ({$with / $without:.2f}x)')"
}

steps=("$@")
((${#steps[@]})) || steps=(all)
[[ "${steps[0]}" == all ]] && steps=(python kotlin swift)
build
generate
failed=0
for s in "${steps[@]}"; do
  case "$s" in
    python) run_python || failed=1 ;;
    kotlin) run_kotlin || failed=1 ;;
    swift) run_swift || failed=1 ;;
    size) run_size || failed=1 ;;
    *) echo "unknown step: $s" >&2; exit 2 ;;
  esac
done
exit "$failed"

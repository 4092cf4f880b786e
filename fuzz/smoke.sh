#!/usr/bin/env bash
# Fuzz smoke test for CI: builds every cargo-fuzz target and runs each for about 20 seconds
# (FUZZ_SECONDS to change it). Exits non-zero when a target crashes or does not build; exits 0
# with "skipped: ..." when there is no nightly toolchain or cargo-fuzz cannot be installed.
set -uo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-20}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "skipped: no nightly toolchain (cargo +nightly not available)"
    exit 0
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found; installing it"
    if ! cargo install cargo-fuzz --locked && ! cargo install cargo-fuzz; then
        echo "skipped: cargo-fuzz could not be installed"
        exit 0
    fi
fi

if ! cargo +nightly fuzz build; then
    echo "FAILED: the fuzz targets do not build"
    exit 1
fi

failed=()
for target in $(cargo +nightly fuzz list); do
    echo "=== ${target} (${seconds}s)"
    mkdir -p "corpus/${target}"
    # Run on a scratch copy of the seeds so CI does not grow the committed corpus.
    scratch="$(mktemp -d)"
    cp -r "corpus/${target}/." "${scratch}/" 2>/dev/null || true
    if ! cargo +nightly fuzz run "${target}" "${scratch}" -- \
        -max_total_time="${seconds}" -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("${target}")
    fi
    rm -rf "${scratch}"
done

if (( ${#failed[@]} > 0 )); then
    echo "FAILED: crashes in: ${failed[*]} (reproducers under fuzz/artifacts/)"
    exit 1
fi
echo "ok: every target ran ${seconds}s without a crash"

#!/bin/sh
# test_build.sh - what the build hands out (make test-license-build): the
# library's exports and contents, libsodium inside it out of LD_PRELOAD's
# reach, the key id against an independent implementation, the guard on
# install / python / dist for development builds, the development secret key
# outside every folder meant to be copied, a stripped release build, and the
# signed release archive (verified, then refused once tampered with).
# Run by make with BUILD, MAKE and CC set; from the repository root.
set -eu
: "${BUILD:=build}" "${MAKE:=make}" "${CC:=cc}"
SO=$BUILD/lib/libliquidmemory.so
AR=$BUILD/lib/libliquidmemory.a
CLI=$BUILD/bin/lm-license
VENDOR=$BUILD/bin/lm-license-vendor
KEYS=${DEV_KEY_DIR:-build/dev-key}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/lm-build-test-XXXXXX")
trap 'rm -rf "$TMP"' EXIT
checks=0 failures=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }
fail() { checks=$((checks + 1)) failures=$((failures + 1)); echo "FAIL: $*"; }
check() { # check DESCRIPTION COMMAND...: passes when COMMAND succeeds
    what=$1; shift
    if "$@" >"$TMP/out" 2>&1; then ok "$what"; else fail "$what"; sed 's/^/    /' "$TMP/out"; fi
}
refuses() { # refuses DESCRIPTION PATTERN COMMAND...: passes when COMMAND fails saying PATTERN
    what=$1 pattern=$2; shift 2
    if "$@" >"$TMP/out" 2>&1; then fail "$what (it succeeded)"; sed 's/^/    /' "$TMP/out"
    elif grep -q -- "$pattern" "$TMP/out"; then ok "$what"
    else fail "$what (no '$pattern' in the output)"; sed 's/^/    /' "$TMP/out"; fi
}
no_secret_in() { ! grep -rlI "LM-SECRET-KEY" "$1"; }

echo "== the library's contents"
exports() { nm -D --defined-only "$SO" | awk '{print $3}' | grep -v '^lm_' | grep -v '^_' || true; }
check "libliquidmemory.so exports lm_* only" test -z "$(exports)"
check "libliquidmemory.so exports no libsodium symbol" \
    sh -c "! nm -D '$SO' | grep -Eq ' (sodium_|crypto_|randombytes)'"
check "libliquidmemory.so does not load libsodium.so" sh -c "! ldd '$SO' | grep -q libsodium"
signing='lml_sign$|lml_token_issue|lml_payload_encode|lml_keypair_from_seed|cli_'
check "libliquidmemory.so holds no signing code of ours" \
    sh -c "! nm '$SO' 2>/dev/null | grep -Eq ' [TtDdBb] ($signing)'"
check "libliquidmemory.a holds no signing code of ours" \
    sh -c "! nm '$AR' 2>/dev/null | grep -Eq ' [TtDd] ($signing)'"
check "lm-license (the customer's tool) holds no signing code" \
    sh -c "! $CLI issue --help 2>/dev/null && ! strings '$CLI' | grep -q LM-SECRET-KEY"

echo "== an LD_PRELOADed libsodium that accepts every signature"
$CC -shared -fPIC -o "$TMP/libfake_sodium.so" tests/license/preload/fake_sodium.c
$CC -std=c11 -Iinclude -o "$TMP/forge" tests/license/preload/forge.c -L"$(dirname "$SO")" \
    -lliquidmemory -Wl,-rpath,"$(cd "$(dirname "$SO")" && pwd)"
tok=$(cat "$BUILD/dev-license")
sig=${tok##*.}
first=$(printf '%s' "$sig" | cut -c1)
if [ "$first" = A ]; then other=B; else other=A; fi
forged="${tok%.*}.$other$(printf '%s' "$sig" | cut -c2-)"
check "a forged token is refused with the impostor preloaded" \
    env -u LM_LICENSE -u LM_LICENSE_FILE LD_PRELOAD="$TMP/libfake_sodium.so" "$TMP/forge" "$forged"
check "the genuine token is taken with the impostor preloaded" \
    sh -c "! env LD_PRELOAD='$TMP/libfake_sodium.so' '$TMP/forge' '$tok'"

echo "== key ids, against Python's BLAKE2b"
if command -v python3 >/dev/null; then
    want=$(python3 -c "import hashlib,sys; print(hashlib.blake2b(bytes.fromhex(sys.argv[1]), digest_size=32, key=b'liquid-memory-key-id-v1').hexdigest()[:16])" "$(cat "$KEYS/vendor.pub")")
    got=$($VENDOR pubkey --key "$KEYS/vendor.secret" 2>&1 >/dev/null | sed -n 's/^key id: //p')
    check "the key id is BLAKE2b-256(key = domain, public key), first 8 bytes" test "$want" = "$got"
    check "a token names that key id" sh -c "$CLI verify --file '$BUILD/dev-license' | grep -q 'key id:       $want'"
else
    echo "NOT RUN: key id cross-check (no python3)"
fi

echo "== development builds stay home"
refuses "make install refuses a development build" "refusing: this is a development build" \
    $MAKE --no-print-directory BUILD="$BUILD" install PREFIX="$TMP/inst"
check "... and installed nothing" test ! -e "$TMP/inst"
refuses "make python refuses a development build" "refusing: this is a development build" \
    $MAKE --no-print-directory BUILD="$BUILD" python
refuses "make dist refuses a development build" "refusing: this is a development build" \
    $MAKE --no-print-directory BUILD="$BUILD" dist
check "make install DEV_BUILD_OK=1 installs it" \
    $MAKE --no-print-directory BUILD="$BUILD" install PREFIX="$TMP/inst" DEV_BUILD_OK=1
check "... with no secret key" no_secret_in "$TMP/inst"
check "... and the customer's tool only" sh -c "test -x '$TMP/inst/bin/lm-license' && test ! -e '$TMP/inst/bin/lm-license-vendor'"
check "a development build folder holds its license but no secret key" \
    sh -c "$MAKE --no-print-directory BUILD='$TMP/dev' CUDA=0 '$TMP/dev/dev-license' >/dev/null && test -s '$TMP/dev/dev-license' && ! find '$TMP/dev' -name '*.secret' | grep -q . && ! grep -rlI LM-SECRET-KEY '$TMP/dev'"
if [ -d build/device ]; then
    check "build/device holds no secret key" no_secret_in build/device
fi

echo "== a release build"
pub=$(cat "$KEYS/vendor.pub")
REL=$TMP/release
check "make VENDOR_PUBKEY=... builds" \
    $MAKE --no-print-directory BUILD="$REL" CUDA=0 VENDOR_PUBKEY="$pub" "$REL/lib/libliquidmemory.so"
check "... stripped: no symbol table" sh -c "nm '$REL/lib/libliquidmemory.so' 2>&1 | grep -q 'no symbols'"
check "... no debug information" sh -c "! readelf -S '$REL/lib/libliquidmemory.so' | grep -q '\.debug'"
check "... installs without DEV_BUILD_OK" \
    $MAKE --no-print-directory BUILD="$REL" CUDA=0 VENDOR_PUBKEY="$pub" install PREFIX="$TMP/rel-inst"
refuses "... and make dist wants the release key" "RELEASE_KEY" \
    $MAKE --no-print-directory BUILD="$REL" CUDA=0 VENDOR_PUBKEY="$pub" dist

echo "== the signed release archive"
refuses "make dist refuses a license key as the release key" "is a license key" \
    $MAKE --no-print-directory BUILD="$BUILD" dist DEV_BUILD_OK=1 RELEASE_KEY="$KEYS/vendor.secret"
rm -rf "$BUILD/dist" # archives of other versions
check "make dist DEV_BUILD_OK=1" $MAKE --no-print-directory BUILD="$BUILD" dist DEV_BUILD_OK=1
tar=$(ls "$BUILD"/dist/liquid-memory-*.tar.gz)
mkdir "$TMP/unpacked"
tar -C "$TMP/unpacked" -xzf "$tar"
R=$(ls -d "$TMP"/unpacked/liquid-memory-*)
RPUB=$BUILD/dist/release.pub
check "the archive verifies" "$CLI" verify-release --pubkey "$RPUB" "$R"
for f in include/liquid_memory.h lib/libliquidmemory.so lib/libliquidmemory.a \
         lib/pkgconfig/liquid_memory.pc bin/lm-license python/liquid_memory/__init__.py \
         python/liquid_memory/libliquidmemory.so python/pyproject.toml doc/README_INTEGRATION.md \
         RELEASE; do
    check "MANIFEST lists $f" grep -q "  $f\$" "$R/MANIFEST"
done
check "the archive holds no secret key and no vendor tool" \
    sh -c "no_secret() { ! grep -rlI LM-SECRET-KEY \"\$1\"; }; no_secret '$R' && test ! -e '$R/bin/lm-license-vendor'"
check "sha256sum reads the MANIFEST" sh -c "cd '$R' && sha256sum --quiet --strict -c MANIFEST"
if command -v openssl >/dev/null && command -v python3 >/dev/null; then
    # The signature, checked by OpenSSL alone: the public key as DER (RFC 8410 prefix).
    python3 -c "import sys; sys.stdout.buffer.write(bytes.fromhex('302a300506032b6570032100' + open(sys.argv[1]).read().strip()))" "$RPUB" > "$TMP/release.der"
    { printf 'liquid-memory-release-v1'; cat "$R/MANIFEST"; } > "$TMP/signed"
    check "OpenSSL verifies MANIFEST.sig" openssl pkeyutl -verify -pubin -inkey "$TMP/release.der" \
        -keyform DER -rawin -in "$TMP/signed" -sigfile "$R/MANIFEST.sig"
else
    echo "NOT RUN: the OpenSSL cross-check (no openssl or python3)"
fi
check "pkg-config finds the unpacked release where it lies" \
    sh -c "PKG_CONFIG_PATH='$R/lib/pkgconfig' pkg-config --cflags liquid_memory | grep -q -- '-I$R/lib/pkgconfig/../../include'"
printf '\n' >> "$R/doc/README.md"
refuses "one changed byte in one file is refused" "changed: doc/README.md" \
    "$CLI" verify-release --pubkey "$RPUB" "$R"
refuses "... and sha256sum agrees" "FAILED" sh -c "cd '$R' && sha256sum --quiet -c MANIFEST"

echo "test_build.sh: $checks checks, $failures failures"
[ "$failures" = 0 ]

#!/bin/sh
# check.sh STAGE VERSION ABI BUILD CUDA - checks of a `make install` into STAGE
# (mk/package.mk, part of make test): names and links of the shared library,
# what its files need and where they look, the CMake package (a C++ program,
# shared and static), the static library through pkg-config --static, and
# the CUDA backend loaded lazily (present: found beside the library; absent:
# a clear LM_ERR_NO_DEVICE).
set -eu
stage=$1 version=$2 abi=$3 build=$4 cuda=$5
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
lib=$stage/lib
work=$build/package-test
CC=${CC:-cc}
fail() { echo "test-package: FAIL: $*" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work"

# The soname and the links to the file.
core=$lib/libliquidmemory.so.$version
[ -f "$core" ] && [ ! -L "$core" ] || fail "$core is not a file"
[ "$(readlink "$lib/libliquidmemory.so.$abi")" = "libliquidmemory.so.$version" ] ||
    fail "libliquidmemory.so.$abi does not point to libliquidmemory.so.$version"
[ "$(readlink "$lib/libliquidmemory.so")" = "libliquidmemory.so.$abi" ] ||
    fail "libliquidmemory.so does not point to libliquidmemory.so.$abi"
readelf -d "$core" | grep -q "Library soname: \[libliquidmemory.so.$abi\]" || fail "soname of $core"

# The core needs no CUDA library; nothing installed looks into the build
# tree or a CUDA toolkit (the loader's path finds CUDA where it is installed).
if readelf -d "$core" | grep NEEDED | grep -Ei "cublas|cudart|libcuda"; then
    fail "the core library needs a CUDA library"
fi
for f in "$lib"/libliquidmemory*.so.*; do
    [ -L "$f" ] && continue
    for dir in $(readelf -d "$f" | sed -n 's/.*(R[UN]*PATH).*\[\(.*\)\]/\1/p' | tr ':' ' '); do
        case $dir in
        "$build"* | "$repo"* | *cuda*) fail "$f has the run path $dir" ;;
        esac
    done
done
plugin=$lib/libliquidmemory_cuda.so.$abi
if [ "$cuda" = 1 ]; then
    [ -f "$plugin" ] || fail "the CUDA backend $plugin is not installed"
    readelf -d "$plugin" | grep -q "Library soname: \[libliquidmemory_cuda.so.$abi\]" || fail "soname of $plugin"
else
    [ ! -e "$plugin" ] || fail "a CPU-only build installed $plugin"
fi

# A C++ program through find_package, against the shared and the static library.
for kind in shared static; do
    static=OFF
    [ $kind = static ] && static=ON
    if ! { cmake -S "$here" -B "$work/$kind" -DCMAKE_PREFIX_PATH="$stage" \
               -DLiquidMemory_USE_STATIC_LIBS=$static && cmake --build "$work/$kind"; } \
           > "$work/$kind.log" 2>&1; then
        cat "$work/$kind.log" >&2
        fail "cmake ($kind)"
    fi
    needs=$(readelf -d "$work/$kind/consumer" | grep -c "NEEDED.*libliquidmemory" || true)
    want=1
    [ $kind = static ] && want=0
    [ "$needs" = $want ] || fail "the $kind consumer needs libliquidmemory $needs times"
    "$work/$kind/consumer" > "$work/$kind.out" || { cat "$work/$kind.out" >&2; fail "consumer ($kind)"; }
done

# The CUDA handle: the shared program finds the backend beside the library
# (whatever the GPU then says); the static one has no backend beside it.
if [ "$cuda" = 1 ]; then
    grep -q "could not be loaded" "$work/shared.out" && fail "$(cat "$work/shared.out")"
    grep -q "cuda: no CUDA device: .*libliquidmemory_cuda.so.$abi could not be loaded" "$work/static.out" ||
        fail "static: $(cat "$work/static.out")"
else
    grep -q "cuda: no CUDA device: .*built without nvcc" "$work/shared.out" || fail "$(cat "$work/shared.out")"
fi

# The static library with the flags of pkg-config --static.
pc="env PKG_CONFIG_PATH=$lib/pkgconfig pkg-config"
libs=$($pc --static --libs liquid_memory | sed 's/-lliquidmemory\b/-l:libliquidmemory.a/')
# shellcheck disable=SC2046,SC2086
$CC -std=c11 -Wall -Wextra -Werror -o "$work/quickstart-static" "$repo/examples/quickstart.c" \
    $($pc --cflags liquid_memory) $libs || fail "quickstart through pkg-config --static"
if readelf -d "$work/quickstart-static" | grep -q "NEEDED.*libliquidmemory"; then
    fail "quickstart-static links the shared library"
fi
"$work/quickstart-static" > "$work/quickstart-static.out" || fail "quickstart-static"
echo "test-package: ok (soname, links, NEEDED, run paths, CMake shared + static, pkg-config --static$([ "$cuda" = 1 ] && echo ", lazy CUDA backend"))"

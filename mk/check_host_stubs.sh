#!/bin/sh
# check_host_stubs.sh - fails when a global host function of a kernel object
# calls exit(). nvcc compiles the host copy of a __device__-only function as
# `exit(1)`; a host launcher that calls one (nvcc does not always say so, in
# templates) is folded into that and would end the caller's process.
#   sh mk/check_host_stubs.sh obj.o ...
bad=0
for o in "$@"; do
    # objdump -t: value, flags (g = global, F = function), section, size, name
    objdump -t "$o" | awk '$2 == "g" && $3 == "F" && $NF ~ /^lmk_/ { print $4, $1, $5, $NF }' |
    while read -r sec val size name; do
        start=$(printf '%d' "0x$val")
        stop=$((start + $(printf '%d' "0x$size")))
        if objdump -dr -j "$sec" --start-address="$start" --stop-address="$stop" "$o" |
            grep -q 'R_X86_64_PLT32[[:space:]]*exit'; then
            echo "$o: $name calls exit(): a __device__-only function called from host code" >&2
            echo bad
        fi
    done | grep -q bad && bad=1
done
exit $bad

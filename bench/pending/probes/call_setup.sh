# call_setup.sh - sourced by the device-call scripts (decode_call.sh, prefill_call.sh) from the
# repository root on the device machine, after they set VARIANTS and GUARD_DEFAULT: unpacks main's
# carried build (.dev/carry.tgz as .dev/device) and each variant's plugin (.dev/slim_<v>.tgz)
# beside a copy of main's other libraries and GPU test binary; O=$OUT/call for everything the
# call writes; run NAME SECONDS CMD.. (skipped where it could end past GUARD seconds from the
# start, its exit status and time in $O/summary.txt); lib V (the environment that loads variant
# V's library); the GPU's name and clocks (gpu.txt, dmon.txt); finish (the tarball $OUT/call.tgz).
T0=$(date +%s)
tar -xzf .dev/carry.tgz
for v in $VARIANTS; do
  tar -xzf .dev/slim_$v.tgz -C .dev
  for f in .dev/device/lib/*; do [ "$(basename $f)" = libliquidmemory_cuda.so.0 ] || cp -a $f .dev/$v/lib/; done
  mkdir -p .dev/$v/bin && cp .dev/device/bin/lm-gpu-tests .dev/$v/bin/
done
B=.dev/device; O=$OUT/call; mkdir -p $O
export LM_LICENSE_FILE=$PWD/$B/dev-license PYTHONPATH=$PWD/bindings/python PYTHONUNBUFFERED=1
run() { n=$1; t=$2; shift 2; if [ $(( $(date +%s) - T0 + t )) -gt ${GUARD:-$GUARD_DEFAULT} ]; then echo "$n skipped (time)" >> $O/summary.txt; return 9; fi
  s=$(date +%s); timeout $t "$@" > $O/$n.log 2>&1; rc=$?; echo "$n rc $rc $(( $(date +%s) - s )) s" >> $O/summary.txt; return $rc; }
lib() { echo "env LM_LIB_PATH=$PWD/.dev/$1/lib/libliquidmemory.so LM_COMMIT=$(cat $B/COMMIT)+$1"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $O/gpu.txt 2>&1
nvidia-smi dmon -s pc -d 1 > $O/dmon.txt 2>&1 & DMON=$! # the clocks while the steps run
finish() { kill $DMON 2>/dev/null; echo "$(( $(date +%s) - T0 )) s" > $O/time.txt
  cd $OUT && tar -czf call.tgz call && rm -rf call; }

#!/bin/sh
# decode_call.sh - one device call for the hybrid decode work (written in session 6, whose last
# two calls were refused or taken back). Run from the repository root on the device machine.
# Prerequisites, made on this machine (bench/NOTES.md, "Next session's GPU work"):
#   .dev/carry.tgz        main's `make device-build` as .dev/device (obj/ and engine binaries removed)
#   .dev/slim_<v>.tgz     <v>/lib/libliquidmemory_cuda.so.0 of each variant's build, for
#                         each variant named in VARIANTS and LAND below (the CPU library is main's:
#                         the variants change only kernels/)
# ROUNDS (3) rounds of the A/B, RATIOS (2) of the prefill ratio's; GUARD (400) seconds: no step
# starts that could end past it. Everything it writes goes into one tarball under $OUT (the device returns only a few files).
VARIANTS=${VARIANTS:-"split head ts"}
GUARD_DEFAULT=400
. bench/pending/probes/call_setup.sh
K=LMK_PROBE_NOKEYS; S=LMK_PROBE_STOP; M=LMK_PROBE_SMEM
# 1. each variant against main, alternating (the step in a graph, hybrid_bench's configuration)
for i in $(seq ${ROUNDS:-3}); do for v in device $VARIANTS; do [ $v = ts ] || [ $v = head ] && continue
  run ab-$v-$i 30 $(lib $v) python3 bench/pending/probes/decode_probe.py $O/ab-$v-$i.json -,chain8; done; done
# 2. the variants' correctness: decode, hybrid and pool suites (the first variant's before the
#    profile: it is the one to land), then memcheck and synccheck on the decode case (small)
suites() { v=$1
  run dec-tests-$v 40 env CK_RUN_SUITE=gpu_hybrid CK_RUN_CASE=decode .dev/$v/bin/lm-gpu-tests
  run hybrid-tests-$v 50 env CK_RUN_SUITE=gpu_hybrid CK_RUN_CASE=hybrid .dev/$v/bin/lm-gpu-tests
  run pool-tests-$v 30 env CK_RUN_SUITE=gpu_pool .dev/$v/bin/lm-gpu-tests; }
sanitize() { v=$1; shift  # then the tools
  for tool in "$@"; do
    run $tool-$v 30 env CK_RUN_SUITE=gpu_hybrid CK_RUN_CASE=decode compute-sanitizer --tool $tool --error-exitcode 3 --print-limit 20 .dev/$v/bin/lm-gpu-tests small
  done; }
FIRST=$(echo $VARIANTS | cut -d' ' -f1)
suites $FIRST
sanitize $FIRST memcheck
# 3. LAND names a variant whose plugin goes into a copy of main's build for bench/gpu_run.sh's
#     hybrid phase (the whole hybrid GPU suite, its pytest file, hybrid_bench.py with SDPA in the
#     same run: the numbers README quotes); its output in $O/land
if [ -n "$LAND" ]; then
  tar -xzf .dev/slim_$LAND.tgz -C .dev && rm -rf .dev/landb && cp -a $B .dev/landb &&
    cp .dev/$LAND/lib/libliquidmemory_cuda.so.0 .dev/landb/lib/ && echo "$(cat $B/COMMIT)+$LAND" > .dev/landb/COMMIT
  left=$(( ${GUARD:-400} - $(date +%s) + T0 ))
  [ $left -gt 100 ] && OUT=$O/land LM_BUILD=.dev/landb LM_SECONDS=$(( left < 260 ? left : 260 )) sh bench/gpu_run.sh hybrid > $O/land.log 2>&1
  echo "land $LAND rc $? ($left s given)" >> $O/summary.txt
fi
# 3b. the head rows' kernel variant (the prefill's fixed launch): its suite (when LAND has not
#     run it with the split), the 128K ratio against main's, its kernels
case " $VARIANTS " in *" head "*)
  [ -n "$LAND" ] || run hybrid-tests-head 50 env CK_RUN_SUITE=gpu_hybrid CK_RUN_CASE=hybrid .dev/head/bin/lm-gpu-tests
  for i in $(seq ${RATIOS:-2}); do for v in device head; do
    run ratio-$v-$i 40 $(lib $v) python3 bench/pending/probes/prefill_ratio5.py $O/ratio-$v-$i.json; done; done
  run prefill-kernels-head 60 $(lib head) python3 bench/pending/probes/prefill_kernels.py $O/prefill-kernels-head.json;;
esac
run prefill-kernels 60 $(lib device) python3 bench/pending/probes/prefill_kernels.py $O/prefill-kernels.json
for v in $VARIANTS; do [ $v = ts ] || [ $v = head ] || [ $v = $FIRST ] || { suites $v; sanitize $v memcheck synccheck; }; done
sanitize $FIRST synccheck
# 4. main's step under ncu (an eager step after warm-up): stalls and executed instructions per
#    SASS line (SourceCounters), which phase's instructions the warps wait in
run ncu 90 $(lib device) ncu --clock-control none -k regex:hdecode -s 5 -c 1 --import-source yes -f -o /tmp/hd \
  --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
  --section SchedulerStats --section InstructionStats --section SourceCounters \
  python3 bench/pending/probes/decode_eager.py 8
ncu -i /tmp/hd.ncu-rep --page details > $O/ncu-details.txt 2>&1
ncu -i /tmp/hd.ncu-rep --page source --csv --print-source cuda,sass > $O/ncu-source.csv 2>> $O/ncu-details.txt
# 5. where the landed step's time goes: per-CTA timestamps (ts plugin), staging without keys
case " $VARIANTS " in *" ts "*)
  run ts 30 $(lib ts) python3 bench/pending/probes/decode_probe_ts.py - $M=150000 $K=1
  run probe-nokeys 40 $(lib ts) python3 bench/pending/probes/decode_probe.py $O/probe-nokeys.json "-,$M=150000,$K=1,$K=3,$S=2,$S=2+$K=1,$S=2+$K=3";;
esac
run racecheck 120 env CK_RUN_SUITE=gpu_hybrid CK_RUN_CASE=decode compute-sanitizer --tool racecheck --error-exitcode 3 --print-limit 20 $B/bin/lm-gpu-tests small
finish

#!/bin/sh
# prefill_call.sh - session 9's device call: the fused hybrid prefill with its products kept
# pipelined (variant C2: bench/NOTES.md, "Hybrid prefill's products unserialized") and with
# the window's weights rounded once (P1), against main; the GPU suites on C2 (main's 1a91b3b
# refactor is in every plugin: its first GPU run). Run from the repository root on the device.
# Prerequisites (this machine): .dev/carry.tgz (main's build as .dev/device), .dev/slim_<v>.tgz
# (<v>/lib/libliquidmemory_cuda.so.0) for each of VARIANTS. GUARD (560) seconds: no step starts
# that could end past it. Everything goes into $OUT/call.tgz.
VARIANTS=${VARIANTS:-"C2 P1"}
GUARD_DEFAULT=560
. bench/pending/probes/call_setup.sh
FIRST=$(echo $VARIANTS | cut -d' ' -f1)
# 1. correctness first: the hybrid suite (the fused path, its error against float64) per variant
for v in $VARIANTS; do run hybrid-tests-$v 60 env CK_RUN_SUITE=gpu_hybrid CK_RUN_CASE=hybrid .dev/$v/bin/lm-gpu-tests; done
# 2. the 128K ratio, main and each variant alternating, ROUNDS rounds (five pairs a run)
for i in $(seq ${ROUNDS:-2}); do for v in device $VARIANTS; do
  run ratio-$v-$i 40 $(lib $v) python3 bench/pending/probes/prefill_ratio5.py $O/ratio-$v-$i.json; done; done
for v in device $FIRST; do run prefill-kernels-$v 40 $(lib $v) python3 bench/pending/probes/prefill_kernels.py $O/prefill-kernels-$v.json; done
# 3. the first variant's remaining suites and sanitizers (the plugin that would land)
run dec-tests-$FIRST 40 env CK_RUN_SUITE=gpu_hybrid CK_RUN_CASE=decode .dev/$FIRST/bin/lm-gpu-tests
run pool-tests-$FIRST 40 env CK_RUN_SUITE=gpu_pool .dev/$FIRST/bin/lm-gpu-tests
san() { run $1-$FIRST $2 env CK_RUN_SUITE=gpu_hybrid CK_RUN_CASE=hybrid compute-sanitizer --tool $1 --error-exitcode 3 --print-limit 20 .dev/$FIRST/bin/lm-gpu-tests small; }
san memcheck 60
# 4. test_hybrid.py whole and hybrid_bench.py (SDPA in the same run) on the first variant
run pytest-hybrid-$FIRST 200 $(lib $FIRST) python3 -m pytest -q -rfEs -p no:cacheprovider tests/python/test_hybrid.py
run bench-$FIRST 60 $(lib $FIRST) python3 bench/hybrid_bench.py --out $O/hybrid-$FIRST.json --commit "$(cat $B/COMMIT)+$FIRST"
san synccheck 60
san racecheck 90
finish

#!/bin/sh
# gpu_run.sh - everything the GPU machine does in one call, from the carried
# build (make device-build here; nothing is compiled there): the GPU test
# suites, the benchmark with its peers, the long-sequence suite and the
# compute-sanitizer pass on the reduced grid. Phases share one deadline so
# the call ends inside the device's 10-minute limit; each one's log, a
# summary and the benchmark's JSON go to $OUT.
#   sh bench/gpu_run.sh [phase ...]   phases: tests (with lm-gpu-tests license in evaluation
#                                     mode) profile bench long sanitize (default
#                                     all but profile: a SASS histogram of the kernel, ncu's
#                                     sections and its per-instruction stalls in source.csv.gz),
#                                     backward (its suite; core forward vs backward time at
#                                     8K / 32K, tensor-core and exact backward),
#                                     backward-sanitize (the sanitizers on its small case),
#                                     train (bench/train_demo.py up to 32K on a curriculum,
#                                     packed in train.tgz; skipped when the backward did not
#                                     run from Python), train-bench (the training benchmark
#                                     at 8K-128K with peers, fla from peers/ included,
#                                     packed in train-bench.tgz),
#                                     python: pytest (tests/python on the GPU), then sweep (the
#                                     LiquidMemory.benchmark sweep --mode all, packed in sweep.tgz);
#                                     kernels: bench/v2_probe.py under LM_ATTEND_KERNEL=v1 and v2,
#                                     and the core benchmark again under v1 (bench-v1.json), beside
#                                     the bench phase's default (v2 where it takes the call);
#                                     diagcompile (bench/diag_compile.py: torch.compile of the module,
#                                     linear and hybrid, per backend eager / aot_eager / inductor),
#                                     eager (bench/eager_step.py: host cost of an eager core decode
#                                     and module step, E=4096, 32 heads, bf16, with their floors),
#                                     LM_BENCH_LENGTHS=2048,... limits the bench phase's lengths;
#                                     cp1 (context parallelism at world size 1 on one GPU: the
#                                     wrapper's cost, and the pieces' costs at 512K / 1M),
#                                     cp (several GPUs: bench/cp_bench.py under torchrun, 1M
#                                     tokens on 2 GPUs against one, and 8M forward + backward
#                                     on 8 when there are 8)
#                                     engine: the pool's GPU suite, examples/engine.c on the GPU,
#                                     lm-engine-gpu-bench (indexed decode of 256 slots vs its byte
#                                     floor, decode at B = 1 in a graph, varlen prefill of 64
#                                     sequences on both pool paths, LM_POOL_PREFILL=each and
#                                     packed, vs one 128K prefill: engine-gpu.json) and the CPU
#                                     engine benchmark on this machine's cores (engine-cpu-*.json),
#                                     engine-sanitize (memcheck, racecheck, synccheck on the pool
#                                     suite's reduced grid: both prefill paths),
#                                     hybrid (hybrid attention, issue #16: its GPU suite, its pytest
#                                     file, bench/hybrid_bench.py into hybrid.json), hybrid-sanitize
#                                     (memcheck, racecheck, synccheck on its reduced grid),
#                                     hybrid-ab (hybrid_bench.py by default and under each VAR=value
#                                     of LM_HYBRID_AB, e.g. "LM_HYBRID_BODY=wmma LM_HYBRID_DEN=passA"),
#                                     evict (bench/eviction_bench.py --part lm on CUDA, <= 9 min:
#                                     needs build/corpus/tinyshakespeare.txt carried, or
#                                     LM_CORPUS=path; LM_EVICT_ARGS adds arguments; packed in evict.tgz),
#                                     dprofile (ncu on one core decode step at B = 1),
#                                     breakdown (bench/kernel_breakdown.py: per-kernel time of the
#                                     core prefill at 2K and the module's forward + backward),
#                                     hf (tests/python/test_hf.py: the Hugging Face patch, linear
#                                     and hybrid, on transformers' models; needs transformers),
#                                     kern2 (compensated prefills on kernel v2, issue #18): the core
#                                     and absorb grids, the comp suite under v2 and v1 and their
#                                     errors compared (v2 <= 1.01 x v1 per case), the core prefill
#                                     with its 32-head error at 32K / 128K / 1M under v2 and v1
#                                     (kern2-bench-v*.json; LM_BENCH_LENGTHS overrides), then the
#                                     long suite,
#                                     hprofile (ncu on one 32K hybrid prefill and decode step:
#                                     every kernel's sections, per-instruction stalls of the
#                                     window body and the decode; LM_PROFILE_L overrides 32K)
set -u
OUT=${OUT:-/tmp/lm-gpu-out}
B=${LM_BUILD:-build/device}
DEADLINE=$(( $(date +%s) + ${LM_SECONDS:-570} ))
PHASES=$(echo "${*:-tests bench long sanitize}" | sed 's/python/pytest sweep/')
FAILED=
mkdir -p "$OUT"
export LM_LICENSE_FILE="$PWD/$B/dev-license" PYTHONUNBUFFERED=1
unset LM_LICENSE
# The build's own record first: the device's copy of .git can lag the checkout.
COMMIT=$(cat "$B/COMMIT" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
export LM_COMMIT="$COMMIT"
# cuBLASLt comes from the toolkit; where its lib64 lacks it, from PyTorch's wheel.
# (The CUDA backend is its own library, which the core loads on first use.)
CUDA_LIB="$B/lib/libliquidmemory_cuda.so.0"
if ldd "$CUDA_LIB" | grep -q "not found"; then
    extra=$(python3 -c 'import nvidia, os; r = os.path.dirname(nvidia.__path__[0]); print(":".join(os.path.join(d, "lib") for d, s, f in os.walk(r) if "libcublasLt.so.13" in f or "libcublasLt.so.13" in str(os.listdir(os.path.join(d, "lib")) if os.path.isdir(os.path.join(d, "lib")) else "")))' 2>/dev/null)
    export LD_LIBRARY_PATH="${extra}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
SUMMARY="$OUT/summary.txt"
{ echo "commit $COMMIT  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
  ldd "$CUDA_LIB" | grep -E "cublas|not found"; } > "$SUMMARY" 2>&1

# phase NAME SECONDS LOG CMD...: runs CMD with at most SECONDS (and the deadline).
phase() {
    name=$1 want=$2 log=$3
    shift 3
    left=$(( DEADLINE - $(date +%s) ))
    [ "$want" -gt "$left" ] && want=$left
    if [ "$want" -lt 20 ]; then
        echo "$name: skipped, ${left}s left" >> "$SUMMARY"
        return
    fi
    t0=$(date +%s)
    timeout "$want" "$@" >> "$log" 2>&1
    rc=$?
    [ "$rc" -ne 0 ] && FAILED="$FAILED $name"
    echo "$name: rc $rc in $(( $(date +%s) - t0 ))s (limit ${want}s)" >> "$SUMMARY"
    tail -n 4 "$log" | sed "s/^/  $name| /" >> "$SUMMARY"
}

# sanitize_suite NAME SUITE SECONDS: memcheck, racecheck and synccheck on one
# GPU suite's reduced grid, each a phase NAME-tool, into $OUT/NAME-sanitize.log.
sanitize_suite() {
    for tool in memcheck racecheck synccheck; do
        echo "==== $tool" >> "$OUT/$1-sanitize.log"
        phase "$1-$tool" "$3" "$OUT/$1-sanitize.log" env CK_RUN_SUITE="$2" \
            compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 "$B/bin/lm-gpu-tests" small
    done
}

# ncu_pages REPORT LOG CSV: a report's sections as text (appended to LOG), and per SASS
# instruction (with its source line) the samples of each stall reason into CSV, gzipped:
# which code the warps wait in. (The report stays out of $OUT: the device returns a few
# files only.)
ncu_pages() {
    ncu -i "$1" --page details >> "$2" 2>&1
    ncu -i "$1" --page source --csv --print-source cuda,sass > "$3" 2>> "$2" ||
        ncu -i "$1" --page source --csv --print-source sass > "$3" 2>> "$2"
    gzip -f "$3"
}

for p in $PHASES; do
    case $p in
    tests) phase tests 240 "$OUT/tests.log" "$B/bin/lm-gpu-tests"
        # the license against graph replays, in evaluation mode (no license anywhere)
        phase license-tests 60 "$OUT/license.log" env -u LM_LICENSE -u LM_LICENSE_FILE \
            HOME="$OUT/no-home" "$B/bin/lm-gpu-tests" license ;;
    bench) phase bench 200 "$OUT/bench.log" python3 bench/gpu_bench.py --lib "$B/lib/libliquidmemory.so" \
               --out "$OUT/bench.json" --commit "$COMMIT" ${LM_BENCH_LENGTHS:+--lengths "$LM_BENCH_LENGTHS"} ;;
    long) phase long 120 "$OUT/long.log" "$B/bin/lm-gpu-tests" long ;;
    kernels)
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        for k in v1 v2; do
            echo "==== LM_ATTEND_KERNEL=$k" >> "$OUT/kernels.log"
            phase "probe-$k" 60 "$OUT/kernels.log" env LM_ATTEND_KERNEL=$k python3 bench/v2_probe.py
        done
        phase bench-v1 200 "$OUT/kernels.log" env LM_ATTEND_KERNEL=v1 python3 bench/gpu_bench.py \
            --lib "$B/lib/libliquidmemory.so" --out "$OUT/bench-v1.json" --commit "$COMMIT" \
            ${LM_BENCH_LENGTHS:+--lengths "$LM_BENCH_LENGTHS"} ;;
    kern2)
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase kern2-core 90 "$OUT/kern2-core.log" "$B/bin/lm-gpu-tests" core
        for k in v2 v1; do
            phase "kern2-comp-$k" 60 "$OUT/kern2-comp-$k.log" env LM_ATTEND_KERNEL=$k "$B/bin/lm-gpu-tests" comp
        done
        # per case "comp <case>: err E ...": v2's error at most 1.01 x v1's, all four cases present
        phase kern2-compare 20 "$OUT/kern2-compare.log" awk '/^comp /{ c = $2
                if (FNR == NR) { v1[c] = $4; next }
                n++; r = (c in v1) ? $4 / v1[c] : 99
                printf "%s v1 %s v2 %s v2/v1 %.4f\n", c, v1[c], $4, r
                if (r > 1.01) bad++ }
            END { if (n < 4 || bad) { print "FAILED: " n " cases, " bad + 0 " over 1.01 x v1"; exit 1 } }' \
            "$OUT/kern2-comp-v1.log" "$OUT/kern2-comp-v2.log"
        for k in v2 v1; do
            phase "kern2-bench-$k" 90 "$OUT/kern2-bench-$k.log" env LM_ATTEND_KERNEL=$k python3 bench/gpu_bench.py \
                --core-only --lib "$B/lib/libliquidmemory.so" --out "$OUT/kern2-bench-$k.json" --commit "$COMMIT" \
                --lengths "${LM_BENCH_LENGTHS:-32768,131072,1048576}"
        done
        phase kern2-long 120 "$OUT/kern2-long.log" "$B/bin/lm-gpu-tests" long ;;
    profile)
        # Kernel v2 (the default core prefill on sm_90): at 8K with 32 heads the call runs
        # ABSORB, the scan and CAUSAL; -c 2 takes both v2 launches (ABSORB, then CAUSAL).
        V2=_ZN3lmk2v26kernelILi128ELb0E10lmk_attendEEvT1_NS0_3TmaEi
        # (the whole dump, cut at the function's header: `-fun` found no function in the
        # CUDA 13 build, 2026-12-06 session 3)
        { cuobjdump -sass "$CUDA_LIB" | awk -v f="$V2" '/Function : /{ on = ($3 == f) } on' |
              grep -oE '^ +/\*[0-9a-f]{4}\*/ +[A-Z0-9_.]+' | awk '{print $2}' | sort | uniq -c | sort -rn | head -40
          echo "==== ncu"; } > "$OUT/profile.log" 2>&1
        phase profile 100 "$OUT/profile.log" ncu --clock-control none --kernel-name-base mangled -k "regex:$V2" -c 2 \
            --import-source yes -f -o /tmp/attend \
            --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
            --section SchedulerStats --section InstructionStats --section MemoryWorkloadAnalysis \
            --section SourceCounters python3 bench/gpu_bench.py --lib "$B/lib/libliquidmemory.so" \
            --out /dev/null --profile 8192
        ncu_pages /tmp/attend.ncu-rep "$OUT/profile.log" "$OUT/source.csv" ;;
    dprofile)
        # The core decode step at B = 1 (issue #18's decode row): ncu on the 3rd of 3 steps
        # (the first ones warm up), every section, per-instruction stalls.
        phase dprofile 100 "$OUT/dprofile.log" ncu --clock-control none -k "regex:decode" -s 2 -c 1 \
            --import-source yes -f -o /tmp/decode --set full python3 bench/gpu_bench.py \
            --lib "$B/lib/libliquidmemory.so" --out /dev/null --profile-decode 3
        ncu_pages /tmp/decode.ncu-rep "$OUT/dprofile.log" "$OUT/dsource.csv" ;;
    hprofile)
        # Every kernel of one 32K hybrid prefill and of one decode step (hybrid_bench.py
        # --profile): ncu's sections as text, then per SASS instruction the stall samples
        # of the window pass's body and of the decode (the report stays out of $OUT).
        # LM_HYBRID_BODY=wmma profiles the previous body instead of hybrid_body.cu's.
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase hprofile 200 "$OUT/hprofile.log" ncu --clock-control none --profile-from-start off \
            --import-source yes -f -o /tmp/hybrid \
            --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
            --section SchedulerStats --section MemoryWorkloadAnalysis --section SourceCounters \
            python3 bench/hybrid_bench.py --out /dev/null --profile "${LM_PROFILE_L:-32768}"
        ncu -i /tmp/hybrid.ncu-rep --page details >> "$OUT/hprofile.log" 2>&1
        # "body": whichever window body ran (body_v3_kernel, or body_kernel under LM_HYBRID_BODY=wmma)
        for kern in body hdecode_kernel; do
            ncu -i /tmp/hybrid.ncu-rep -k "regex:$kern" --page source --csv --print-source cuda,sass \
                > "$OUT/source-$kern.csv" 2>> "$OUT/hprofile.log"
            gzip -f "$OUT/source-$kern.csv"
        done ;;
    sanitize)
        for tool in memcheck synccheck racecheck initcheck; do
            echo "==== $tool" >> "$OUT/sanitize.log"
            phase "sanitize-$tool" 90 "$OUT/sanitize.log" compute-sanitizer --tool "$tool" --error-exitcode 3 \
                --print-limit 20 "$B/bin/lm-gpu-tests" small
        done ;;
    backward)
        phase backward-tests 120 "$OUT/backward.log" "$B/bin/lm-gpu-tests" backward
        phase backward-time 60 "$OUT/backward.log" env LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" \
            PYTHONPATH="$PWD/bindings/python" python3 -c '
import torch
from liquid_memory import _core
from liquid_memory.benchmark import _Meter
meter = _Meter(torch.device("cuda"))
def ms(fn):  # median of 10 runs after 2 warm-ups
    return meter.time(fn, 2, 10, 1e9)[0]
for L in (8192, 32768):  # B = 1, 32 heads of 128, bf16, causal, elu+1, normalised
    q, k, v, do = (torch.randn(1, L, 32, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    f = ms(lambda: _core.prefill(q, k, v))
    b = ms(lambda: _core.backward(do, q, k, v))
    x = ms(lambda: _core.backward(do, q, k, v, opts=_core.Options(precision=_core.C["LM_PRECISION_ON"])))
    print("core L=%d: forward %.3f ms, backward %.3f ms (%.2fx) on the tensor cores, "
          "%.3f ms (%.2fx) exact (LM_PRECISION_ON, fp32 kernel)" % (L, f, b, b / f, x, x / f))
' ;;
    backward-sanitize)
        for tool in memcheck racecheck synccheck initcheck; do
            echo "==== $tool" >> "$OUT/backward.log"
            phase "backward-$tool" 60 "$OUT/backward.log" env CK_RUN_SUITE=gpu_backward \
                compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 "$B/bin/lm-gpu-tests" small
        done ;;
    engine)
        phase engine-tests 200 "$OUT/engine.log" "$B/bin/lm-gpu-tests" pool
        phase engine-example 30 "$OUT/engine.log" "$B/bin/engine-cuda"
        phase engine-example-hybrid 30 "$OUT/engine.log" "$B/bin/engine-cuda" --hybrid
        phase engine-bench 120 "$OUT/engine.log" "$B/bin/lm-engine-gpu-bench" --out "$OUT/engine-gpu.json" \
            --commit "$COMMIT"
        phase engine-cpu 90 "$OUT/engine.log" "$B/bin/lm-engine-bench" --threads 2 --out "$OUT" --commit "$COMMIT"
        grep -A8 "^engine on\|^CPU decode" "$OUT/engine.log" >> "$SUMMARY" ;;
    engine-sanitize) sanitize_suite engine gpu_pool 150 ;;
    pytest)
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        # One process per file: a crash in one (an abort takes the process) loses only its file.
        # LM_PYTEST_FILES="tests/python/test_a.py ..." runs those files only.
        for f in ${LM_PYTEST_FILES:-tests/python/test_*.py}; do
            echo "==== $f" >> "$OUT/pytest.log"
            phase "pytest-$(basename "$f" .py)" 120 "$OUT/pytest.log" \
                python3 -m pytest -q -rfEs --tb=short -p no:cacheprovider "$f"
        done ;;
    sweep)
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        mkdir -p "$OUT/sweep"
        phase sweep 240 "$OUT/sweep.log" python3 -m liquid_memory.benchmark --mode all --max-seconds 10 \
            --no-progress --out "$OUT/sweep"
        tar -C "$OUT" -czf "$OUT/sweep.tgz" sweep && rm -rf "$OUT/sweep" ;;
    train)
        case "$FAILED" in *backward-time*) echo "train: skipped, the backward did not run from Python" >> "$SUMMARY"; continue ;; esac
        mkdir -p "$OUT/train"
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase train-demo 150 "$OUT/train.log" python3 bench/train_demo.py --device cuda --seq-len 32768 \
            --start-len 64 --grow-steps 150 --d-model 64 --batch-size 32 --num-queries 64 \
            --seconds 100 --eval-seqs 256 --out "$OUT/train"
        tar -C "$OUT" -czf "$OUT/train.tgz" train && rm -rf "$OUT/train" ;;
    diagcompile)
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase diagcompile 300 "$OUT/diagcompile.log" python3 bench/diag_compile.py --out "$OUT" ;;
    eager)
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase eager 120 "$OUT/eager.log" python3 bench/eager_step.py --device cuda --out "$OUT" ;;
    cp1)
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase cp1 300 "$OUT/cp1.log" python3 bench/cp_bench.py --single --tokens 1048576 --out "$OUT" ;;
    cp)
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        n=$(nvidia-smi -L | wc -l)
        if [ "$n" -lt 2 ]; then
            echo "cp: skipped, $n GPU (needs 2 or more)" >> "$SUMMARY"
            continue
        fi
        phase cp-1m 240 "$OUT/cp.log" python3 -m torch.distributed.run --standalone --nproc_per_node 2 bench/cp_bench.py \
            --tokens 1048576 --out "$OUT"
        [ "$n" -ge 8 ] && phase cp-8m 300 "$OUT/cp.log" python3 -m torch.distributed.run --standalone --nproc_per_node 8 \
            bench/cp_bench.py --tokens 8388608 --kv-heads 8 --backward --no-baseline --repeat 3 --out "$OUT" ;;
    hybrid)
        phase hybrid-tests 200 "$OUT/hybrid.log" "$B/bin/lm-gpu-tests" hybrid
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase hybrid-pytest 120 "$OUT/hybrid.log" python3 -m pytest -q -rfEs -p no:cacheprovider \
            tests/python/test_hybrid.py
        phase hybrid-bench 180 "$OUT/hybrid.log" python3 bench/hybrid_bench.py --out "$OUT/hybrid.json" \
            --commit "$COMMIT" ;;
    hybrid-sanitize) sanitize_suite hybrid gpu_hybrid 170 ;;
    hybrid-ab)
        # bench/hybrid_bench.py with the defaults, then once per space-separated VAR=value of
        # LM_HYBRID_AB (default: LM_HYBRID_BODY=wmma), same warm GPU: hybrid-ab-<n>.json
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase hybrid-ab-default 120 "$OUT/hybrid-ab.log" python3 bench/hybrid_bench.py \
            --out "$OUT/hybrid-ab-default.json" --commit "$COMMIT"
        n=0
        for setting in ${LM_HYBRID_AB:-LM_HYBRID_BODY=wmma}; do
            n=$((n + 1))
            echo "==== $setting" >> "$OUT/hybrid-ab.log"
            phase "hybrid-ab-$n" 120 "$OUT/hybrid-ab.log" env "$setting" python3 bench/hybrid_bench.py \
                --out "$OUT/hybrid-ab-$n.json" --commit "$COMMIT ($setting)"
        done ;;
    train-bench)
        mkdir -p "$OUT/train-bench"
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase train-bench 240 "$OUT/train-bench.log" python3 -m liquid_memory.benchmark --train \
            --seq-lengths 8192,32768,131072 --warmup 1 --iters 5 --max-seconds 10 --peers "$PWD/peers" \
            --out "$OUT/train-bench"
        tar -C "$OUT" -czf "$OUT/train-bench.tgz" train-bench && rm -rf "$OUT/train-bench" ;;
    evict)
        corpus=${LM_CORPUS:-build/corpus/tinyshakespeare.txt}
        if [ ! -f "$corpus" ]; then
            echo "evict: skipped, no corpus at $corpus (carry build/corpus/tinyshakespeare.txt)" >> "$SUMMARY"
            continue
        fi
        mkdir -p "$OUT/evict"
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase evict 540 "$OUT/evict.log" python3 bench/eviction_bench.py --part lm --device cuda \
            --corpus "$corpus" --out "$OUT/evict" ${LM_EVICT_ARGS:-} # split into words on purpose
        tar -C "$OUT" -czf "$OUT/evict.tgz" evict && rm -rf "$OUT/evict" ;;
    breakdown)
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase breakdown 120 "$OUT/breakdown.log" python3 bench/kernel_breakdown.py --out "$OUT/breakdown.json" \
            --commit "$COMMIT" ;;
    hf)
        export LM_LIB_PATH="$PWD/$B/lib/libliquidmemory.so" PYTHONPATH="$PWD/bindings/python"
        phase hf 420 "$OUT/hf.log" python3 -m pytest -q -rfEs --tb=short -p no:cacheprovider tests/python/test_hf.py ;;
    esac
done
# The device returns at most 8 files a call: everything but the summary goes
# into one archive (all.tgz) where the phases wrote more than 7 files.
if [ "$(find "$OUT" -type f ! -name summary.txt | wc -l)" -gt 7 ]; then
    (cd "$OUT" && find . -type f ! -name summary.txt ! -name all.tgz -print0 | tar --null -czf all.tgz -T - &&
        find . -type f ! -name summary.txt ! -name all.tgz -delete && find . -mindepth 1 -type d -empty -delete)
    echo "more than 7 files: packed into all.tgz" >> "$SUMMARY"
fi
cat "$SUMMARY"

#!/bin/sh
# land_check.sh - after decode_call.sh's LAND step (session 8): the landed plugin (.dev/slim_$V.tgz)
# in main's carried build, then test_hybrid.py whole (its torch.compile cases outlast gpu_run.sh's
# 120 s) and bench/hybrid_bench.py ROUNDS times (the decode step's and the 128K ratio's spread
# across runs). Everything in $OUT/land2.tgz. COMMIT: what the JSON records.
V=${V:-both}; O=$OUT/land2; mkdir -p $O
tar -xzf .dev/carry.tgz && tar -xzf .dev/slim_$V.tgz -C .dev || exit 2
cp .dev/$V/lib/libliquidmemory_cuda.so.0 .dev/device/lib/libliquidmemory_cuda.so.0
export LM_LIB_PATH=$PWD/.dev/device/lib/libliquidmemory.so PYTHONPATH=$PWD/bindings/python \
  LM_LICENSE_FILE=$PWD/.dev/device/dev-license PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $O/gpu.txt 2>&1
s=$(date +%s); timeout ${PYTEST_S:-300} python3 -m pytest -q -rfEs -p no:cacheprovider tests/python/test_hybrid.py > $O/pytest.log 2>&1
echo "pytest rc $? $(( $(date +%s) - s )) s: $(tail -1 $O/pytest.log)" >> $O/summary.txt
for i in $(seq ${ROUNDS:-2}); do
  timeout 60 python3 bench/hybrid_bench.py --out $O/hybrid-$i.json --commit "${COMMIT:-unknown}" > $O/bench-$i.log 2>&1
  echo "bench $i rc $?" >> $O/summary.txt
done
cd $OUT && tar -czf land2.tgz land2 && rm -rf land2

# cuda.mk - the CUDA backend (included by the Makefile when nvcc is found).
#   kernels/*.cu -> $(BUILD)/obj/kernels/*.o with nvcc: sm_90a (wgmma-capable
#   Hopper), sm_80, and compute_80 PTX for newer GPUs; src/cuda_*.c with the
#   C flags plus the CUDA headers; both linked into their own library,
#   $(BUILD)/lib/libliquidmemory_cuda.so.0, which the core dlopen()s on first
#   use (src/plugin.h), so the core needs no CUDA library. In the build tree
#   it finds cuBLASLt through a RUNPATH to $(CUDA_HOME); the copy that
#   `make install` installs has none (the system's loader path finds CUDA).
#   make test-gpu          build and run the GPU suites (needs a GPU)
#   make device-build      a self-contained build in build/device for a machine
#                          without the build's libraries (static OpenBLAS and libsodium;
#                          libgomp, libgfortran beside the library; no debug info). A
#                          test build: it says DEV_BUILD_OK=1 itself, and holds the
#                          development license and public keys, never a secret key.

CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVCC_ARCH ?= -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80 \
             -gencode=arch=compute_80,code=compute_80
NVCCFLAGS ?= -O3 -lineinfo
NVCCFLAGS += -std=c++17 $(NVCC_ARCH) -Werror all-warnings -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra,-Werror \
             -Iinclude -Isrc -Ikernels
CFLAGS += -DLM_WITH_CUDA -I$(CUDA_HOME)/include -Ikernels

CUDA_SRC := $(wildcard kernels/*.cu)
CUDA_OBJ = $(patsubst kernels/%.cu,$(BUILD)/obj/kernels/%.o,$(CUDA_SRC))
CUDA_HDR := $(wildcard kernels/*.cuh) kernels/lm_kernels.h include/liquid_memory.h src/lm_impl.h src/lm_params.h
CUDA_LINK = -L$(CUDA_HOME)/lib64 -lcublasLt -lcudart_static -lstdc++ -lrt -ldl -lpthread -lm
CUDA_LIBS = $(CUDA_LINK) -Wl,-rpath,$(CUDA_HOME)/lib64

# The backend library: the build tree's (RUNPATH to the toolkit) and the
# one installed (none).
CUDA_PLUGIN_NAME = libliquidmemory_cuda.so.$(ABI)
CUDA_PLUGIN = $(BUILD)/lib/$(CUDA_PLUGIN_NAME)
CUDA_PLUGIN_INSTALL = $(BUILD)/install/$(CUDA_PLUGIN_NAME)
CUDA_PLUGIN_OBJ = $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard src/cuda_*.c)) $(CUDA_OBJ)
ALL_TARGETS += $(CUDA_PLUGIN)

$(CUDA_PLUGIN): $(CUDA_PLUGIN_OBJ)
	@mkdir -p $(dir $@)
	sh mk/check_host_stubs.sh $(CUDA_OBJ)
	$(CC) -shared -Wl,-soname,$(CUDA_PLUGIN_NAME) -Wl,--no-undefined $(LDFLAGS) -o $@ $^ $(CUDA_LIBS)

$(CUDA_PLUGIN_INSTALL): $(CUDA_PLUGIN_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,-soname,$(CUDA_PLUGIN_NAME) -Wl,--no-undefined $(LDFLAGS) -o $@ $^ $(CUDA_LINK)

.PHONY: install-cuda
install: install-cuda
install-cuda: $(CUDA_PLUGIN_INSTALL)
	install -d $(DESTDIR)$(PREFIX)/lib
	install -m 755 $< $(DESTDIR)$(PREFIX)/lib/

# The Python package copies libliquidmemory*.so* (mk/python.mk): the backend too;
# the release archive (mk/dist.mk) holds it beside both copies of the core.
python: $(CUDA_PLUGIN)
DIST_FILES += lib/$(CUDA_PLUGIN_NAME):$(CUDA_PLUGIN_INSTALL) \
              python/liquid_memory/$(CUDA_PLUGIN_NAME):$(CUDA_PLUGIN_INSTALL)

$(BUILD)/obj/kernels/%.o: kernels/%.cu $(CUDA_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# The host glue also depends on the kernels' parameter structs.
$(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard src/cuda_*.c)): src/cuda_impl.h kernels/lm_kernels.h

# ---- GPU tests ----
GPU_TEST_SRC := $(wildcard tests/gpu/*.c) tests/ref.c tests/ref_backward.c tests/pool_cases.c tests/hybrid_cases.c \
                tests/absorb_cases.c tests/attend_cases.c tests/backward_cases.c tests/module_cases.c \
                tests/module_backward_cases.c
GPU_TEST_BIN = $(BUILD)/bin/lm-gpu-tests
ALL_TARGETS += $(GPU_TEST_BIN)
GPU_TEST_LIBS ?= $$(pkg-config --libs check)

$(GPU_TEST_BIN): $(GPU_TEST_SRC) $(wildcard tests/gpu/*.h) $(wildcard tests/*.h) $(BUILD)/lib/libliquidmemory.so \
                 $(CUDA_PLUGIN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -Itests/gpu -o $@ $(GPU_TEST_SRC) $(LDFLAGS) -L$(BUILD)/lib \
	    -lliquidmemory $(RPATH) $(GPU_TEST_LIBS) -L$(CUDA_HOME)/lib64 -lcudart_static -lrt -ldl \
	    -lpthread -lm -fopenmp

# ---- the engine on the GPU: the example's CUDA copy and the benchmark ----
ENGINE_CUDA_BIN = $(BUILD)/bin/engine-cuda
ENGINE_GPU_BENCH_BIN = $(BUILD)/bin/lm-engine-gpu-bench
ALL_TARGETS += $(ENGINE_CUDA_BIN) $(ENGINE_GPU_BENCH_BIN)
CUDA_PROGRAM_LIBS = -L$(CUDA_HOME)/lib64 -lcudart_static -lrt -ldl -lpthread -lm

$(ENGINE_CUDA_BIN): examples/engine.c $(BUILD)/lib/libliquidmemory.so
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -Wall -Wextra -Werror -DENGINE_CUDA -Iinclude -I$(CUDA_HOME)/include -o $@ $< \
	    $(LDFLAGS) -L$(BUILD)/lib -lliquidmemory $(RPATH) $(CUDA_PROGRAM_LIBS)

$(ENGINE_GPU_BENCH_BIN): bench/engine_gpu_bench.c $(BUILD)/lib/libliquidmemory.so
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -Wall -Wextra -Werror -Iinclude -I$(CUDA_HOME)/include -o $@ $< \
	    $(LDFLAGS) -L$(BUILD)/lib -lliquidmemory $(RPATH) $(CUDA_PROGRAM_LIBS)

.PHONY: test-gpu device-build
test-gpu: $(GPU_TEST_BIN)
	$(TEST_ENV) $(GPU_TEST_BIN)
	$(TEST_ENV) $(GPU_TEST_BIN) long
	env -u LM_LICENSE -u LM_LICENSE_FILE HOME=$(abspath $(BUILD))/no-home $(GPU_TEST_BIN) license

# ---- a build that runs where only the CUDA driver and toolkit are ----
ifeq ($(DEVICE_BUILD),1)
CFLAGS += -g0
LDLIBS := -L/usr/lib/x86_64-linux-gnu/openblas-openmp -Wl,-Bstatic -lopenblas -Wl,-Bdynamic \
          $(SODIUM_LIBS) -lgfortran -lm -fopenmp
LDLIBS += -Wl,-rpath,'$$ORIGIN'
GPU_TEST_LIBS = -Wl,-Bstatic -lcheck_pic -lsubunit -Wl,-Bdynamic
endif

device-build: DEV_BUILD_OK = 1
device-build: dev-build-guard
	@echo "device-build: a development (test) build for the GPU machine (DEV_BUILD_OK=1)"
	rm -rf build/device/dev-key
	$(MAKE) --no-print-directory DEVICE_BUILD=1 BUILD=build/device \
	    build/device/lib/libliquidmemory.so build/device/lib/libliquidmemory_cuda.so.$(ABI) \
	    build/device/bin/lm-gpu-tests build/device/dev-license build/device/bin/engine-cuda \
	    build/device/bin/lm-engine-gpu-bench build/device/bin/lm-engine-bench
	cp $(DEV_KEY_DIR)/vendor.pub $(DEV_KEY_DIR)/vendor-next.pub build/device/
	rm -f build/device/bin/lm-license-vendor # signed dev-license above; the GPU needs no signer
	cp -L /usr/lib/x86_64-linux-gnu/libgomp.so.1 /usr/lib/x86_64-linux-gnu/libgfortran.so.5 \
	    /usr/lib/x86_64-linux-gnu/libquadmath.so.0 build/device/lib/
	@! grep -rlI "LM-SECRET-KEY" build/device || \
	    { echo "device-build: a secret key is under build/device" >&2; exit 1; }
	strip --strip-debug build/device/lib/libliquidmemory.so.$(VERSION) build/device/lib/libliquidmemory_cuda.so.$(ABI) \
	    build/device/bin/lm-gpu-tests
	git rev-parse --short HEAD > build/device/COMMIT

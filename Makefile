# Liquid Memory - one entry point.
#   make               build/lib/libliquidmemory.{so,a}, build/liquid_memory.pc, tools
#   make test          install missing Debian packages, build, run every test suite
#   make test-asan     the C suites under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench         install, build, run the sequence-length sweep (JSON in bench/results/)
#   make install PREFIX=/usr/local      make clean
#   make dist          the signed release archive (mk/dist.mk; a release build, or DEV_BUILD_OK=1)
# Everything is written under build/. nvcc, when found, adds the CUDA backend
# (mk/cuda.mk), a library of its own that the core loads on first use;
# CUDA=0 builds the CPU backend alone.

PREFIX ?= /usr/local
PYTHON ?= /usr/bin/python3
CC ?= gcc
BUILD ?= build
SAN ?=

# Debian packages the build and the tests use (mk/deps.sh installs them).
DEPS = gcc make pkg-config libopenblas-dev libopenblas-openmp-dev libsodium-dev check
DEPS_TEST = $(DEPS) python3-cffi python3-numpy python3-pytest python3-torch \
            python3-matplotlib python3-tqdm python3-setuptools python3-pip cmake g++

# OpenBLAS built for OpenMP shares the library's OpenMP thread pool; the
# default pthread build's workers spin against it (measured on 2 cores, E=512:
# 8K prefill 204 -> 192 ms, 1K 32 -> 24 ms). The pthread build still works.
BLAS_PC_DIR := $(dir $(firstword $(wildcard /usr/lib/*/openblas-openmp/pkgconfig/openblas.pc)))
BLAS_PKG = $(if $(BLAS_PC_DIR),PKG_CONFIG_PATH=$(BLAS_PC_DIR)) pkg-config
BLAS_CFLAGS := $(shell $(BLAS_PKG) --cflags openblas 2>/dev/null)
BLAS_RPATH = -Wl,-rpath,$(shell $(BLAS_PKG) --variable=libdir openblas)
BLAS_LIBS := $(shell $(BLAS_PKG) --libs openblas 2>/dev/null || echo -lopenblas) \
             $(if $(BLAS_PC_DIR),$(BLAS_RPATH))

OPT ?= -O3 -g
CFLAGS += $(OPT) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -fPIC -fopenmp \
          -fvisibility=hidden -Iinclude -Isrc -Ilicense $(BLAS_CFLAGS)
# libsodium goes into the library itself, its symbols hidden there: an LD_PRELOADed
# libsodium cannot replace the license's signature check (mk/license.mk).
SODIUM_A := $(shell pkg-config --variable=libdir libsodium 2>/dev/null)/libsodium.a
SODIUM_LIBS = -Wl,--exclude-libs,libsodium.a $(SODIUM_A)
LDLIBS += $(BLAS_LIBS) $(SODIUM_LIBS) -lm -fopenmp -ldl
ifneq ($(SAN),)
CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
endif

# The shared library: the file carries the release, its soname the ABI
# (LM_ABI_VERSION), and libliquidmemory.so is the link-time name.
VERSION := $(shell sed -n 's/^\#define LM_VERSION_STRING "\(.*\)"/\1/p' include/liquid_memory.h)
ABI := $(shell sed -n 's/^\#define LM_ABI_VERSION \([0-9]*\)/\1/p' include/liquid_memory.h)
SO_NAME = libliquidmemory.so.$(ABI)
SO_FILE = $(BUILD)/lib/libliquidmemory.so.$(VERSION)
SO = $(BUILD)/lib/libliquidmemory.so
AR_LIB = $(BUILD)/lib/libliquidmemory.a
PC = $(BUILD)/liquid_memory.pc
TEST_BIN = $(BUILD)/bin/lm-tests
BENCH_BIN = $(BUILD)/bin/lm-bench
ENGINE_BIN = $(BUILD)/bin/engine
ENGINE_BENCH_BIN = $(BUILD)/bin/lm-engine-bench
RPATH = -Wl,-rpath,'$$ORIGIN/../lib'

# Targets the included fragments add to.
ALL_TARGETS = $(SO) $(AR_LIB) $(PC) $(BENCH_BIN) $(TEST_BIN) $(ENGINE_BIN) $(ENGINE_BENCH_BIN)
TEST_TARGETS = test-c test-example test-engine
TEST_ENV ?=

.PHONY: all deps deps-test test test-c test-example test-engine test-asan bench bench-engine install clean
.DEFAULT_GOAL := all

# The core: everything but the CUDA backend (src/cuda_*.c, kernels/: mk/cuda.mk).
LIB_SRC := $(filter-out src/cuda_%.c,$(wildcard src/*.c) $(wildcard license/*.c))
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA ?= $(if $(and $(NVCC),$(wildcard mk/cuda.mk)),1,0)
ifeq ($(CUDA),1)
include mk/cuda.mk
endif
LIB_OBJ = $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRC))

-include mk/license.mk
-include mk/python.mk
-include mk/dist.mk
-include mk/package.mk

deps:
	@sh mk/deps.sh $(DEPS)
deps-test:
	@sh mk/deps.sh $(DEPS_TEST)

$(BUILD)/obj/%.o: %.c include/liquid_memory.h $(wildcard src/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(SO_FILE): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,-soname,$(SO_NAME) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# libliquidmemory.so -> .so.0 -> .so.0.2.0 (make follows the links: they are
# as new as the file).
$(SO): $(SO_FILE)
	ln -sf $(notdir $(SO_FILE)) $(dir $@)$(SO_NAME)
	ln -sf $(SO_NAME) $@

$(AR_LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# What a program linking the static library adds (pkg-config --static, and
# the CMake package's static target): the core's own dependencies only, the
# CUDA backend being a library of its own.
LIBS_PRIVATE = $(BLAS_LIBS) -lsodium -lm -fopenmp -ldl
# pkg-config file for prefix $(1), written to $(2).
make_pc = sed -e 's|@PREFIX@|$(1)|' -e 's|@VERSION@|$(VERSION)|' \
              -e 's|@LIBS_PRIVATE@|$(LIBS_PRIVATE)|' \
              mk/liquid_memory.pc.in > $(2)
$(PC): mk/liquid_memory.pc.in
	@mkdir -p $(dir $@)
	$(call make_pc,$(PREFIX),$@)

# ---- tests ----
TEST_SRC := $(wildcard tests/test_*.c) tests/main.c tests/ref.c tests/ref_backward.c tests/pool_cases.c tests/hybrid_cases.c \
            tests/absorb_cases.c tests/attend_cases.c tests/backward_cases.c tests/module_cases.c \
            tests/module_backward_cases.c
$(TEST_BIN): $(TEST_SRC) $(wildcard tests/*.h) $(SO)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $(TEST_SRC) $(LDFLAGS) -L$(BUILD)/lib \
	    -lliquidmemory $(RPATH) $$(pkg-config --libs check) -lpthread -lm -fopenmp

test: deps-test
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory $(TEST_TARGETS)

# The pool's license suite runs again in evaluation mode (no license anywhere).
test-c: $(TEST_BIN)
	$(TEST_ENV) $(TEST_BIN)
	env -u LM_LICENSE -u LM_LICENSE_FILE HOME=$(abspath $(BUILD))/no-home LM_TEST_EVALUATION=1 \
	    CK_RUN_SUITE=pool_license $(TEST_BIN)

test-asan: deps
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 CUDA=0 OPT="-O1 -g" test-c

# ---- the engine example (examples/engine.c): continuous batching, checked ----
$(ENGINE_BIN): examples/engine.c $(SO)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -Wall -Wextra -Werror -Iinclude -o $@ $< $(LDFLAGS) -L$(BUILD)/lib -lliquidmemory \
	    $(RPATH) -lm

test-engine: $(ENGINE_BIN)
	$(TEST_ENV) $(ENGINE_BIN)
	$(TEST_ENV) $(ENGINE_BIN) --hybrid

# ---- benchmark ----
$(BENCH_BIN): bench/lm_bench.c $(SO)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -L$(BUILD)/lib -lliquidmemory $(RPATH) -lm -fopenmp

# The CPU engine benchmark: 16 slots decoded in one indexed call against 16
# separate calls, 2 threads (JSON in bench/results/).
$(ENGINE_BENCH_BIN): bench/engine_bench.c $(SO)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -L$(BUILD)/lib -lliquidmemory $(RPATH) -lm -fopenmp

bench-engine: $(ENGINE_BENCH_BIN) $(DEV_LICENSE)
	$(TEST_ENV) $(ENGINE_BENCH_BIN) --commit $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown) \
	    --out bench/results

bench: deps
	@$(MAKE) --no-print-directory all
	$(TEST_ENV) $(BENCH_BIN) --commit $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown) \
	    --out bench/results

# ---- install ----
install: dev-build-guard $(SO) $(AR_LIB) $(BUILD)/bin/lm-license
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/liquid_memory.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(SO_FILE) $(DESTDIR)$(PREFIX)/lib/
	ln -sf $(notdir $(SO_FILE)) $(DESTDIR)$(PREFIX)/lib/$(SO_NAME)
	ln -sf $(SO_NAME) $(DESTDIR)$(PREFIX)/lib/libliquidmemory.so
	install -m 644 $(AR_LIB) $(DESTDIR)$(PREFIX)/lib/
	$(call make_pc,$(PREFIX),$(DESTDIR)$(PREFIX)/lib/pkgconfig/liquid_memory.pc)
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(BUILD)/bin/lm-license $(DESTDIR)$(PREFIX)/bin/

# The README's example: the same text as examples/quickstart.c, built through
# an install and pkg-config as a user would, then run.
STAGE = $(abspath $(BUILD)/stage)
test-example: $(SO) $(AR_LIB)
	@awk '/^```c quickstart/{f=1;next} /^```/{f=0} f' README.md | cmp -s - examples/quickstart.c || \
	    { echo "README.md's example differs from examples/quickstart.c" >&2; exit 1; }
	@$(MAKE) --no-print-directory install PREFIX=$(STAGE) DEV_BUILD_OK=1 >/dev/null
	$(CC) -std=c11 -Wall -Wextra -Werror -o $(BUILD)/bin/quickstart examples/quickstart.c \
	    $$(PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig pkg-config --cflags --libs liquid_memory) \
	    -Wl,-rpath,$(STAGE)/lib
	$(TEST_ENV) $(BUILD)/bin/quickstart

clean:
	rm -rf build

# Last, so that every fragment's additions to ALL_TARGETS are in (prerequisites
# are expanded when the rule is read).
all: $(ALL_TARGETS)

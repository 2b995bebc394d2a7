# mk/license.mk - the license gate's part of the build (included by the Makefile).
#   The public key compiled into the library: `make VENDOR_PUBKEY=<64 hex>` for a
#   release, else a development key pair generated once under $(BUILD)/dev-key/
#   (the library then says "development build").
#   $(BUILD)/bin/lm-license     the vendor's provisioning tool
#   $(BUILD)/dev-license        a license signed with that key, used by make test / bench
#                               (release builds: only with VENDOR_SECRET_KEY=<file>)
#   make test-license           the license test suites (part of make test)
#   make fuzz [FUZZ_SECONDS=600]   libFuzzer over the token code (clang)
#   make fuzz-smoke             replay of license/fuzz/corpus + a short fuzz, for CI
#   make fuzz-corpus            rewrites license/fuzz/corpus from its generator

LICENSE_CLI = $(BUILD)/bin/lm-license
LICENSE_HEADER = $(BUILD)/gen/lm_vendor_key.h
DEV_LICENSE = $(BUILD)/dev-license
# The token code that the tool, the tests and the fuzz target share with the library.
LICENSE_CORE_SRC = license/sign.c license/payload.c license/token.c license/validity.c \
                   license/hostid.c license/lookup.c
LICENSE_CLI_OBJ = $(patsubst %.c,$(BUILD)/obj/%.o,$(LICENSE_CORE_SRC) $(wildcard license/cli/*.c))

CFLAGS += -I$(BUILD)/gen

$(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard license/*.c)): license/license.h
$(BUILD)/obj/license/vendor_key.o: $(LICENSE_HEADER)
$(BUILD)/obj/license/cli/%.o: license/cli/cli.h license/license.h

$(LICENSE_CLI): $(LICENSE_CLI_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ -lsodium

# The header is rewritten only when the key changes (gen_key_header.sh compares),
# so it is safe to regenerate on every run and switching keys rebuilds what it must.
.PHONY: license-key-always
license-key-always:
ifeq ($(VENDOR_PUBKEY),)
LICENSE_DEV_KEY = $(BUILD)/dev-key/vendor
LICENSE_SIGNING_KEY = $(LICENSE_DEV_KEY).secret
$(LICENSE_DEV_KEY).secret: | $(LICENSE_CLI)
	@mkdir -p $(dir $@)
	$(LICENSE_CLI) keygen --out $(LICENSE_DEV_KEY)
$(LICENSE_DEV_KEY).pub: $(LICENSE_DEV_KEY).secret
$(LICENSE_HEADER): $(LICENSE_DEV_KEY).pub license/gen_key_header.sh license-key-always
	@sh license/gen_key_header.sh "$$(cat $<)" development $@
else
LICENSE_SIGNING_KEY = $(VENDOR_SECRET_KEY)
$(LICENSE_HEADER): license/gen_key_header.sh license-key-always
	@sh license/gen_key_header.sh '$(VENDOR_PUBKEY)' release $@
endif

ALL_TARGETS += $(LICENSE_CLI)

ifneq ($(LICENSE_SIGNING_KEY),)
# The header changes exactly when the key does: a new key mints a new license.
$(DEV_LICENSE): $(LICENSE_SIGNING_KEY) $(LICENSE_HEADER) | $(LICENSE_CLI)
	$(LICENSE_CLI) issue --key $< --licensee "Liquid Memory build and test license" \
	    --days 36500 --max-seq-len 0 --out $@
ALL_TARGETS += $(DEV_LICENSE)
# LM_LICENSE is dropped so that a token in the caller's environment cannot shadow the file.
TEST_ENV = env -u LM_LICENSE LM_LICENSE_FILE=$(abspath $(DEV_LICENSE))
test-c bench: $(DEV_LICENSE)
endif

# ---- tests ----
LICENSE_TEST_BIN = $(BUILD)/bin/lm-license-tests
LICENSE_TEST_SRC = $(wildcard tests/license/*.c)
# Linked statically: the suites test the internal token code (hidden in the .so)
# beside the public API. A static archive brings no dependencies along, so the
# C++ runtime of the CUDA objects is named here.
$(LICENSE_TEST_BIN): $(LICENSE_TEST_SRC) $(wildcard tests/license/*.h) license/license.h $(AR_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/license -o $@ $(LICENSE_TEST_SRC) $(LDFLAGS) $(AR_LIB) \
	    $(LDLIBS) $(CUDA_LIBS) $(if $(filter 1,$(CUDA)),-lstdc++) $$(pkg-config --libs check) -lpthread

# No license from the caller's environment reaches the suites: each test sets its own.
.PHONY: test-license test-license-asan
test-license: $(LICENSE_TEST_BIN) $(LICENSE_CLI) $(LICENSE_SIGNING_KEY)
	env -u LM_LICENSE -u LM_LICENSE_FILE \
	    LM_TEST_SIGNING_KEY=$(if $(LICENSE_SIGNING_KEY),$(abspath $(LICENSE_SIGNING_KEY))) \
	    LM_TEST_CLI=$(abspath $(LICENSE_CLI)) $(LICENSE_TEST_BIN)
TEST_TARGETS += test-license

# make test-asan runs the license suites under ASan + UBSan as well.
test-asan: test-license-asan
test-license-asan:
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 CUDA=0 OPT="-O1 -g" test-license

# ---- fuzzing (clang's libFuzzer) ----
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 30
FUZZ_DIR = $(BUILD)/fuzz
FUZZ_BIN = $(FUZZ_DIR)/fuzz-token
FUZZ_CORPUS_BIN = $(FUZZ_DIR)/make-corpus
FUZZ_FLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -Wall -Wextra -Werror -Ilicense \
             -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_RUN = -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
FUZZ_DEPS = $(LICENSE_CORE_SRC) license/license.h license/fuzz/fuzz_key.h

$(FUZZ_BIN): license/fuzz/fuzz_token.c $(FUZZ_DEPS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(LICENSE_CORE_SRC) -lsodium

$(FUZZ_CORPUS_BIN): license/fuzz/make_corpus.c $(FUZZ_DEPS)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_POSIX_C_SOURCE=200809L -g -Wall -Wextra -Werror -Ilicense -o $@ $< \
	    $(LICENSE_CORE_SRC) -lsodium

.PHONY: fuzz fuzz-smoke fuzz-corpus
fuzz: $(FUZZ_BIN)
	@mkdir -p $(FUZZ_DIR)/corpus
	$(FUZZ_BIN) $(FUZZ_RUN) -max_total_time=$(FUZZ_SECONDS) $(FUZZ_DIR)/corpus license/fuzz/corpus

fuzz-smoke: $(FUZZ_BIN)
	$(FUZZ_BIN) $(FUZZ_RUN) license/fuzz/corpus/*
	@rm -rf $(FUZZ_DIR)/smoke && mkdir -p $(FUZZ_DIR)/smoke
	$(FUZZ_BIN) $(FUZZ_RUN) -max_total_time=$(FUZZ_SMOKE_SECONDS) $(FUZZ_DIR)/smoke license/fuzz/corpus

fuzz-corpus: $(FUZZ_CORPUS_BIN)
	rm -f license/fuzz/corpus/*
	$(FUZZ_CORPUS_BIN) license/fuzz/corpus

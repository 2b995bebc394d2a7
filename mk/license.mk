# mk/license.mk - the license gate's part of the build (included by the Makefile).
#   The keys compiled into the library: `make VENDOR_PUBKEY=<64 hex>
#   [VENDOR_NEXT_PUBKEY=<64 hex>]` for a release (the current vendor key, and the next
#   one during a rotation), else development key pairs generated once under
#   $(DEV_KEY_DIR) (the library then says "development build"). The revocation list is
#   license/revoked.txt (LICENSE_REVOKED=<file> for another).
#   $(BUILD)/bin/lm-license         the customer's tool: verify, show, host-id,
#                                   verify-release (no signing code, no secret)
#   $(BUILD)/bin/lm-license-vendor  the vendor's tool: keygen, pubkey, issue, sign-release
#   $(BUILD)/dev-license            a license signed with the current key, used by make
#                                   test / bench (release builds: only with
#                                   VENDOR_SECRET_KEY=<file>)
#   make test-license           the license test suites (part of make test)
#   make test-license-build     the build's hardening, install guard and signed dist
#                               (tests/license/test_build.sh; part of make test)
#   make fuzz [FUZZ_SECONDS=600 FUZZERS="token lookup ..."]   libFuzzer (clang), one
#                               fuzzer after the other
#   make fuzz-smoke             replay of each corpus + a short fuzz of each, for CI
#   make fuzz-corpus            rewrites license/fuzz/corpus/ from its generator
# Development keys live in DEV_KEY_DIR (default build/dev-key), outside any BUILD made
# to be copied or installed (build/device, a dist stage): such a folder gets a token
# and public keys, never a secret key. install, python and dist refuse a development
# build unless DEV_BUILD_OK=1 is given (make device-build, a test build, gives it).

LICENSE_CLI = $(BUILD)/bin/lm-license
LICENSE_VENDOR_CLI = $(BUILD)/bin/lm-license-vendor
LICENSE_HEADER = $(BUILD)/gen/lm_vendor_key.h
DEV_LICENSE = $(BUILD)/dev-license
DEV_KEY_DIR ?= build/dev-key
LICENSE_REVOKED ?= license/revoked.txt

# Library sources (the Makefile's license/*.c) minus the gate itself, and minus the
# keyring the vendor's tool must not depend on (it makes the development keys).
LICENSE_VERIFY_SRC = $(filter-out license/policy.c license/keyring.c,$(wildcard license/*.c))
LICENSE_TOOL_SRC = license/cli/args.c license/cli/run.c license/cli/print.c \
                   license/cli/release.c
LICENSE_VENDOR_SRC = $(wildcard license/vendor/*.c)
obj_of = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
LICENSE_CLI_OBJ = $(call obj_of,$(LICENSE_VERIFY_SRC) license/keyring.c $(LICENSE_TOOL_SRC) \
                    license/cli/inspect.c license/cli/main.c)
LICENSE_VENDOR_OBJ = $(call obj_of,$(LICENSE_VERIFY_SRC) $(LICENSE_TOOL_SRC) $(LICENSE_VENDOR_SRC))

CFLAGS += -I$(BUILD)/gen

$(call obj_of,$(wildcard license/*.c license/cli/*.c license/vendor/*.c)): license/license.h
$(BUILD)/obj/license/keyring.o: $(LICENSE_HEADER)
$(call obj_of,$(wildcard license/cli/*.c license/vendor/*.c)): license/cli/cli.h
$(call obj_of,$(LICENSE_VENDOR_SRC)): license/vendor/vendor.h

# Both tools carry libsodium inside them too (SODIUM_A, the Makefile).
$(LICENSE_CLI): $(LICENSE_CLI_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(SODIUM_A)
$(LICENSE_VENDOR_CLI): $(LICENSE_VENDOR_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(SODIUM_A)

# The header is rewritten only when a key or the list changes (gen_key_header.sh
# compares), so it is safe to regenerate on every run and switching keys rebuilds
# what it must.
.PHONY: license-key-always
license-key-always:
ifeq ($(VENDOR_PUBKEY),)
LICENSE_SIGNING_KEY = $(DEV_KEY_DIR)/vendor.secret
LICENSE_NEXT_SIGNING_KEY = $(DEV_KEY_DIR)/vendor-next.secret
RELEASE_KEY = $(DEV_KEY_DIR)/release.secret
# The license public keys as hex, for recipes (make dist keeps the release key apart).
LICENSE_PUBKEYS = $$(cat $(DEV_KEY_DIR)/vendor.pub $(DEV_KEY_DIR)/vendor-next.pub)
# Development builds also refuse one test id (the suites prove revocation with it).
LICENSE_REVOKED_ALL = $(LICENSE_REVOKED) license/revoked-dev.txt
# Under a lock, and only if still missing: two makes running at once (a nested
# make, a second checkout's build) must not both mint the key (keygen refuses to
# overwrite, which failed one of them).
$(DEV_KEY_DIR)/%.secret: | $(LICENSE_VENDOR_CLI)
	@mkdir -p $(dir $@)
	flock $(DEV_KEY_DIR)/.keygen.lock sh -c 'test -f $@ || $(LICENSE_VENDOR_CLI) keygen --out $(DEV_KEY_DIR)/$*'
$(DEV_KEY_DIR)/%.pub: $(DEV_KEY_DIR)/%.secret ;
$(LICENSE_HEADER): $(DEV_KEY_DIR)/vendor.pub $(DEV_KEY_DIR)/vendor-next.pub \
                   $(LICENSE_REVOKED_ALL) license/gen_key_header.sh license-key-always
	@sh license/gen_key_header.sh development $@ "$$(cat $(DEV_KEY_DIR)/vendor.pub)" \
	    "$$(cat $(DEV_KEY_DIR)/vendor-next.pub)" -- $(LICENSE_REVOKED_ALL)
else
LICENSE_SIGNING_KEY = $(VENDOR_SECRET_KEY)
LICENSE_NEXT_SIGNING_KEY = $(VENDOR_NEXT_SECRET_KEY)
LICENSE_PUBKEYS = $(VENDOR_PUBKEY) $(VENDOR_NEXT_PUBKEY)
$(LICENSE_HEADER): $(LICENSE_REVOKED) license/gen_key_header.sh license-key-always
	@sh license/gen_key_header.sh release $@ '$(VENDOR_PUBKEY)' '$(VENDOR_NEXT_PUBKEY)' -- \
	    $(LICENSE_REVOKED)
# A release ships without debug information or a symbol table.
CFLAGS += -g0
LDFLAGS += -s
endif

ALL_TARGETS += $(LICENSE_CLI) $(LICENSE_VENDOR_CLI)

ifneq ($(LICENSE_SIGNING_KEY),)
# The header changes exactly when a key does: a new key mints a new license.
$(DEV_LICENSE): $(LICENSE_SIGNING_KEY) $(LICENSE_HEADER) | $(LICENSE_VENDOR_CLI)
	@rm -f $@
	$(LICENSE_VENDOR_CLI) issue --key $< --licensee "Liquid Memory build and test license" \
	    --days 36500 --max-seq-len 0 --out $@
ALL_TARGETS += $(DEV_LICENSE)
# LM_LICENSE is dropped so that a token in the caller's environment cannot shadow the file.
TEST_ENV = env -u LM_LICENSE LM_LICENSE_FILE=$(abspath $(DEV_LICENSE))
test-c bench: $(DEV_LICENSE)
endif

# ---- what may leave this machine ----
# A development build trusts keys whose secrets sit in DEV_KEY_DIR: installing or
# shipping one by mistake would let anyone with this checkout mint licenses for it.
.PHONY: dev-build-guard
# A shell test, not a make conditional: a target may set DEV_BUILD_OK for itself
# (device-build does).
dev-build-guard:
	@if [ -z "$(VENDOR_PUBKEY)" ] && [ "$(DEV_BUILD_OK)" != 1 ]; then \
	    echo "refusing: this is a development build (no VENDOR_PUBKEY=...), whose license" \
	        "keys are test keys. Build a release with make VENDOR_PUBKEY=<hex> ..., or say" \
	        "DEV_BUILD_OK=1 to $(or $(MAKECMDGOALS),install) a development build on purpose." >&2; \
	    exit 1; fi
# install and dist name it first themselves; python (mk/python.mk) gets it here.
python: dev-build-guard

# ---- tests ----
LICENSE_TEST_BIN = $(BUILD)/bin/lm-license-tests
LICENSE_TEST_SRC = $(wildcard tests/license/*.c)
# Linked statically: the suites test the internal token code (hidden in the .so)
# beside the public API, and the signing code, which the library does not hold. A
# static archive brings no dependencies along, so the C++ runtime of the CUDA
# objects is named here.
$(LICENSE_TEST_BIN): $(LICENSE_TEST_SRC) $(wildcard tests/license/*.h) license/license.h \
                     license/vendor/vendor.h $(AR_LIB) $(call obj_of,$(LICENSE_VENDOR_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/license -Ilicense/cli -Ilicense/vendor -o $@ $(LICENSE_TEST_SRC) \
	    $(LDFLAGS) \
	    $(call obj_of,$(filter-out license/vendor/main.c,$(LICENSE_VENDOR_SRC))) \
	    $(call obj_of,$(LICENSE_TOOL_SRC)) $(AR_LIB) \
	    $(LDLIBS) $(CUDA_LIBS) $(if $(filter 1,$(CUDA)),-lstdc++) $$(pkg-config --libs check) -lpthread

# No license from the caller's environment reaches the suites: each test sets its own.
.PHONY: test-license test-license-asan test-license-build
test-license: $(LICENSE_TEST_BIN) $(LICENSE_CLI) $(LICENSE_VENDOR_CLI) $(LICENSE_SIGNING_KEY) \
              $(LICENSE_NEXT_SIGNING_KEY)
	env -u LM_LICENSE -u LM_LICENSE_FILE \
	    LM_TEST_SIGNING_KEY=$(if $(LICENSE_SIGNING_KEY),$(abspath $(LICENSE_SIGNING_KEY))) \
	    LM_TEST_NEXT_SIGNING_KEY=$(abspath $(LICENSE_NEXT_SIGNING_KEY)) \
	    LM_TEST_CLI=$(abspath $(LICENSE_CLI)) LM_TEST_VENDOR_CLI=$(abspath $(LICENSE_VENDOR_CLI)) \
	    $(LICENSE_TEST_BIN)
TEST_TARGETS += test-license test-license-build

test-license-build: $(SO) $(AR_LIB) $(LICENSE_CLI) $(LICENSE_VENDOR_CLI)
	env -u LM_LICENSE -u LM_LICENSE_FILE MAKE="$(MAKE)" BUILD=$(BUILD) CC=$(CC) \
	    sh tests/license/test_build.sh

# make test-asan runs the license suites under ASan + UBSan as well.
test-asan: test-license-asan
test-license-asan:
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 CUDA=0 OPT="-O1 -g" test-license

# ---- fuzzing (clang's libFuzzer) ----
# One target per parser (license/fuzz/README.md says what each covers and records
# the long runs).
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 4
FUZZERS ?= token lookup keyfile cli release blob
FUZZ_DIR = $(BUILD)/fuzz
FUZZ_CORPUS_BIN = $(FUZZ_DIR)/make-corpus
FUZZ_FLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -Wall -Wextra -Werror -Ilicense \
             -Ilicense/cli -Ilicense/vendor -Ilicense/fuzz -Iinclude -Isrc \
             -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
# -close_fd_mask=3: the tools' own messages go nowhere; libFuzzer and the sanitizers
# keep theirs.
FUZZ_RUN = -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -close_fd_mask=3
# Everything but the gate, the keyring (the fuzzers bring their own keys), the
# commands that use it and the mains; compiled once for all the targets.
FUZZ_SRC = $(LICENSE_VERIFY_SRC) $(LICENSE_TOOL_SRC) \
           $(filter-out license/vendor/main.c,$(LICENSE_VENDOR_SRC))
FUZZ_OBJ = $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(FUZZ_SRC))
FUZZ_HDR = $(wildcard license/*.h license/cli/*.h license/vendor/*.h license/fuzz/*.h)

$(FUZZ_DIR)/obj/%.o: %.c $(FUZZ_HDR)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -c $< -o $@

$(FUZZ_DIR)/fuzz-%: license/fuzz/fuzz_%.c $(FUZZ_OBJ) $(FUZZ_HDR)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJ) -lsodium

# The state blob parsers are the library's own (src/), with the license gate
# left out: fuzz_blob.c stands in for it.
FUZZ_BLOB_OBJ = $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,src/state_blob.c src/slot_blob.c \
                  src/blob_auth.c src/error.c)
$(FUZZ_BLOB_OBJ): $(wildcard src/*.h) include/liquid_memory.h
$(FUZZ_DIR)/fuzz-blob: license/fuzz/fuzz_blob.c $(FUZZ_BLOB_OBJ) $(FUZZ_HDR) $(wildcard src/*.h)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_BLOB_OBJ) -lsodium

$(FUZZ_CORPUS_BIN): license/fuzz/make_corpus.c $(FUZZ_SRC) $(FUZZ_HDR)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_POSIX_C_SOURCE=200809L -g -Wall -Wextra -Werror -Ilicense -Ilicense/cli \
	    -Ilicense/vendor -Ilicense/fuzz -o $@ $< $(FUZZ_SRC) -lsodium

.PHONY: fuzz fuzz-smoke fuzz-corpus
# Paths are absolute: fuzz-cli works in a folder of its own.
FUZZ_ABS = $(abspath $(FUZZ_DIR))
CORPUS_ABS = $(abspath license/fuzz/corpus)
fuzz: $(foreach f,$(FUZZERS),$(FUZZ_DIR)/fuzz-$(f))
	@set -e; for f in $(FUZZERS); do mkdir -p $(FUZZ_DIR)/corpus-$$f; \
	    echo "== fuzz-$$f for $(FUZZ_SECONDS) s"; \
	    $(FUZZ_DIR)/fuzz-$$f $(FUZZ_RUN) -max_total_time=$(FUZZ_SECONDS) \
	        $(FUZZ_ABS)/corpus-$$f $(CORPUS_ABS)/$$f; done

fuzz-smoke: $(foreach f,$(FUZZERS),$(FUZZ_DIR)/fuzz-$(f))
	@set -e; for f in $(FUZZERS); do echo "== fuzz-$$f: corpus, then $(FUZZ_SMOKE_SECONDS) s"; \
	    $(FUZZ_DIR)/fuzz-$$f $(FUZZ_RUN) $(CORPUS_ABS)/$$f/*; \
	    rm -rf $(FUZZ_DIR)/smoke-$$f && mkdir -p $(FUZZ_DIR)/smoke-$$f; \
	    $(FUZZ_DIR)/fuzz-$$f $(FUZZ_RUN) -max_total_time=$(FUZZ_SMOKE_SECONDS) \
	        $(FUZZ_ABS)/smoke-$$f $(CORPUS_ABS)/$$f; done

fuzz-corpus: $(FUZZ_CORPUS_BIN)
	rm -rf license/fuzz/corpus
	$(FUZZ_CORPUS_BIN) license/fuzz/corpus

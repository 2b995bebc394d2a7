# mk/dist.mk - the signed release archive (included by the Makefile after its fragments).
#   make dist VENDOR_PUBKEY=<hex> RELEASE_KEY=<release.secret>
#       stages $(BUILD)/dist/liquid-memory-<version>/ from DIST_FILES, writes its
#       MANIFEST (SHA-256 of every file) signed with the release key (MANIFEST.sig),
#       checks it back with lm-license verify-release, and packs
#       $(BUILD)/dist/liquid-memory-<version>-linux-<arch>.tar.gz.
#   A development build needs DEV_BUILD_OK=1 and is signed with the development release
#   key $(DEV_KEY_DIR)/release.secret (for tests).
# The release key is the vendor's second key pair, separate from the license key:
# lm-license-vendor keygen --out release. Customers check an unpacked release with
#   lm-license verify-release --pubkey release.pub DIR
# (README_INTEGRATION.md, "Verifying a release").

DIST_NAME = liquid-memory-$(VERSION)
DIST_DIR = $(BUILD)/dist
DIST_STAGE = $(DIST_DIR)/$(DIST_NAME)
DIST_TAR = $(DIST_DIR)/$(DIST_NAME)-linux-$(shell uname -m).tar.gz
# What a release holds, as DEST:SOURCE pairs (DEST inside the release folder); a file is
# executable in the release when its source is. Other fragments append theirs, e.g.
#   DIST_FILES += lib/cmake/LiquidMemory/LiquidMemoryConfig.cmake:mk/LiquidMemoryConfig.cmake
# The pkg-config file and RELEASE are written by the recipe.
DIST_FILES += include/liquid_memory.h:include/liquid_memory.h \
              lib/libliquidmemory.so:$(SO) \
              lib/libliquidmemory.a:$(AR_LIB) \
              bin/lm-license:$(LICENSE_CLI) \
              doc/README.md:README.md \
              doc/README_INTEGRATION.md:README_INTEGRATION.md \
              doc/LICENSE:LICENSE \
              python/pyproject.toml:bindings/python/pyproject.toml \
              python/README.md:bindings/python/README.md \
              python/liquid_memory/libliquidmemory.so:$(SO) \
              $(foreach f,$(sort $(wildcard bindings/python/liquid_memory/*.py)),\
                  python/liquid_memory/$(notdir $(f)):$(f))
DIST_SOURCES = $(foreach p,$(DIST_FILES),$(word 2,$(subst :, ,$(p))))
DIST_COMMIT = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# The archive's timestamps: the commit's, so that the same tree packs the same bytes.
DIST_TIME = $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

.PHONY: dist
dist: dev-build-guard $(DIST_SOURCES) $(LICENSE_VENDOR_CLI) $(RELEASE_KEY) $(LICENSE_HEADER)
	@test -n "$(RELEASE_KEY)" || { echo "dist: give RELEASE_KEY=<release.secret>, the" \
	    "vendor's release signing key (lm-license-vendor keygen --out release)" >&2; exit 2; }
	rm -rf $(DIST_STAGE) $(DIST_TAR) && mkdir -p $(DIST_STAGE)/lib/pkgconfig
	@set -e; for pair in $(DIST_FILES); do \
	    dest=$${pair%%:*} src=$${pair#*:} mode=644; test -x "$$src" && mode=755; \
	    install -D -m $$mode "$$src" "$(DIST_STAGE)/$$dest"; done
	$(call make_pc,$${pcfiledir}/../..,$(DIST_STAGE)/lib/pkgconfig/liquid_memory.pc)
	printf 'liquid-memory %s\ncommit %s\nbuild %s\n' '$(VERSION)' '$(DIST_COMMIT)' \
	    '$(if $(VENDOR_PUBKEY),release,development)' > $(DIST_STAGE)/RELEASE
	$(LICENSE_VENDOR_CLI) pubkey --key $(RELEASE_KEY) > $(DIST_DIR)/release.pub
	@for k in $(LICENSE_PUBKEYS); do test "$$k" != "$$(cat $(DIST_DIR)/release.pub)" || \
	    { echo "dist: the release key is a license key; use a key pair of its own" >&2; exit 2; }; done
	$(LICENSE_VENDOR_CLI) sign-release --key $(RELEASE_KEY) $(DIST_STAGE)
	$(LICENSE_CLI) verify-release --pubkey $(DIST_DIR)/release.pub $(DIST_STAGE)
	tar -C $(DIST_DIR) --sort=name --owner=0 --group=0 --numeric-owner --mtime=@$(DIST_TIME) \
	    -cf - $(DIST_NAME) | gzip -n > $(DIST_TAR)
	@echo "dist: $(DIST_TAR) (release key: $(DIST_DIR)/release.pub)"

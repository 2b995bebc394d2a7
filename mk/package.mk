# package.mk - what `make install` adds for CMake users, and the check of an
# installed tree (included by the Makefile; part of make test).
#   $(PREFIX)/lib/cmake/LiquidMemory/LiquidMemoryConfig{,Version}.cmake
#   make test-package   installs into $(BUILD)/stage, then tests/package/check.sh:
#                       the soname and its links; no CUDA library NEEDED by the core
#                       and no RUNPATH into the build or the CUDA toolkit in what is
#                       installed; a C++ program built through find_package with
#                       Debian's cmake, shared and static; examples/quickstart.c
#                       linked against the static library with pkg-config --static;
#                       and the message when the CUDA backend is absent.

CMAKE_PKG_DIR = lib/cmake/LiquidMemory
empty :=
space := $(empty) $(empty)
make_cmake = sed -e 's|@VERSION@|$(VERSION)|g' \
                 -e 's|@SO_NAME@|$(SO_NAME)|' -e 's|@LIBS_PRIVATE@|$(subst $(space),;,$(strip $(LIBS_PRIVATE)))|' \
                 -e 's|@VERSION_MAJOR@|$(word 1,$(subst ., ,$(VERSION)))|g' \
                 -e 's|@VERSION_MINOR@|$(word 2,$(subst ., ,$(VERSION)))|g' $(1) > $(2)

# The package files (relocatable: they find the prefix from where they are).
CMAKE_FILES = $(BUILD)/cmake/LiquidMemoryConfig.cmake $(BUILD)/cmake/LiquidMemoryConfigVersion.cmake
$(BUILD)/cmake/%.cmake: mk/%.cmake.in include/liquid_memory.h Makefile mk/package.mk
	@mkdir -p $(dir $@)
	$(call make_cmake,$<,$@)

.PHONY: install-cmake test-package
install: install-cmake
install-cmake: $(CMAKE_FILES)
	install -d $(DESTDIR)$(PREFIX)/$(CMAKE_PKG_DIR)
	install -m 644 $(CMAKE_FILES) $(DESTDIR)$(PREFIX)/$(CMAKE_PKG_DIR)/

# The release archive (mk/dist.mk) holds them too, and the library under its
# soname (the name programs linked against it look for).
DIST_FILES += $(foreach f,$(CMAKE_FILES),$(CMAKE_PKG_DIR)/$(notdir $(f)):$(f)) lib/$(SO_NAME):$(SO_FILE)

TEST_TARGETS += test-package
test-package: $(SO) $(AR_LIB)
	@rm -rf $(STAGE)
	@$(MAKE) --no-print-directory install PREFIX=$(STAGE) DEV_BUILD_OK=1 >/dev/null
	$(TEST_ENV) CC="$(CC)" sh tests/package/check.sh "$(STAGE)" "$(VERSION)" "$(ABI)" "$(abspath $(BUILD))" \
	    "$(CUDA)"

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
make_cmake = sed -e 's|@VERSION@|$(VERSION)|g' -e 's|@SO_FILE@|$(notdir $(SO_FILE))|' \
                 -e 's|@SO_NAME@|$(SO_NAME)|' -e 's|@LIBS_PRIVATE@|$(subst $(space),;,$(strip $(LIBS_PRIVATE)))|' \
                 -e 's|@VERSION_MAJOR@|$(word 1,$(subst ., ,$(VERSION)))|g' \
                 -e 's|@VERSION_MINOR@|$(word 2,$(subst ., ,$(VERSION)))|g' $(1) > $(2)

.PHONY: install-cmake test-package
install: install-cmake
install-cmake:
	install -d $(DESTDIR)$(PREFIX)/$(CMAKE_PKG_DIR)
	$(call make_cmake,mk/LiquidMemoryConfig.cmake.in,$(DESTDIR)$(PREFIX)/$(CMAKE_PKG_DIR)/LiquidMemoryConfig.cmake)
	$(call make_cmake,mk/LiquidMemoryConfigVersion.cmake.in,$(DESTDIR)$(PREFIX)/$(CMAKE_PKG_DIR)/LiquidMemoryConfigVersion.cmake)

TEST_TARGETS += test-package
test-package: $(SO) $(AR_LIB)
	@rm -rf $(STAGE)
	@$(MAKE) --no-print-directory install PREFIX=$(STAGE) >/dev/null
	$(TEST_ENV) CC="$(CC)" sh tests/package/check.sh "$(STAGE)" "$(VERSION)" "$(ABI)" "$(abspath $(BUILD))" \
	    "$(CUDA)"

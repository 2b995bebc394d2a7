# python.mk - the Python package (bindings/python/liquid_memory) and its tests.
#   make python        copies the built library (and any library of its own it loads
#                      beside it, libliquidmemory*.so*) into the package folder, so that
#                      the documented install bundles it (README_INTEGRATION.md, "Python";
#                      a development build needs DEV_BUILD_OK=1, mk/license.mk):
#                        python3 -m venv --system-site-packages ~/.venvs/lm
#                        ~/.venvs/lm/bin/python -m pip install --no-build-isolation --no-deps \
#                            ./bindings/python
#   make test-python   pytest tests/python against $(BUILD)/lib/libliquidmemory.so
# Included by the Makefile after ALL_TARGETS / TEST_TARGETS are defined.

PY_PKG = bindings/python/liquid_memory
PYTEST_ARGS ?= -q -rs

.PHONY: python test-python

python: $(SO)
	cp $(dir $(SO))libliquidmemory*.so* $(PY_PKG)/

TEST_TARGETS += test-python

# $(DEV_LICENSE) (from mk/license.mk, when present): TEST_ENV points LM_LICENSE_FILE at it.
test-python: $(SO) $(DEV_LICENSE)
	$(TEST_ENV) LM_LIB_PATH=$(abspath $(SO)) PYTHONPATH=$(abspath bindings/python) \
	    $(PYTHON) -m pytest $(PYTEST_ARGS) tests/python

# fewshotcx developer targets. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Machines with a pip constraints cap (this project's CI image) take torch from local disk at these
# versions; elsewhere pip resolves torch normally from pyproject.toml.
TORCH_PINS ?= $(shell test -f /etc/xdg/pip/constraints.txt && echo "torch==2.14.1 torchvision==0.29.1")

# sam2 (the [sam2] extra, also in [dev]) builds from source; its optional CUDA extension needs a CUDA
# toolkit (nvcc) and a CUDA build of torch: without both, build it without (SAM2_BUILD_CUDA=0).
SAM2_CUDA = $$($(PY) -c "import shutil, torch; print(int(bool(torch.version.cuda) and bool(shutil.which('nvcc'))))" 2>/dev/null || echo 0)

.PHONY: install system-deps demo test test-data bench docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_PINS),$(PY) -m pip install -q $(TORCH_PINS))
	SAM2_BUILD_CUDA=$(SAM2_CUDA) $(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# dciodvfy (Debian dicom3tools) checks the RTSTRUCT/SEG files in the tests; Orthanc (a real PACS), dcmtk and
# plastimatch serve the DICOM node and RTSTRUCT fidelity tests. Those tests skip, saying so, without them.
SYSTEM_PACKAGES = dicom3tools orthanc dcmtk plastimatch
system-deps:
	@if ! { command -v dciodvfy && command -v Orthanc && command -v storescu && command -v plastimatch; } >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
		else echo "install $(SYSTEM_PACKAGES) (apt-get install ...) for the DICOM tests"; fi; fi

# The demo's second brain comes from Debian's mricron-data; `apt-get download` needs package lists.
demo: install
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then \
		apt-get update -qq; fi
	$(PY) -m fewshotcx.cli demo --out demo-output --overwrite

# Real data some tests use (Colin27 + AAL from Debian's mricron-data), fetched once here so that the
# tests themselves never touch the network; offline, those tests skip and say so.
test-data: install
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then \
		apt-get update -qq || true; fi
	@$(PY) -c "import fewshotcx.datasets as ds; ds.fetch('mricron')" 2>/dev/null \
		|| echo "make test-data: could not fetch Colin27 (offline?); the tests that need it will skip"

test: install system-deps test-data
	$(PY) -m pytest -q

bench: install
	$(PY) -m pytest -q -m slow
	$(PY) benchmarks/throughput.py --quick
	$(PY) benchmarks/support_size.py --quick --out bench-output/support_size

docs: install
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) demo-output bench-output site

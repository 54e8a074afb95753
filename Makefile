# make test: the whole suite (real-gluster tests run where the machine allows)
# make demo: one whole backup against the bundled fake engine and fake gluster
# make bench: the scale benchmark (not part of make test)
PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python

.PHONY: test demo bench venv clean qemu-img

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# the tests mostly wait on the fake engine's delays: four workers; the
# real-gluster tests (marked xdist_group gluster) stay together on one
WORKERS ?= 4

# the fake engine makes its overlays, and --verify checks them, with the real
# qemu-img (Debian's qemu-utils; qemu-img on EL): installed when missing
qemu-img:
	@command -v qemu-img >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils; }

test: venv qemu-img
	$(PY) -m pytest -n $(WORKERS) --dist loadgroup $(PYTEST_ARGS)

demo: venv
	$(PY) tests/demo.py

bench: venv
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

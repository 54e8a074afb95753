# make test: the whole suite (real-gluster tests run where the machine allows)
# make test-py36: the tool on Python 3.6 (EL8's) with SDK 4.4, under the suite
# make demo: one whole backup against the bundled fake engine and fake gluster
# make bench: the scale benchmark (not part of make test)
# make man: build/vmbackup.8, from the same parser as --help
# make rpm: the noarch RPM, in build/rpm/RPMS/noarch/
# make coverage: how much of vmbackup.py tests/unit alone runs (statements)
PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python
# EL8's platform Python; this machine has it from pyenv
PYTHON36 ?= /root/.pyenv/versions/3.6.15/bin/python3.6
VENV36 ?= .venv36
BUILD ?= build

.PHONY: test test-py36 demo bench man rpm venv clean qemu-img bindfs coverage

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

$(VENV36)/.installed: dist/venv36
	dist/venv36 $(PYTHON36) $(VENV36)
	touch $@

# the tests mostly wait on the fake engine's delays: four workers; the
# real-gluster tests (marked xdist_group gluster) stay together on one
WORKERS ?= 4

# the fake engine makes its overlays, and --verify checks them, with the real
# qemu-img (Debian's qemu-utils; qemu-img on EL): installed when missing
qemu-img:
	@command -v qemu-img >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils; }

# the tests of shared storage that stops answering stop a FUSE mount of
# Debian's bindfs: installed when missing
bindfs:
	@command -v bindfs >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		-o DPkg::Lock::Timeout=600 --no-install-recommends bindfs; }

test: venv qemu-img bindfs
	$(PY) -m pytest -n $(WORKERS) --dist loadgroup $(PYTEST_ARGS)

# the tests and the fake engine run on the newest Python; every run of the
# tool is on 3.6 (VMBACKUP_PYTHON). Not the real-gluster tests, the bench or
# the packaging, which make test covers.
test-py36: venv bindfs $(VENV36)/.installed
	$(VENV36)/bin/python -m py_compile vmbackup.py
	VMBACKUP_PYTHON=$(abspath $(VENV36))/bin/python $(PY) -m pytest \
	    -n $(WORKERS) -m 'not gluster' --ignore=tests/gluster \
	    --ignore=tests/test_bench_smoke.py --ignore=tests/test_packaging.py \
	    $(PYTEST_ARGS)

demo: venv qemu-img
	$(PY) tests/support/demo.py

# the unit tests alone (their OVF stores are the fake engine's, made with
# qemu-img), in this process: the figure is the TOTAL line
coverage: venv qemu-img
	$(PY) -m pytest -q -p no:cacheprovider tests/unit --cov=vmbackup \
	    --cov-report=term $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

# the man page imports vmbackup.py, so it needs ovirtsdk4: the venv's, or
# e.g. MAN_PYTHON=python3 on EL with python3-ovirt-engine-sdk4 installed
MAN_PYTHON ?= $(PY)

man: $(if $(filter $(PY),$(MAN_PYTHON)),venv)
	mkdir -p $(BUILD)
	$(MAN_PYTHON) dist/manpage.py vmbackup.py > $(BUILD)/vmbackup.8.tmp
	mv $(BUILD)/vmbackup.8.tmp $(BUILD)/vmbackup.8

rpm: man
	dist/build-rpm $(BUILD)/vmbackup.8 $(BUILD)/rpm

clean:
	rm -rf $(VENV) $(VENV36) $(BUILD) *.egg-info .pytest_cache

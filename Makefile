# The two commands a user needs: `make demo` and `make test`. Each builds .venv from scratch
# when it is missing or setup.cfg changed, so both work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip install -q --disable-pip-version-check
# torch is pinned: a bare `torch` pulls several GB of CUDA wheels; 2.13.0 resolves to the CPU build here.
TORCH   ?= torch==2.13.0
# torch's CPU wheel does not pull numpy, and without it every process of the demo warns
# "Failed to initialize NumPy" (once per process: the launcher and each rank): the demo
# venv gets the suite's numpy.
NUMPY   ?= numpy==2.4.6
CONSTRAINTS = tests/constraints.txt
# The suite's torch extensions (DeepSpeed's CPU op) live in the venv, never in the user's
# ~/.cache/torch_extensions: that one is shared by every venv and job of the user, venvs at
# other paths keep invalidating it, and a fresh-clone `make test` failed twice there while
# other DeepSpeed builds ran. tests/conftest.py points the pytest session at the same folder.
EXTENSIONS = $(abspath $(VENV))/torch_extensions

# tests/thirdparty runs real LLaMA-Factory 0.9.5, which resolves an older transformers (5.6.0)
# than the suite: it gets a venv of its own, rebuilt when its pins change. A venv that cannot
# be built (no registry) leaves $(LF_VENV)/BUILD-FAILED and those tests skip, naming it.
LF_VENV        ?= .venv-lf
LF_CONSTRAINTS ?= tests/thirdparty/constraints-lf.txt

.PHONY: demo test bench clean

$(VENV)/.base: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH) $(NUMPY)
	$(PIP) -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.test: $(VENV)/.base $(CONSTRAINTS)
	$(PIP) -c $(CONSTRAINTS) -e '.[test]'
	# DeepSpeed builds no ops at install time; on CPU it JIT-compiles one small op on first use.
	DS_BUILD_OPS=0 $(PIP) -c $(CONSTRAINTS) --no-build-isolation deepspeed
	touch $@

# Build that op (shm_comm, ~1 min, ~3 GiB) now, once, into the venv: compiled inside a test's
# job it would cross the job's memory limits, and a job stopped mid-compile leaves torch's
# build lock (guardrun clears the ones its own attempts leave: supervisor/run/extlocks.py).
$(EXTENSIONS)/.built: $(VENV)/.test
	TORCH_EXTENSIONS_DIR=$(EXTENSIONS) $(PY) -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null
	touch $@

$(LF_VENV)/.built: $(LF_CONSTRAINTS) tests/thirdparty/build_lf_venv.sh setup.cfg pyproject.toml
	tests/thirdparty/build_lf_venv.sh $(PYTHON) $(LF_VENV) $(LF_CONSTRAINTS)

# The demo starts over each time: its checkpoints go to build/demo-cpu.
demo: $(VENV)/.base
	rm -rf build/demo-cpu
	$(VENV)/bin/guardrun run --fresh recipes/demo_cpu.yaml

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
test: $(VENV)/.test $(EXTENSIONS)/.built $(LF_VENV)/.built
	@TORCH_EXTENSIONS_DIR=$(EXTENSIONS) $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no test (exit 5): failing" >&2; fi; \
	exit $$rc

# bench/sampling.py, checkpoints.py, overhead.py, scenarios.py and faults.py (about 20 minutes on 2 cores);
# writes bench/RESULTS.md with the machine, the versions and the tables. Fails if a run left a process.
bench: $(VENV)/.test $(EXTENSIONS)/.built $(LF_VENV)/.built
	TORCH_EXTENSIONS_DIR=$(EXTENSIONS) $(PY) bench/results.py

clean:
	rm -rf $(VENV) $(LF_VENV) build .pytest_cache

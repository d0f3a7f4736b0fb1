# Two commands matter: `make run` and `make test` (see README.md). Both create the virtual
# environment when it is missing and reinstall when pyproject.toml changes.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip warns about every registry mirror folder that lacks a package; keep the log readable
# (in braces, so that the pipeline's status stays the command's under pipefail)
PIP_FILTER := { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
PYTEST := $(PY) -m pytest -n 2 --dist loadscope
NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg
# other CPU kernel paths than this machine's: the checked outputs must not move (smoke = float64)
KERNEL_SETTINGS := ATEN_CPU_CAPABILITY=default ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=SSE41 OMP_NUM_THREADS=2

.PHONY: install run test test-fast test-kernels notebooks lab bench-data bench bench-cell gpu-check gpu-wheels clean-cache

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing remd_core and its dependencies into $(VENV) ..."
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | $(PIP_FILTER)
	@$(PY) -c "import remd_core, torch; print('remd_core', remd_core.__version__, '| torch', torch.__version__)"
	@touch $(STAMP)

install: $(STAMP)

# the notebook pipeline 00-06 at the cpu profile on the embedded synthetic data (docs/performance.md: its time)
run: install
	$(PY) -m remd_core run --profile cpu

# unit tests, then every notebook under nbval at the smoke profile (notebooks/conftest.py): cells
# marked NBVAL_CHECK_OUTPUT must reproduce their committed outputs, all others must run. Then the
# notebooks 00-03 and the sweep cell again with torch's vector kernels off and 2 threads a kernel,
# so CI keeps guarding that the checked outputs hold on other processors (04 repeats their cells
# through a sweep; `make test-kernels` runs every notebook under every setting)
test: install
	$(PYTEST) --durations=10 $(NBVAL) tests notebooks
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=2 $(PYTEST) -q $(NBVAL) notebooks/0[0-3]_*.ipynb notebooks/cells

# while working: the unit tests (tests/unit) that train nothing large (no slow marker): under 3 min here
test-fast: install
	$(PYTEST) -q -m "not slow" tests/unit

test-kernels: install
	@for setting in $(KERNEL_SETTINGS); do echo "== notebook checks with $$setting"; \
		env $$setting $(PYTEST) -q $(NBVAL) notebooks | tail -1; done

# re-execute the committed notebooks at the smoke profile after changing them or the library
notebooks: install
	$(PY) -m remd_core.workbench.refresh

lab: install
	$(PY) -m jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

bench-data: install
	$(PY) benchmarks/generate_default.py

bench: install
	$(PY) benchmarks/bench_steps.py

# where a testbed cell's seconds go, in-process and through the sweep, at each scale (docs/performance.md)
bench-cell: install
	$(PY) benchmarks/bench_cell.py --scales smoke,reduced,cpu8,testbed

# the first minutes on a GPU machine (docs/install.md, GPU section): the CUDA tests, the step benchmark and both
# stages of re-m3dr at the paper's scale, one report in $OUT or outputs/gpu-check, within 5.5 minutes; refuses
# (status 2) where there is no CUDA GPU. No venv there: the GPU machine's python3 holds CUDA torch, and the
# packages it lacks travel as wheels (gpu-wheels, run here) in outputs/gpu-wheels
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

gpu-wheels: install
	rm -rf outputs/gpu-wheels
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d outputs/gpu-wheels -r benchmarks/gpucheck/wheels.txt 2>&1 | $(PIP_FILTER)
	@du -sh outputs/gpu-wheels

clean-cache:
	rm -rf outputs/cache

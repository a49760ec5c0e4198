# The two commands a user needs: `make demo` (the main job) and `make test` (the whole suite).
# Both install what they need first (tools/bootstrap.sh: apt packages and a pinned .venv), idempotently.

VENV := .venv
PY := $(abspath $(VENV))/bin/python
# numpy's multithreaded BLAS stalls on 2-core machines when the other core is busy.
export OPENBLAS_NUM_THREADS := 1

.PHONY: all bootstrap firmware generate demo test lint bench bench-vm clean

all: firmware

bootstrap:
	@bash tools/bootstrap.sh

firmware: bootstrap
	@$(MAKE) -s -C firmware PYTHON=$(PY)

generate:
	python3 contracts/generate.py

demo: firmware
	$(PY) examples/digits.py

lint: bootstrap
	$(PY) contracts/generate.py --check
	$(PY) -m ruff check .
	bash tools/checkpatch.sh

test: firmware lint
	$(PY) -m pytest -q

bench: firmware
	$(PY) bench/throughput.py --all

bench-vm: firmware
	$(PY) -m pyflaxnpu.cli vm --npus 1 -- $(PY) bench/driver.py

clean:
	$(MAKE) -s -C firmware clean
	rm -rf .pytest_cache .ruff_cache .hypothesis

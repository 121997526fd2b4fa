# `make test`: create the environment if missing, then run the test suite.
# `make test-accelerate-0.31`: the training tests again under accelerate==0.31.0 (the official guide's version),
#   installed beside the environment in .venv/accelerate-0.31 (FSDP2 needs accelerate>=1.6: those tests skip there).
# `make demo`: create the environment if missing, then run the CPU quickstart (the whole pipeline).
PY := .venv/bin/python

.PHONY: env test test-accelerate-0.31 demo
env:
	bash scripts/setup_env.sh

test: env
	$(PY) -m pytest -q tests

ACC031 := .venv/accelerate-0.31
test-accelerate-0.31: env
	$(PY) -m pip install -q --upgrade --no-deps --target $(ACC031) accelerate==0.31.0
	PYTHONPATH=$(CURDIR)/$(ACC031) $(PY) -m pytest -q tests/test_train.py tests/test_train_step.py tests/test_train_fsdp.py

demo: env
	$(PY) tools/quickstart.py

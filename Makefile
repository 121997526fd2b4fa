# `make test`: create the environment if missing, then run the test suite.
# `make demo`: create the environment if missing, then run the CPU quickstart (the whole pipeline).
PY := .venv/bin/python

.PHONY: env test demo
env:
	bash scripts/setup_env.sh

test: env
	$(PY) -m pytest -q tests

demo: env
	$(PY) tools/quickstart.py

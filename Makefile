# The two commands of the README. Both install everything first (idempotent, quick when already installed).
PYTHON ?= python3
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: setup demo test lint

setup:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get install -y -qq ffmpeg >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq ffmpeg)); \
	  else echo "ffmpeg is missing: install it with your package manager (e.g. sudo apt-get install ffmpeg)"; exit 1; fi; }
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test]'

demo: setup
	$(PYTHON) run_pipeline.py --cameras configs/demo.yaml

test: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

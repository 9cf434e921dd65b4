# The two commands of the README. Both install everything first (idempotent, quick when already installed).
PYTHON ?= python3
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: setup demo test lint

# System tools: ffmpeg (ffprobe, test streams), redis-server (the reliability tests restart a private one), and
# chromium with chromium-driver (the web pages' browser tests). Installed with apt-get when missing and running as
# root; otherwise say what to install.
APT_TOOLS = ffmpeg:ffmpeg redis-server:redis-server chromium:chromium chromedriver:chromium-driver

setup:
	@for pair in $(APT_TOOLS); do tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq $$pkg >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $$pkg >/dev/null)) \
	      || { echo "could not install $$pkg with apt-get"; exit 1; }; \
	  else echo "$$tool is missing: install it with your package manager (e.g. sudo apt-get install $$pkg)"; \
	    [ $$tool = ffmpeg ] && exit 1; fi; done
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test]'

demo: setup
	$(PYTHON) run_pipeline.py --cameras configs/demo.yaml

test: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

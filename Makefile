# Two commands on a fresh machine: `make demo` and `make test`.
# Each builds .venv from requirements.txt when it is missing or stale.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False
export EVALKIT_PROGRESS ?= 1

.PHONY: venv chromium demo test test-slow lint bench clean

venv: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt > $(VENV)/pip.log 2>&1 \
		|| { grep -v "is ignored: it is neither" $(VENV)/pip.log; exit 1; }
	$(BIN)/python -m pip check >/dev/null || { $(BIN)/python -m pip check; exit 1; }
	@touch $(STAMP)

# The main job: every committed zoo generator on held-out shapes prompts (resumes if interrupted),
# then the leaderboard (oracle accuracy beside FID) and the HTML report.
demo: $(STAMP)
	$(BIN)/python -m evalkit run recipes/shapes-leaderboard.yaml
	$(BIN)/python -m evalkit leaderboard --recipe shapes-leaderboard
	$(BIN)/python -m evalkit report --recipe shapes-leaderboard

# Browser tests drive Debian's Chromium (never a downloaded browser); install it when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
		|| echo "warning: could not install chromium; browser tests will be skipped"

test: $(STAMP) chromium
	EVALKIT_PROGRESS=0 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --timeout 900

test-slow: $(STAMP) chromium
	EVALKIT_PROGRESS=0 $(BIN)/python -m pytest -q -m slow --timeout 7200

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf runs .pytest_cache

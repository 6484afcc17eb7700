# The two README commands: `make quickstart` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/quickstart

.PHONY: quickstart test test-slow lint bench clean venv demo

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (or run: make PY=python3 ...)"; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

quickstart: $(STAMP)
	rm -rf $(OUT)
	$(BIN)/enhance --preset tiny --output-dir $(OUT)/enhance
	$(BIN)/llava-train --preset tiny --vision-tower genhancer-tiny:clip --output-dir $(OUT)/llava-original
	$(BIN)/llava-train --preset tiny --vision-tower $(OUT)/enhance/export/vision_tower --output-dir $(OUT)/llava-enhanced
	$(BIN)/leaderboard --preset tiny --clip original=genhancer-tiny:clip enhanced=$(OUT)/enhance/export/hf \
	    --mllm original=$(OUT)/llava-original/final enhanced=$(OUT)/llava-enhanced/final --output-dir $(OUT)/board
	@echo "Next: genhancer-demo --preset tiny   (serves http://127.0.0.1:7860)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)  # CPU part (tiny preset); GPU commands: BENCHMARKS.md
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/train_step.py --preset tiny --stage 1 --steps 5
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/train_step.py --preset tiny --stage 2 --steps 5 --profile
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/eval_speed.py
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/latent_cache.py --preset tiny --steps 120
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/mllm_speed.py

demo: $(STAMP)
	$(BIN)/genhancer-demo --preset tiny

clean:
	rm -rf $(VENV) runs

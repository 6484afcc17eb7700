# The two README commands: `make quickstart` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/quickstart
# The exact environment the commands and tests run in (Python 3.11, Linux x86_64): `make lock`
# writes it from pyproject.toml's ranges; `make test-latest` tries the newest versions instead.
LOCK := requirements/lock-py311-linux-x86_64.txt
# DeepSpeed for the slow tests (ZeRO-2/3 on CPU): a second hashed lock resolved against the first,
# installed on top of it with the CPU-only build (DS_BUILD_OPS=0). Its sdist imports torch while it
# builds, hence --no-build-isolation (torch and setuptools come from the main lock).
DS_LOCK := requirements/lock-deepspeed-py311-linux-x86_64.txt
DS_STAMP := $(VENV)/.deepspeed
LATEST := .venv-latest
LOCKTOOLS := .venv-lock

.PHONY: quickstart test test-slow test-latest lock lock-deepspeed deepspeed lint bench clean venv demo reproduce-small reproduce-first reproduce-trends gpu-wheels gpu-check

$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (or run: make PY=python3 ...)"; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install --require-hashes -r $(LOCK)
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

$(DS_STAMP): $(STAMP) $(DS_LOCK)
	DS_BUILD_OPS=0 $(BIN)/pip install --require-hashes --no-build-isolation -r $(DS_LOCK)
	DS_ACCELERATOR=cpu $(BIN)/python -c "import deepspeed, sys; print('deepspeed', deepspeed.__version__, file=sys.stderr)"
	touch $(DS_STAMP)

deepspeed: $(DS_STAMP)

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

# The slow tests include DeepSpeed ZeRO-2/3 on two CPU processes; they fail, not skip, without it.
test-slow: $(DS_STAMP)
	GENHANCER_REQUIRE_DEEPSPEED=1 $(BIN)/python -m pytest -q -m slow

# Rewrite the lock from pyproject.toml's ranges (newest allowed versions, hashes for every file).
lock:
	test -x $(LOCKTOOLS)/bin/uv || { $(PY) -m venv $(LOCKTOOLS) && $(LOCKTOOLS)/bin/pip install -q 'uv>=0.5'; }
	$(LOCKTOOLS)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 --generate-hashes -c requirements/lock-constraints.txt \
	    --custom-compile-command "make lock" -o $(LOCK)
	$(MAKE) lock-deepspeed

# The DeepSpeed group alone (requirements/deepspeed.in), its shared pins taken from the main lock.
lock-deepspeed:
	test -x $(LOCKTOOLS)/bin/uv || { $(PY) -m venv $(LOCKTOOLS) && $(LOCKTOOLS)/bin/pip install -q 'uv>=0.5'; }
	$(LOCKTOOLS)/bin/uv pip compile requirements/deepspeed.in --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 --generate-hashes -c $(LOCK) \
	    --custom-compile-command "make lock-deepspeed" -o $(DS_LOCK)

# Drift check: a separate venv from the newest versions the ranges allow, then the fast suite.
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install --upgrade pip
	$(LATEST)/bin/pip install --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST)/bin/genhancer-env --lock $(LOCK)
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)  # CPU part (tiny preset); GPU commands: BENCHMARKS.md
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/train_step.py --preset tiny --stage 1 --steps 5
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/train_step.py --preset tiny --stage 2 --steps 5 --profile
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/eval_speed.py
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/latent_cache.py --preset tiny --steps 120
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/mllm_speed.py

# The small-scale study (docs/study.md): the testbed's sensitivity (how much of the stage-1 loss the condition
# explains), then the positive control and the head to head on it, 3 seeds (hours on 2 cores; DCR is most of it).
# Arm 2 (docs/study.md, section 7) repeats the control and GenHancer at stage-2 lr 5e-3; the placebo keeps
# GenHancer's per-matrix singular values and draws random directions (exploratory).
reproduce-small: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python -m eval.study --preset testbed --part all --methods supervised-rare enhanced dcr dcr-own-lr naive-contrastive diva --output-dir runs/reproduce-small
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python -m eval.study --preset testbed --methods supervised-rare enhanced \
	    --set schedule.stage2_lr=5e-3 --set schedule.control_lr=5e-3 --output-dir runs/reproduce-small/lr5e-3
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python -m eval.study.placebo runs/reproduce-small --variant enhanced
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python -m eval.study.placebo runs/reproduce-small/lr5e-3 --variant enhanced

# The first protocol's head to head (2026-12-03, docs/reproduce-methods): the default world, 200 + 100 steps.
reproduce-first: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python -m eval.study --preset small --methods enhanced diva dcr naive-contrastive --output-dir runs/reproduce-first

# The paper's trends as dose-response curves on the testbed (docs/study-trends.md): stage-1 length, denoiser
# depth, local-token ratio, one vs two stages; 3 seeds, one process per seed on one thread each, then the
# report over all of them (every point reused). Estimated 20-90 min on 2 cores; a rerun resumes.
TRENDS_OUT ?= runs/reproduce-trends
TRENDS_SEEDS ?= 0 1 2
reproduce-trends: $(STAMP)
	mkdir -p $(TRENDS_OUT)
	$(BIN)/python -c "from genhancer.toyworld.models import resolve_tiny as r; r('genhancer-tiny:clip'); r('genhancer-tiny:vae')"
	pids=""; for s in $(TRENDS_SEEDS); do \
	    OMP_NUM_THREADS=1 $(BIN)/python -m eval.study --preset testbed --part trends --seeds $$s --threads 1 \
	        --output-dir $(TRENDS_OUT) > $(TRENDS_OUT)/seed$$s.log 2>&1 & pids="$$pids $$!"; \
	done; for p in $$pids; do wait $$p || { echo "a seed failed: see $(TRENDS_OUT)/seed*.log"; exit 1; }; done
	OMP_NUM_THREADS=1 $(BIN)/python -m eval.study --preset testbed --part trends --seeds $(TRENDS_SEEDS) \
	    --threads 1 --output-dir $(TRENDS_OUT)

demo: $(STAMP)
	$(BIN)/genhancer-demo --preset tiny

clean:
	rm -rf $(VENV) $(LATEST) $(LOCKTOOLS) runs

# The GPU check (bench/gpu_check.sh): a GPU machine with its own PyTorch and no package index gets
# what it lacks from .whl/ (bench/gpu-wheels.txt, no dependencies, for its Python: GPU_PYVER).
GPU_WHEELS ?= .whl
GPU_PYVER ?= 3.12
gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYVER) --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    -d $(GPU_WHEELS) -r bench/gpu-wheels.txt
	@du -sh $(GPU_WHEELS); ls $(GPU_WHEELS)

gpu-check:  # on the GPU machine; OUT=DIR for the results (default runs/gpu-check)
	bench/gpu_check.sh --wheels $(GPU_WHEELS) $(if $(filter-out runs/quickstart,$(OUT)),--out $(OUT),)

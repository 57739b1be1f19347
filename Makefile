# Quick start: `make demo` and `make test`. Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned to the wheels this project is developed against; CompressAI and open_clip need torchvision.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_DIR := .demo

.PHONY: setup demo test lint typecheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/python -m pytest -q

# The offline demo on the embedded default (Qdrant local mode). No trained weights ship yet, so the demo runs
# with seeded random weights, and every command says so loudly.
demo: setup
	rm -rf $(DEMO_DIR)
	$(BIN)/licsearch samples --out $(DEMO_DIR)/samples -n 16
	$(BIN)/licsearch init --store $(DEMO_DIR)/store --codec bmshj2018-hyperprior:3 --codec-weights random \
		--clip licsearch-tiny --clip-weights random --adapter-weights random
	$(BIN)/licsearch ingest --store $(DEMO_DIR)/store $(DEMO_DIR)/samples
	$(BIN)/licsearch ingest --store $(DEMO_DIR)/store $(DEMO_DIR)/samples
	$(BIN)/licsearch search --store $(DEMO_DIR)/store --text "two small red circles on the left" --top-k 3
	$(BIN)/licsearch search --store $(DEMO_DIR)/store --image $(DEMO_DIR)/samples/00003.png --top-k 3
	$(BIN)/licsearch search --store $(DEMO_DIR)/store --image $(DEMO_DIR)/samples/00003.png --top-k 1 --json \
		| $(BIN)/python -c "import json,sys; print(json.load(sys.stdin)['hits'][0]['id'])" > $(DEMO_DIR)/hit.txt
	$(BIN)/licsearch get --store $(DEMO_DIR)/store "$$(cat $(DEMO_DIR)/hit.txt)" -o $(DEMO_DIR)/hit.png
	$(BIN)/licsearch encode $(DEMO_DIR)/samples/00000.png -o $(DEMO_DIR)/00000.lics --store $(DEMO_DIR)/store
	$(BIN)/licsearch decode $(DEMO_DIR)/00000.lics -o $(DEMO_DIR)/00000.decoded.png --store $(DEMO_DIR)/store
	$(BIN)/licsearch fsck --store $(DEMO_DIR)/store
	$(BIN)/licsearch stats --store $(DEMO_DIR)/store
	@echo "demo done: decoded hit in $(DEMO_DIR)/hit.png"

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache

# Prometheus for real: TorchServe (`licsearch serve`, tiny random-weight models) scraped every second by a local
# Prometheus (Debian's package: apt-get install prometheus) with deploy/prometheus's rules; real encode, decode and
# embed traffic; then every query of the Grafana dashboard and of the rules evaluated and printed. Bounded; both
# servers are stopped at the end (OBSERVE_HOLD=120 keeps Prometheus up that many seconds to look at it).
OBSERVE_DIR := .demo-observe
OBSERVE_HOLD ?= 0
.PHONY: demo-observe
demo-observe: setup
	rm -rf $(OBSERVE_DIR)
	$(BIN)/licsearch export --out $(OBSERVE_DIR)/bundle --codec bmshj2018-hyperprior:1 --codec-weights random \
		--clip licsearch-tiny --clip-weights random --adapter-weights random
	$(BIN)/licsearch archive --bundle $(OBSERVE_DIR)/bundle --out $(OBSERVE_DIR)/model_store
	$(BIN)/python -m licsearch.ops.observe --model-store $(OBSERVE_DIR)/model_store --work $(OBSERVE_DIR) \
		--hold $(OBSERVE_HOLD)

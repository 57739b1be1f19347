# Quick start: `make demo` and `make test`. Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned to the wheels this project is developed against; CompressAI and open_clip need torchvision.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_DIR := .demo

.PHONY: setup demo test lint typecheck clean train-offline ship-offline train-adapters-world

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py licsearch/model/_rans.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[dev,serve,eval,ui]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/python -m pytest -q

# The offline demo on the embedded default (Qdrant local mode), with the models this project trained and ships
# (licsearch/shipped/offline: codec trained on ../shared/data/photos, a CLIP trained on the procedural world, and
# the adapter distilled from it). The text query is the caption of one sample; the demo prints what comes back.
DEMO_QUERY := $(DEMO_DIR)/query.txt
demo: setup
	rm -rf $(DEMO_DIR)
	$(BIN)/licsearch samples --out $(DEMO_DIR)/samples -n 16
	$(BIN)/licsearch init --store $(DEMO_DIR)/store --preset offline
	$(BIN)/licsearch ingest --store $(DEMO_DIR)/store $(DEMO_DIR)/samples
	$(BIN)/licsearch ingest --store $(DEMO_DIR)/store $(DEMO_DIR)/samples
	$(BIN)/licsearch stats --store $(DEMO_DIR)/store
	$(BIN)/python -c "import json; print(json.loads(open('$(DEMO_DIR)/samples/captions.jsonl').readlines()[5])['caption'])" \
		> $(DEMO_QUERY)
	@echo "text query (the caption of samples/00005.png): $$(cat $(DEMO_QUERY))"
	$(BIN)/licsearch search --store $(DEMO_DIR)/store --text "$$(cat $(DEMO_QUERY))" --top-k 3
	$(BIN)/licsearch search --store $(DEMO_DIR)/store --image $(DEMO_DIR)/samples/00003.png --top-k 3
	$(BIN)/licsearch search --store $(DEMO_DIR)/store --text "$$(cat $(DEMO_QUERY))" --top-k 1 --json \
		| $(BIN)/python -c "import json,sys; h=json.load(sys.stdin)['hits'][0]; print(h['id']); \
		print('text search top hit:', h['payload']['source_path'], file=sys.stderr)" > $(DEMO_DIR)/hit.txt
	$(BIN)/licsearch get --store $(DEMO_DIR)/store "$$(cat $(DEMO_DIR)/hit.txt)" -o $(DEMO_DIR)/hit.png
	$(BIN)/licsearch encode $(DEMO_DIR)/samples/00000.png -o $(DEMO_DIR)/00000.lics --store $(DEMO_DIR)/store
	$(BIN)/licsearch decode $(DEMO_DIR)/00000.lics -o $(DEMO_DIR)/00000.decoded.png --store $(DEMO_DIR)/store
	$(BIN)/licsearch fsck --store $(DEMO_DIR)/store
	@echo "demo done: decoded text-search hit in $(DEMO_DIR)/hit.png"
	@echo "browse it: $(BIN)/licsearch ui --store $(DEMO_DIR)/store --open"

# The recipe that trained licsearch/shipped/offline (CPU figures as shipped; on a GPU raise the steps, e.g.
# make train-offline CODEC_STEPS=200000 CODEC_CROP=256 CODEC_BATCH=16 FT_STEPS=50000 CLIP_STEPS=20000).
RUNS ?= .train-runs/offline
PHOTOS ?= ../shared/data/photos
TRAIN_DEVICE ?= auto
CODEC_STEPS ?= 2400
CODEC_CROP ?= 128
CODEC_BATCH ?= 8
FT_STEPS ?= 300
CLIP_STEPS ?= 400
ADAPTER_STEPS ?= 1500
TRAIN := $(BIN)/licsearch train
train-offline: setup
	$(TRAIN) codec --images $(PHOTOS) --quality 3 --crop $(CODEC_CROP) --batch-size $(CODEC_BATCH) \
		--steps $(CODEC_STEPS) --lr 3e-4 --schedule cosine --warmup 60 --device $(TRAIN_DEVICE) --out $(RUNS)/codec-q3
	for q in 1 2 4; do $(TRAIN) codec --images $(PHOTOS) --quality $$q --init $(RUNS)/codec-q3/codec.safetensors \
		--crop $(CODEC_CROP) --batch-size $(CODEC_BATCH) --steps $(FT_STEPS) --lr 1e-4 --aux-lr 1e-2 --schedule cosine \
		--device $(TRAIN_DEVICE) --out $(RUNS)/codec-q$$q || exit 1; done
	$(TRAIN) clip --world --steps $(CLIP_STEPS) --batch-size 128 --eval-every 200 --device $(TRAIN_DEVICE) \
		--out $(RUNS)/clip-world
	$(TRAIN) clip --world --steps 300 --batch-size 128 --seed 1 --eval-every 0 --device $(TRAIN_DEVICE) \
		--out $(RUNS)/clip-world-b
	$(BIN)/python -m licsearch.train.crops --images $(PHOTOS) --out $(RUNS)/adapter-data/photos --per-image 16
	$(BIN)/licsearch samples --split train --size 256x256 -n 3000 --seed 7 --out $(RUNS)/adapter-data/world
	$(TRAIN) adapter --images $(RUNS)/adapter-data --codec bmshj2018-hyperprior:3 \
		--codec-weights $(RUNS)/codec-q3/codec.safetensors --clip licsearch-world \
		--clip-weights $(RUNS)/clip-world/clip.safetensors --no-augment --steps $(ADAPTER_STEPS) --batch-size 32 \
		--device $(TRAIN_DEVICE) --out $(RUNS)/adapter-q3-base
	$(MAKE) train-adapters-world
	$(MAKE) ship-offline

# The shipped adapters: adapter-q3-base (precomputed views above), then three runs on views made on the fly (new world
# train scenes of each --world-seed and the photos, cropped, resized and JPEG re-encoded as a collection holds them; a
# near-duplicate view is taught its original's embedding: --view-target original), then q1/q2/q4 from it.
ADAPTER_FT_STEPS ?= 160
# q1, q2 and q3 (the preset's own) then get 1,600 more steps on new views: adapter-views-long-qN (licsearch/presets.py's
# OFFLINE_LONG_QUALITIES; q3 at its own recipe's rate, from adapter-q3)
ADAPTER_LONG_STEPS ?= 1600
LONG_QUALITIES := 1 2
ADAPTER_WORLD := $(TRAIN) adapter --images $(PHOTOS) --clip licsearch-world \
	--clip-weights $(RUNS)/clip-world/clip.safetensors --world --chunk 256 --batch-size 32 --eval-images 32 \
	--reuse 6 --view-target original --device $(TRAIN_DEVICE)
ADAPTER_WORLD_Q3 := $(ADAPTER_WORLD) --codec bmshj2018-hyperprior:3 --codec-weights $(RUNS)/codec-q3/codec.safetensors \
	--lr 3e-4
train-adapters-world: setup
	$(ADAPTER_WORLD_Q3) --init $(RUNS)/adapter-q3-base/adapter.safetensors --world-seed 7 --steps 640 \
		--out $(RUNS)/adapter-q3-w7
	$(ADAPTER_WORLD_Q3) --init $(RUNS)/adapter-q3-w7/adapter.safetensors --world-seed 8 --steps 1600 \
		--out $(RUNS)/adapter-q3-w8
	$(ADAPTER_WORLD_Q3) --init $(RUNS)/adapter-q3-w8/adapter.safetensors --world-seed 9 --steps 1600 \
		--out $(RUNS)/adapter-q3
	for q in 2 1 4; do $(ADAPTER_WORLD) --codec bmshj2018-hyperprior:$$q --codec-weights \
		$(RUNS)/codec-q$$q/codec.safetensors --init $(RUNS)/adapter-q3/adapter.safetensors --world-seed 1$$q \
		--seed $$q --steps $(ADAPTER_FT_STEPS) --lr 2e-4 --out $(RUNS)/adapter-q$$q || exit 1; done
	$(ADAPTER_WORLD_Q3) --init $(RUNS)/adapter-q3/adapter.safetensors --world-seed 10 --steps $(ADAPTER_LONG_STEPS) \
		--out $(RUNS)/adapter-long-q3
	for q in $(LONG_QUALITIES); do $(ADAPTER_WORLD) --codec bmshj2018-hyperprior:$$q --codec-weights \
		$(RUNS)/codec-q$$q/codec.safetensors --init $(RUNS)/adapter-q$$q/adapter.safetensors --world-seed 2$$q \
		--seed 2$$q --steps $(ADAPTER_LONG_STEPS) --lr 2e-4 --out $(RUNS)/adapter-long-q$$q || exit 1; done

ship-offline: setup
	$(BIN)/python -m licsearch.train.ship --runs $(RUNS)

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
	$(BIN)/python -m licsearch.observe.prometheus --model-store $(OBSERVE_DIR)/model_store --work $(OBSERVE_DIR) \
		--hold $(OBSERVE_HOLD)

# emoctl: every target creates .venv and installs what is missing, so on a fresh machine
#   make demo              -> corpus, harvest from the committed mini TTS, SAE, emotion features, summary
#   make test              -> runs the test suite (installs upstream's IndexTTS2 and CosyVoice packages first)
#   make reproduce-table1  -> the SAE seed's Table 1 (with EmoShift and CoCoEmo as columns) on the mini backbone
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EMOCTL := $(VENV)/bin/emoctl
STAMP  := $(VENV)/.emoctl-installed
CORPUS   := runs/corpus/esd_espeak
STORE    := runs/stores/mini_tts_train_resid_pre5
SAE_RUN  := runs/sae_mini/demo
SELECT   := runs/select_mini
EMOSHIFT := runs/emoshift_mini/demo
# The EmoSteer layer that Table 1 and the EmoShift reports steer with: the committed one (like the mini TTS and
# the SER, a trained model that ships with emoctl); `make emoshift-mini` retrains it, and
# `make reproduce-table1 EMOSHIFT_LAYER=$(EMOSHIFT)/emosteer` trains one in the run instead.
EMOSHIFT_LAYER ?= emoctl/assets/emoshift_mini
# The SAE and the feature sets that README's Table 1 and attribution table were made with, committed like the
# layer above: a retrained SAE differs from machine to machine (float kernels differ by CPU and thread count) and
# with 8 clips per cell that moves Table 1's cells. `make sae-mini` retrains and replaces them;
# `make reproduce-table1 SAE=$(SAE_RUN)/sae FEATURES=$(SELECT)` trains and selects inside the run instead.
SAE      ?= emoctl/assets/sae_mini
FEATURES ?= emoctl/assets/select_mini
# CoCoEmo's mean-difference directions at its chosen layers, committed like the layer above; `make directions-mini`
# re-extracts them from `make layers-mini`'s discriminability file.
DIRECTIONS ?= emoctl/assets/directions_mini

.PHONY: install indextts2 cosyvoice browser test demo demo-synthetic bench bench-gpu gpu-wheels bench-gpu-offline tensorboard reproduce-table1 reproduce-table1-powered reproduce-attribution reproduce-schedules reproduce-schedules-powered reproduce-calibration reproduce-emoshift reproduce-emoshift-cosyvoice directions-cosyvoice2 readme-tables kill-campaign clean corpus store-mini mini-tts ser-mini sae-mini emoshift-mini layers-mini directions-mini reproduce-mixtures atlas-mini listening-site

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $@

# Upstream's IndexTTS2 inference package: its metadata pulls nemo-text-processing (pynini) and accelerate, which
# the GPT and the vocoder chain do not use, and a pip extra cannot say --no-deps; so it is installed here, pinned,
# with the modules its import needs (see emoctl/backbones/indextts2/upstream.py).
INDEXTTS2_PIN   := indextts2-inference==2.1.1
INDEXTTS2_STAMP := $(VENV)/.indextts2-installed

indextts2: $(INDEXTTS2_STAMP)

$(INDEXTTS2_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps '$(INDEXTTS2_PIN)'
	$(PY) -m pip install --quiet einops omegaconf sentencepiece munch
	@echo "(pip's complaint that nemo-text-processing is not installed is expected: emoctl leaves it out on purpose)"
	@touch $@

# Upstream's CosyVoice package (FunAudioLLM's `cosyvoice` on PyPI as cosyvoice-minicpmo): its metadata pulls
# onnxruntime-gpu and modelscope, which the LLM, flow and HiFT do not use; installed here, pinned, --no-deps, with
# the modules its imports need (whisper's tokenizer, matcha's imports) and onnx, which writes the test releases'
# ONNX front ends (see emoctl/backbones/cosyvoice_instruct/upstream.py).
COSYVOICE_PIN   := cosyvoice-minicpmo==0.1.0
COSYVOICE_STAMP := $(VENV)/.cosyvoice-installed

cosyvoice: $(COSYVOICE_STAMP)

$(COSYVOICE_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps '$(COSYVOICE_PIN)'
	$(PY) -m pip install --quiet 'openai-whisper==20250625' 'onnxruntime>=1.16' 'onnx>=1.16' 'conformer==0.3.2' \
		'diffusers>=0.30' 'hydra-core>=1.3' 'gdown>=5' 'wget==3.2' einops omegaconf
	@echo "(pip's complaint that modelscope and onnxruntime-gpu are not installed is expected: emoctl leaves them out on purpose)"
	@touch $@

# Debian's Chromium and ChromeDriver, which the site tests drive headless through Selenium (Playwright's own
# browser download cannot work offline); installed once, with sudo when not root.
BROWSER := /usr/bin/chromedriver
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser: $(BROWSER)

$(BROWSER):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
		|| ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)

test: install indextts2 cosyvoice browser
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest emoctl_tests -q

# The docs site (mkdocs.yml, docs/) into runs/site; --strict fails on a broken link or anchor and on a page missing
# from the nav (emoctl_tests/project/test_docs.py runs the same build).
.PHONY: docs
docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir runs/site

# The 20-kill campaign of docs/kill_campaign.md (about 8 min): harvest, store writes, SAE and EmoShift fits killed
# at seeded random points, resumed, compared bit for bit with uninterrupted runs; exit 1 if any differs. `make test`
# runs 3 kills each (and `EMOCTL_KILL_CAMPAIGN=1 pytest -m slow` the 20).
kill-campaign: install
	$(PY) -m emoctl_tests.harness.kill_campaign --producer all --kills 20 --seed 0 --out runs/kill_campaign
	cp runs/kill_campaign/kill_campaign.md docs/kill_campaign.md

demo: $(SELECT)/selection.md
	$(EMOCTL) inspect emotionality --config recipes/evaluation/inspect_emotionality_mini.yaml
	$(EMOCTL) atlas --sae $(SAE_RUN)/sae --store $(STORE) --selection $(SELECT) --out_dir runs/atlas_demo \
	    --top_n 3 --top_per_score 0 --n_random 2 --n_prompts 2 --steer_alphas '[40]'
	@echo
	@echo "Demo done. The SAE (SAELens format): $(SAE_RUN)/sae   emotion features: $(SELECT)/selection.md"
	@echo "Is the backbone emotional: reports/emotionality/summary.md"
	@echo "See and hear every feature: open runs/atlas_demo/index.html in a browser"
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir runs   (or: make tensorboard)"

# Harvest decode-phase resid_pre.5 from the committed mini TTS (if the store is missing), then fit the SAE.
$(SAE_RUN)/sae/cfg.json: | corpus
	$(EMOCTL) fit --config recipes/sae_mini.yaml --trainer.logger.init_args.version=demo

# Δ-score emotion features with McNemar tests and bootstrap intervals.
$(SELECT)/selection.md: $(SAE_RUN)/sae/cfg.json
	$(EMOCTL) select --store $(STORE) --sae $(SAE_RUN)/sae --out_dir $(SELECT)

# The SAE-only demo on a synthetic store with a known dictionary (a minute; checks dictionary recovery).
demo-synthetic: install
	$(EMOCTL) fit --config recipes/sae_demo.yaml --trainer.logger.init_args.version=demo
	$(EMOCTL) inspect recovery --sae runs/sae_demo/demo/sae --dictionary runs/stores/synthetic_demo/true_dictionary.npy

# The embedded ESD-shaped eSpeak NG corpus (15,000 clips, about a minute on 2 cores; resumable).
corpus: $(CORPUS)/corpus.json
$(CORPUS)/corpus.json: | install
	$(EMOCTL) corpus build --root $(CORPUS) --workers 2

# Retrain the committed mini TTS backbone (about 55 min on 2 CPU cores; fits the codec on first use).
# Like ser-mini and emoshift-mini, it then replaces the committed checkpoint (emoctl/assets/mini_tts) with the export.
mini-tts: corpus
	$(EMOCTL) fit --config recipes/mini_tts.yaml --trainer.logger.init_args.version=make
	rm -rf emoctl/assets/mini_tts && cp -r runs/mini_tts/make/mini_tts emoctl/assets/mini_tts

bench: install indextts2 cosyvoice
	$(EMOCTL) bench sae
	$(EMOCTL) bench probes
	$(EMOCTL) bench harvest
	$(EMOCTL) bench harvest --backbone indextts2
	$(EMOCTL) bench cosyvoice
	$(EMOCTL) bench ser
	$(EMOCTL) bench loader
	$(EMOCTL) bench topk
	$(EMOCTL) bench ddp --figure reports/bench_ddp.png

# The GPU checks in one run: on a GPU machine, from a fresh clone, `make bench-gpu` writes
# reports/bench_gpu.md (about 3 min of sections on one H200: 1 min 51 s without the end-to-end
# fit, which took 71 s alone; plus the install).
BENCH_GPU_OUT ?= reports/bench_gpu.md
bench-gpu: install indextts2 cosyvoice
	$(EMOCTL) bench gpu --out $(BENCH_GPU_OUT)

# The same checks on an offline GPU machine whose python3 already has torch, lightning and transformers (as
# the CUDA images of lent H200s do): `make gpu-wheels` on a connected machine fills .whl/ with what such an
# image lacks (GPU_WHEELS: emoctl's CLI, upstream's two packages and their imports, sparsify), the folder
# travels with the clone, and `make bench-gpu-offline` there installs it into GPU_SITE and runs with python3.
GPU_SITE ?= /tmp/emoctl-site
GPU_WHEELS := jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 eai-sparsify==1.3.3 \
	datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 natsort==8.4.0 schedulefree==1.4.1 simple-parsing==0.1.9 \
	$(INDEXTTS2_PIN) munch==4.0.0 omegaconf==2.3.1 hydra-core==1.3.8 $(COSYVOICE_PIN) conformer==0.3.2 \
	diffusers==0.42.1 gdown==6.5.1 beautifulsoup4==4.15.0 soupsieve==4.1.4 PySocks==1.7.1 librosa==0.11.0 \
	audioread==3.1.0 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.9 soundfile==0.14.0 soxr==1.1.0 \
	cffi==2.1.1 pycparser==3.12
GPU_SDISTS := antlr4-python3-runtime==4.9.3 openai-whisper==20250625 wget==3.2
GPU_PLATFORM := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
gpu-wheels: install
	mkdir -p .whl
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: $(GPU_PLATFORM) -d .whl $(GPU_WHEELS)
	$(PY) -m pip wheel --quiet --no-deps -w .whl $(GPU_SDISTS)

bench-gpu-offline:
	$(PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target $(GPU_SITE) .whl/*.whl
	PYTHONPATH=$(GPU_SITE):$(CURDIR) PYTHONUNBUFFERED=1 $(PYTHON) -m emoctl.cli bench gpu --out $(BENCH_GPU_OUT)

# ser-mini: retrain the embedded speech-emotion recognizer (emoctl.metrics.ser_mini) on the eSpeak corpus and
# its codec round trips, then replace the committed checkpoint in emoctl/assets/ser_mini with the export
# (weights, config, training.json with corpus seed/settings and test numbers, test_report.md).
# Needs runs/corpus/esd_espeak and the fitted codec runs/codec/mini_tts (see recipes/mini_tts.yaml).
SER_MINI_RUN := runs/ser_mini/make
ser-mini: corpus
	$(EMOCTL) fit --config recipes/ser_mini.yaml --trainer.logger.init_args.version=make
	rm -rf emoctl/assets/ser_mini && cp -r $(SER_MINI_RUN)/ser_mini emoctl/assets/ser_mini

tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs

# The EmoSteer layer on the mini backbone (neutral condition: the layer alone carries the emotion; ~9 min with the
# first tokenizing of its clips).
$(EMOSHIFT)/emosteer/emosteer.json: | corpus
	$(EMOCTL) fit --config recipes/emoshift_mini.yaml --trainer.logger.init_args.version=demo

# emoshift-mini: retrain the committed EmoSteer layer and replace emoctl/assets/emoshift_mini with the export
# (weights, emosteer.json with the recipe, data and step count in its metadata).
emoshift-mini: corpus
	$(EMOCTL) fit --config recipes/emoshift_mini.yaml --trainer.logger.init_args.version=make
	rm -rf emoctl/assets/emoshift_mini && cp -r runs/emoshift_mini/make/emosteer emoctl/assets/emoshift_mini

reproduce-table1: $(SAE)/cfg.json $(FEATURES)/selection.md $(STORE)/manifest.json $(EMOSHIFT_LAYER)/emosteer.json
	$(EMOCTL) report table1 --config recipes/evaluation/report_table1_mini.yaml \
	    --sae $(SAE) --store $(STORE) --selection $(FEATURES) --emoshift $(EMOSHIFT_LAYER) \
	    --directions $(DIRECTIONS) --out_dir reports

# The feature atlas of the committed SAE on the demo's store, with the committed feature sets and Table 1
# (docs/atlas.md; about 4 min on 2 cores after the store): open runs/atlas_mini/index.html.
atlas-mini: $(STORE)/manifest.json | install
	$(EMOCTL) atlas --sae $(SAE) --store $(STORE) --selection $(FEATURES) --table1 reports --out_dir runs/atlas_mini

# A blind listening test of Table 1's clips (docs/commands.md, Listening test): Table 1 again with its audio kept
# (about 17 min), then one page per rater; give runs/listening/site/ to the raters.
RATERS ?= 20
listening-site: $(SAE)/cfg.json $(FEATURES)/selection.md $(STORE)/manifest.json $(EMOSHIFT_LAYER)/emosteer.json
	$(EMOCTL) report table1 --config recipes/evaluation/report_table1_mini.yaml \
	    --sae $(SAE) --store $(STORE) --selection $(FEATURES) --emoshift $(EMOSHIFT_LAYER) \
	    --directions $(DIRECTIONS) --save_audio true --out_dir runs/table1_audio
	$(EMOCTL) listen build --report runs/table1_audio --raters $(RATERS) --out_dir runs/listening

# CoCoEmo's discriminability per hookpoint on the mini TTS (reports/layers, about 6 min on 2 cores), and its
# mean-difference directions at the three most discriminable attention outputs (about 3 min).
layers-mini: | corpus
	$(EMOCTL) inspect layers --config recipes/evaluation/inspect_layers_mini.yaml --out_dir reports/layers

# Soft-label mixtures of two emotions for EmoShift, SAE-Emotion, Global and CoCoEmo, scored as CoCoEmo does.
reproduce-mixtures: $(STORE)/manifest.json | corpus
	$(EMOCTL) report mixtures --layer $(EMOSHIFT_LAYER) --sae $(SAE) --selection $(FEATURES) --store $(STORE) \
	    --directions $(DIRECTIONS) --out_dir reports/mixtures

directions-mini: | corpus
	$(EMOCTL) extract --config recipes/evaluation/inspect_layers_mini.yaml \
	    --discriminability reports/layers/discriminability.json --out_dir $(DIRECTIONS)

# The seed's latent table: each emotion's top 2 features steered alone (README, "Per-feature acoustic attribution").
# Table 1 with 40 clips per cell, the three selection scores and paired tests between methods (about 40 min on
# 2 cores; the quick table above keeps 8 clips per cell).
reproduce-table1-powered: $(SAE)/cfg.json $(FEATURES)/selection.md $(STORE)/manifest.json
	$(EMOCTL) report table1 --config recipes/evaluation/report_table1_mini_powered.yaml \
	    --sae $(SAE) --store $(STORE) --selection $(FEATURES) --directions $(DIRECTIONS) --out_dir reports/table1_powered

reproduce-attribution: $(SAE)/cfg.json $(FEATURES)/selection.md | install
	$(EMOCTL) attribute --sae $(SAE) --selection $(FEATURES) --out_dir reports/attribution --m 2 --n_texts 4

# Emotion switched on inside one utterance (EmoShift and SAE-Emotion), each clip cut at the switch and scored per
# part (docs/results.md, "Emotion over time"): 8 clips per setting (about 14 min on 2 cores), or 40.
reproduce-schedules: | install
	$(EMOCTL) report schedules --config recipes/evaluation/report_schedules_mini.yaml

reproduce-schedules-powered: | install
	$(EMOCTL) report schedules --config recipes/evaluation/report_schedules_mini_powered.yaml

# α -> P(target emotion) per method and emotion, the file --intensity reads (docs/results.md, "Emotion by amount";
# about 12 min on 2 cores). Global steering reads the training store.
reproduce-calibration: $(STORE)/manifest.json
	$(EMOCTL) calibrate --config recipes/evaluation/calibrate_mini.yaml

# The training store alone (Table 1's global mean-difference direction reads it): the SAE recipe's harvest, run by
# `validate` (which prepares the recipe's data, then checks one batch against an untrained SAE; nothing is saved).
store-mini: $(STORE)/manifest.json
$(STORE)/manifest.json: | corpus
	$(EMOCTL) validate --config recipes/sae_mini.yaml --trainer.logger=false --trainer.limit_val_batches=1

# sae-mini: retrain the committed SAE and its feature sets and replace emoctl/assets/sae_mini and select_mini.
sae-mini: corpus
	$(EMOCTL) fit --config recipes/sae_mini.yaml --trainer.logger.init_args.version=make
	$(EMOCTL) select --store $(STORE) --sae runs/sae_mini/make/sae --out_dir runs/select_mini_make
	rm -rf emoctl/assets/sae_mini emoctl/assets/select_mini
	cp -r runs/sae_mini/make/sae emoctl/assets/sae_mini && cp -r runs/select_mini_make emoctl/assets/select_mini

# README's result tables are copies of the committed reports' tables: rewrite them from the reports (the test
# suite checks that they are equal).
readme-tables: install
	$(EMOCTL) report readme

# The EmoShift seed's Table 1, its α sweep (Figure 3) and compound emotions: low-rank layer and SFT baseline
# trained first (same data and step budget as recipes/emoshift_mini.yaml).
EMOSHIFT_LR := runs/emoshift_lr16/demo
SFT_RUN := runs/sft_mini/demo
$(EMOSHIFT_LR)/emosteer/emosteer.json: | corpus
	$(EMOCTL) fit --config recipes/emoshift_mini.yaml --model.init_args.layer.rank=16 \
	    --trainer.logger.init_args.name=emoshift_lr16 --trainer.logger.init_args.version=demo
$(SFT_RUN)/sft_backbone/config.json: | corpus
	$(EMOCTL) fit --config recipes/sft_mini.yaml --trainer.logger.init_args.version=demo
# The EmoShift α of the report is the sweep's choice (--sweep_csv): best accuracy within +0.15 WER of unsteered.
# Each evaluation's numbers (speakers, sentences, α grids, mixtures, sampling) are in recipes/evaluation/.
reproduce-emoshift: $(EMOSHIFT_LAYER)/emosteer.json $(EMOSHIFT_LR)/emosteer/emosteer.json $(SFT_RUN)/sft_backbone/config.json
	$(EMOCTL) steer emoshift --config recipes/evaluation/steer_emoshift_mini.yaml --layer $(EMOSHIFT_LAYER)
	$(EMOCTL) steer compound --config recipes/evaluation/steer_compound_mini.yaml --layer $(EMOSHIFT_LAYER)
	$(EMOCTL) report emoshift --config recipes/evaluation/report_emoshift_mini.yaml --layer $(EMOSHIFT_LAYER) \
	    --low_rank $(EMOSHIFT_LR)/emosteer --sft $(SFT_RUN)/sft_backbone \
	    --sweep_csv reports/emoshift_sweep/emoshift_sweep.csv

# EmoShift on the released CosyVoice-300M-Instruct (your model folder and ESD copy; training wants GPUs, see
# recipes/emoshift_cosyvoice.yaml):
#   make reproduce-emoshift-cosyvoice COSYVOICE_DIR=/models/CosyVoice-300M-Instruct ESD_DIR=/data/ESD \
#       EMOTION2VEC_DIR=/models/emotion2vec_plus_large
EMOSHIFT_CV := runs/emoshift_cosyvoice/reproduce
CV_ARGS = --backbone.path $(COSYVOICE_DIR) --corpus_root $(ESD_DIR) --recognizer_dir $(EMOTION2VEC_DIR)

reproduce-emoshift-cosyvoice: install cosyvoice
	@test -n "$(COSYVOICE_DIR)" -a -n "$(ESD_DIR)" -a -n "$(EMOTION2VEC_DIR)" || { echo "set COSYVOICE_DIR (the CosyVoice-300M-Instruct folder), ESD_DIR (ESD) and EMOTION2VEC_DIR (emotion2vec_plus_large)"; exit 2; }
	$(EMOCTL) fit --config recipes/emoshift_cosyvoice.yaml --model.init_args.backbone.path $(COSYVOICE_DIR) \
	    --data.init_args.backbone.path $(COSYVOICE_DIR) --data.init_args.corpus_root $(ESD_DIR) \
	    --model.init_args.export_dir $(EMOSHIFT_CV)/emosteer
	$(EMOCTL) steer emoshift --config recipes/evaluation/steer_emoshift_cosyvoice.yaml --layer $(EMOSHIFT_CV)/emosteer $(CV_ARGS)
	$(EMOCTL) report emoshift --config recipes/evaluation/report_emoshift_cosyvoice.yaml --layer $(EMOSHIFT_CV)/emosteer \
	    $(CV_ARGS) --sweep_csv reports/emoshift_sweep_cosyvoice/emoshift_sweep.csv

# CoCoEmo's layer analysis and directions on the released CosyVoice2 (your model folder and ESD copy; a GPU
# makes the paired generations quick, see recipes/evaluation/inspect_layers_cosyvoice2.yaml):
#   make directions-cosyvoice2 COSYVOICE2_DIR=/models/CosyVoice2-0.5B ESD_DIR=/data/ESD
LAYERS_CV2 := recipes/evaluation/inspect_layers_cosyvoice2.yaml
CV2_ARGS = --backbone.path $(COSYVOICE2_DIR) --corpus_root $(ESD_DIR)

directions-cosyvoice2: install cosyvoice
	@test -n "$(COSYVOICE2_DIR)" -a -n "$(ESD_DIR)" || { echo "set COSYVOICE2_DIR (the CosyVoice2-0.5B folder) and ESD_DIR (ESD)"; exit 2; }
	$(EMOCTL) inspect layers --config $(LAYERS_CV2) $(CV2_ARGS) --out_dir reports/layers_cosyvoice2
	$(EMOCTL) extract --config $(LAYERS_CV2) $(CV2_ARGS) --discriminability reports/layers_cosyvoice2/discriminability.json \
	    --top 2 --out_dir runs/directions_cosyvoice2

clean:
	rm -rf runs lightning_logs .pytest_cache

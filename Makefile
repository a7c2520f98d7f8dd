# emoctl: every target creates .venv and installs what is missing, so on a fresh machine
#   make demo   -> trains the demo SAE end to end
#   make test   -> runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EMOCTL := $(VENV)/bin/emoctl
STAMP  := $(VENV)/.emoctl-installed
DEMO_DIR := runs/sae_demo/demo
CORPUS   := runs/corpus/esd_espeak

.PHONY: install test demo bench tensorboard reproduce-table1 clean corpus mini-tts

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $@

test: install
	$(PY) -m pytest emoctl_tests -q

demo: install
	$(EMOCTL) fit --config recipes/sae_demo.yaml --trainer.logger.init_args.version=demo
	$(EMOCTL) inspect recovery --sae $(DEMO_DIR)/sae --dictionary runs/stores/synthetic_demo/true_dictionary.npy
	@echo "TensorBoard: $(EMOCTL:%/emoctl=%)/tensorboard --logdir runs   (or: make tensorboard)"

# The embedded ESD-shaped eSpeak NG corpus (15,000 clips, about a minute on 2 cores; resumable).
corpus: $(CORPUS)/corpus.json
$(CORPUS)/corpus.json: | install
	$(EMOCTL) corpus build --root $(CORPUS) --workers 2

# Retrain the committed mini TTS backbone (under an hour on 2 CPU cores; fits the codec on first use).
mini-tts: corpus
	$(EMOCTL) fit --config recipes/mini_tts.yaml

bench: install
	$(EMOCTL) bench sae
	$(EMOCTL) bench probes
	$(EMOCTL) bench harvest

tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs

reproduce-table1:
	@echo "reproduce-table1: not yet. Table 1 needs the mini TTS backbone, the probes and the"
	@echo "steering methods (issues 3, 4 and 6); this target will run them once they land."
	@exit 2

clean:
	rm -rf runs lightning_logs .pytest_cache

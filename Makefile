# emoctl: every target creates .venv and installs what is missing, so on a fresh machine
#   make demo   -> trains the demo SAE end to end
#   make test   -> runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EMOCTL := $(VENV)/bin/emoctl
STAMP  := $(VENV)/.emoctl-installed
DEMO_DIR := runs/sae_demo/demo

.PHONY: install test demo bench tensorboard reproduce-table1 clean ser-mini

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

bench: install
	$(EMOCTL) bench sae
	$(EMOCTL) bench probes

# ser-mini: retrain the embedded speech-emotion recognizer (emoctl.metrics.ser_mini) on the eSpeak corpus and
# its codec round trips, then replace the committed checkpoint in emoctl/assets/ser_mini with the export
# (weights, config, training.json with corpus seed/settings and test numbers, test_report.md).
# Needs runs/corpus/esd_espeak and the fitted codec runs/codec/mini_tts (see recipes/mini_tts.yaml).
SER_MINI_RUN := runs/ser_mini/make
ser-mini: install
	$(EMOCTL) fit --config recipes/ser_mini.yaml --trainer.logger.init_args.version=make
	rm -rf emoctl/assets/ser_mini && cp -r $(SER_MINI_RUN)/ser_mini emoctl/assets/ser_mini

tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs

reproduce-table1:
	@echo "reproduce-table1: not yet. Table 1 needs the mini TTS backbone, the probes and the"
	@echo "steering methods (issues 3, 4 and 6); this target will run them once they land."
	@exit 2

clean:
	rm -rf runs lightning_logs .pytest_cache

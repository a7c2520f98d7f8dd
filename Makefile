# emoctl: every target creates .venv and installs what is missing, so on a fresh machine
#   make demo   -> trains the demo SAE end to end
#   make test   -> runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EMOCTL := $(VENV)/bin/emoctl
STAMP  := $(VENV)/.emoctl-installed
DEMO_DIR := runs/sae_demo/demo

.PHONY: install test demo bench tensorboard reproduce-table1 clean

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
	$(EMOCTL) bench harvest

tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs

reproduce-table1:
	@echo "reproduce-table1: not yet. Table 1 needs the mini TTS backbone, the probes and the"
	@echo "steering methods (issues 3, 4 and 6); this target will run them once they land."
	@exit 2

clean:
	rm -rf runs lightning_logs .pytest_cache

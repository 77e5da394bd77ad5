# The two commands a newcomer runs: `make demo` and `make test`.
# Each creates .venv on first use and installs the package with the extras it needs
# (demo: [train]; test: [train,test]); they reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The callback tests against the oldest lightning / pytorch-lightning that pyproject.toml
# admits: a second venv that holds only those (and what they pin) and reuses .venv for
# the rest (torch, ...) through a .pth line, so it costs seconds, not another torch.
OLDEST := $(VENV)/oldest-lightning
# lightning < 2.4 imports pkg_resources, which setuptools 81 removed
OLDEST_PINS := "setuptools<81"

.PHONY: demo test test-oldest bench clean

$(VENV)/.installed-train: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[train]"
	touch $@

$(VENV)/.installed-test: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[train,test]"
	# two oracles whose own dependencies are not needed: manylatents' metric files (the kNN kernel;
	# ~30 dependencies; tests/functional/manylatents_oracle.py loads the files; its Requires-Python
	# stops at 3.12) and ckatorch's torch-only core (linear CKA; its plotting pulls seaborn, pandas)
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python manylatents==0.1.8 ckatorch==1.0.3
	touch $@ $(VENV)/.installed-train

# The demo keeps every epoch's weights (about 11 MB each) so that its run can be scored
# (README, "Score many models"): a ModelCheckpoint appended (+=) to the config's callbacks.
DEMO_CHECKPOINTS := --trainer.enable_checkpointing true --trainer.callbacks+='{"class_path": \
	"lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_top_k": -1, "every_n_epochs": 1, \
	"save_weights_only": true}}'

demo: $(VENV)/.installed-train
	$(BIN)/dse-monitor fit --config configs/digits.yaml $(DEMO_CHECKPOINTS)
	$(BIN)/dse-monitor report runs/digits

# the suite always has tests: pytest's "no tests collected" (exit 5) fails this too
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

$(OLDEST)/.installed: $(VENV)/.installed-test .ci/oldest_lightning.py
	rm -rf $(OLDEST)
	$(BIN)/python -m venv $(OLDEST)
	echo "import site; site.addsitedir('$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(OLDEST)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_reuse_venv.pth"
	$(OLDEST)/bin/pip install --quiet $$($(BIN)/python .ci/oldest_lightning.py) $(OLDEST_PINS)
	touch $@

test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -c "import lightning, pytorch_lightning; print('oldest: lightning', lightning.__version__, '/ pytorch-lightning', pytorch_lightning.__version__)"
	$(OLDEST)/bin/python -m pytest -q tests/callback

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV)

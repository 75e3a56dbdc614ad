"""How often the operator estimator is sure and wrong, and what the output's veto saves, on tuning volumes only.

    python scripts/operator_choice_study.py --dataset_dir data/synth_tune --section test --output_dir outputs/choice
    python scripts/operator_choice_study.py --dataset_dir data/demo_Task01 --section training \
        --output_dir outputs/choice_demo_train

Never point it at a scan that is evaluated: what it measures chooses the rule. Logic: bundle.evaluation.choice_study.py.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.core.atomic import write_text_atomic  # noqa: E402
from bundle.core.choices import EVAL_DEFAULT  # noqa: E402


def main(
    dataset_dir: str = "data/synth_tune",
    section: str = "test",
    output_dir: str = "outputs/choice",
    config_file: str | list[str] = "['configs/train.json','configs/evaluate.json','configs/demo.json']",
) -> None:
    from monai.bundle import ConfigParser

    from bundle.evaluation.choice_study import choice_table, operator_choice_study, summarise_choices

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = ConfigParser()
    parser.read_config(config_file if isinstance(config_file, list) else json.loads(config_file.replace("'", '"')))
    parser["bundle_root"] = str(Path(__file__).resolve().parents[1])
    parser.update({"dataset_dir": dataset_dir, "datalist#section": section, "uncertainty": 0})
    parser.update({"consistency": "project", "consistency_operator": "auto"})
    summary = summarise_choices(operator_choice_study(parser.get_parsed_content("evaluation"), EVAL_DEFAULT))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "summary.md", choice_table(summary))
    print(choice_table(summary))


if __name__ == "__main__":
    fire.Fire(main)

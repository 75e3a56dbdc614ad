"""Train the operator estimator of `consistency_operator: auto` on synthetic LR (bundle.trust.operator_estimator_training).

    python scripts/make_operator_estimator.py                     # `make model`: the release's training volumes
    python scripts/make_operator_estimator.py --dataset_dir data/synth_Task01 --steps 6000 \\
        --output outputs/release_training/operator_estimator.pt --tuning_dir data/synth_tune
    python scripts/release_model.py publish --ckpt ... --estimator outputs/release_training/operator_estimator.pt
"""

import logging
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.trust.operator_estimator_training import make_operator_estimator  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    fire.Fire(make_operator_estimator)

"""Train the warm starts of `run adapting` from the 1 mm MNI152 template: models/adapt_priors/<profile>_x<scale>.pt.

    python scripts/make_adapt_priors.py                       # gaussian and box, x4 and x5 (`make priors`)
    python scripts/make_adapt_priors.py --profiles "['box']" --scales "[3]" --iterations 4000

How each prior is trained and recorded: bundle/adaptation/priors_training.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.adaptation.priors_training import make_adapt_priors  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    fire.Fire(make_adapt_priors)


if __name__ == "__main__":
    main()

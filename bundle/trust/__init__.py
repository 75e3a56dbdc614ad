"""Trust stage: test-time augmentation, conformal calibration and its record, the per-volume trust summary, the
inference post-processing transforms and the calibration workflow."""

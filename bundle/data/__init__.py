"""Data stage: datalists (MSD layout, input folders), DICOM series, volume transforms and the degradation models
that make LR inputs for training and the operators that the trust layer applies."""

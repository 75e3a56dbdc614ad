"""Inference stage: generator loading, inferers, planned output names, the writers (NIfTI, DICOM). Imports neither
the trainer, the losses nor torchvision, so an exported bundle runs without them."""

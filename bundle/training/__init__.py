"""Training stage: the GAN trainer, its losses (the random-slice perceptual loss among them), handlers and
crash-safe checkpoints. Nothing outside training imports this package."""

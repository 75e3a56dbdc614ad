"""3D super-resolution bundle: RRDB-GAN generator, random-slice perceptual loss, MONAI engines and tools."""

__version__ = "0.1.0"

"""Per-scan self-supervised SR of thick-slice scans: one anisotropic scan is its own training set.

A clinical 2-D acquisition is sharp in-plane (about 1 mm) and coarse across slices (4-6 mm). Its in-plane axes,
blurred with the slice profile and decimated, give (LR, HR) pairs of the very anatomy, contrast and scanner to
be super-resolved (the SMORE / ECLARE idea); the generator learns them and is then applied across the slices.
Modules, in data-flow order: `geometry` (slice axis, factor, profile, slabs), `slab` (the generator on one-voxel
thick slabs at 2-D cost), `pairs` (training and held-out pairs), `fit` (training under a time budget),
`predict` (the volume and held-out pairs, with test-time augmentation), `workflow` (the bundle workflow:
load, fit, calibrate on held-out pairs, fall back to B-spline when not better, write the trust outputs).
"""

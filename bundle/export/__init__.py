"""Export a trained generator as a standalone bundle folder that model-zoo CI and MONAI Label accept.

    python scripts/export_bundle.py --ckpt models/model.pt --overlays "['configs/demo.json']" \
        --name mri_sr_demo --version 0.1.1 --results outputs/eval/summary.json \
        --perceptual_ckpt models/perceptual/model.pt                   # optional: the perceptual model beside it

writes dist/<name>/ with:
    configs/inference.json   inference.json + the overlays, so that it alone builds the trained network
    configs/train.json       train.json + the overlays (the ids MONAI's check_properties needs added if missing)
    configs/metadata.json    version set or bumped, a changelog entry
    configs/logging.conf, LICENSE, bundle/ (the code the configs reach by `_target_`), docs/ (model card + results)
    models/model.pt          the generator's state dict
    models/model.ts          TorchScript, made by `python -m monai.bundle ckpt_export` from the files above
    models/perceptual/       with --perceptual_ckpt: the perceptual model (same network, trained with the adversarial
                             and random-slice VGG19 terms) with its calibration and operator estimator; inference
                             takes it with `--ckpt_dir <bundle>/models/perceptual`, MONAI Label serves it as a
                             second task
    large_files.yml          sha256 of the model files (and the operator estimator); the url is left to the publisher
    monailabel/              the MONAI Label app (docs/monailabel), serving the folder it sits in

Why a merge: model-zoo CI and MONAI Label read configs/inference.json alone, without overlays, so a model
trained with an overlay (e.g. the demo's small generator) only loads once the overlay is folded in. An overlay
id is applied to a base config only where the base has that id (or its parent, for a nested id): training-only
ids of an overlay do not leak into inference.json. `bundle_root` stays relative (".").

The folder is built in a temporary sibling and renamed into place at the end; nothing half-written is left.
"""

from bundle.export.folder import export

__all__ = ["export"]

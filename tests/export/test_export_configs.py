"""The exported metadata describes the exported network, not the full-size default (the exported bundle's own
checks, MONAI's commands from another folder among them, are in test_export.py, which builds one export)."""

from __future__ import annotations

from bundle.export.configs import describe_network


def test_describe_network_replaces_the_default_size():
    config = {"num_blocks": 2, "features": 16, "growth": 8, "network_def": {"num_blocks": "@num_blocks"}}
    config["network_def"].update(features="@features", growth="@growth")
    text = describe_network("A 3D RRDB generator (10 residual-in-residual dense blocks, voxel-shuffle)", config)
    assert text == "A 3D RRDB generator (2 residual-in-residual dense blocks, 16 features, growth 8, voxel-shuffle)"

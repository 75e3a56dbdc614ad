"""A NIfTI whose header claims more voxels than the file can hold is refused in one line before any allocation."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import INFER, run_bundle

from bundle.adaptation.workflow import load_scan
from bundle.core.errors import DatasetError


def claims_4000_cubed(path):
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    content = header.binaryblock + b"\0" * 4 + np.ones(1000, np.float32).tobytes()
    path.write_bytes(gzip.compress(content) if path.name.endswith(".gz") else content)


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
def test_inference_and_adapting_refuse_a_header_larger_than_its_file(tmp_path, name):
    scan = tmp_path / name
    claims_4000_cubed(scan)
    proc = run_bundle("run", "inference", "--config_file", INFER, "--input_dir", str(scan), "--output_dir",
                      str(tmp_path / "o"), "--ckpt_path", str(tmp_path / "no_model.pt"))  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {scan}: the header claims 4000 x 4000 x 4000 voxels"), line
    assert not (tmp_path / "o").exists()
    with pytest.raises(DatasetError) as err:
        load_scan(scan)
    assert str(err.value) == line[len("error: ") :]

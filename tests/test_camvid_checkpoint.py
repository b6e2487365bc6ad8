"""The committed CamVid checkpoint still scores what benchmarks/RESULTS.md says (a regression check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fcnseg.checkpoint import load_checkpoint
from fcnseg.evaluate import run_eval

CHECKPOINT = Path(__file__).parent.parent / "benchmarks" / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"


def test_checkpoint_describes_itself():
    ck = load_checkpoint(CHECKPOINT)
    assert ck.model_name == "fcn8s_efficientnet_lite0" and len(ck.classes) == 11
    assert ck.normalization.name == "efficientnet_lite" and ck.train_state is None
    assert ck.config["dataset"] == "camvid" and ck.config["data_root"] == ""  # no absolute path inside
    assert CHECKPOINT.stat().st_size < 20 * 2**20


@pytest.mark.slow
def test_checkpoint_reproduces_its_val_mean_iu(data_root):
    # Recorded by benchmarks/camvid/run.sh: val mean IU 59.39, pixel accuracy 89.31 (whole split, 480x360).
    m = run_eval(CHECKPOINT, data_root=str(data_root / "camvid"), split="val", workers=2, progress=False)
    assert m.mean_iu == pytest.approx(0.5939, abs=2e-4)
    assert m.pixel_acc == pytest.approx(0.8931, abs=2e-4)

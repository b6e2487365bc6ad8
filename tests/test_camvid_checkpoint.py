"""The committed CamVid checkpoints still score what benchmarks/RESULTS.md says (a regression check).

``fcn8s_efficientnet_lite0_camvid.pt``: the small model the README's examples, the serving and speed benchmarks
use (30-minute budget). ``fcn8s_efficientnet_lite2_camvid.pt``: the best (the 2-hour budget, frozen batch norm;
weights stored as fp16 by ``report.py --half``, cast back to fp32 on load).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fcnseg.checkpoint import load_checkpoint
from fcnseg.config import EvalConfig
from fcnseg.evaluate import run_eval

HERE = Path(__file__).parent.parent / "benchmarks" / "camvid"
CHECKPOINT = HERE / "fcn8s_efficientnet_lite0_camvid.pt"
BEST = HERE / "fcn8s_efficientnet_lite2_camvid.pt"
# Recorded with `fcnseg eval --checkpoint <file> --split val` (whole split, 480x360): mean IU, pixel accuracy.
RECORDED = {CHECKPOINT: (0.5939, 0.8931), BEST: (0.6955, 0.9371)}


@pytest.mark.parametrize("path", list(RECORDED), ids=lambda p: p.stem)
def test_checkpoint_describes_itself(path):
    ck = load_checkpoint(path)
    assert ck.model_name == path.stem.removesuffix("_camvid") and len(ck.classes) == 11
    assert ck.normalization.name == "efficientnet_lite" and ck.train_state is None
    assert ck.config["dataset"] == "camvid" and ck.config["data_root"] == ""  # no absolute path inside
    assert path.stat().st_size < 20 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("path", list(RECORDED), ids=lambda p: p.stem)
def test_checkpoint_reproduces_its_val_mean_iu(data_root, path):
    mean_iu, pixel_acc = RECORDED[path]
    # fp32: the recorded numbers are; `--precision auto` runs bf16 on CPUs with AVX512-BF16/AMX (about 0.05 off)
    m = run_eval(EvalConfig(str(path), data_root=str(data_root / "camvid"), split="val", workers=2,
                            precision="fp32"), progress=False)
    assert m.mean_iu == pytest.approx(mean_iu, abs=2e-4)
    assert m.pixel_acc == pytest.approx(pixel_acc, abs=2e-4)

"""Boundary F-score and trimap IU (``fcnseg.metrics.BoundaryScores``) against hand-computed masks.

Conventions of every drawing below: rows top to bottom, columns left to right, ``(row, col)`` from 0; a
boundary pixel is a scored pixel with a 4-neighbour of another class or of the ignore label (never the image's
border); "within D" is Chebyshev distance, ``max(|drow|, |dcol|) <= D``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fcnseg.cli import build_parser, main, options_of
from fcnseg.config import EvalConfig
from fcnseg.errors import ConfigError, DataError
from fcnseg.metrics import BoundaryScores, boundary_scores, label_boundaries

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO / "benchmarks" / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"
V = 255  # the ignore label


def _grid(rows: list[str]) -> torch.Tensor:
    """A label map from strings of digits, ``v`` for the ignore label: ``["00v1", ...]``."""
    return torch.tensor([[V if ch == "v" else int(ch) for ch in row] for row in rows])


def _scores(pred: list[str], target: list[str], k: int, distances: tuple[int, ...]) -> BoundaryScores:
    b = BoundaryScores(k, distances)
    b.update(_grid(pred), _grid(target))
    return b


# A 4x4 square of class 1 on background 0 (truth), and a 4x2 rectangle (prediction): the prediction's right edge
# is 2 columns short.
SQUARE = ["000000",
          "011110",
          "011110",
          "011110",
          "011110",
          "000000"]
NARROW = ["000000",
          "011000",
          "011000",
          "011000",
          "011000",
          "000000"]


def test_boundary_pixels_are_each_regions_inner_rim():
    t = _grid(SQUARE)
    edge = label_boundaries(t, t != V)
    # class 1: the square's ring (16 - the inner 2x2 = 12); class 0: the background pixels 4-next to the square
    # (4 above, 4 below, 4 left, 4 right = 16; the corners (0,0) ... touch it diagonally only, the border is no edge)
    assert edge.int().tolist() == [[0, 1, 1, 1, 1, 0],
                                   [1, 1, 1, 1, 1, 1],
                                   [1, 1, 0, 0, 1, 1],
                                   [1, 1, 0, 0, 1, 1],
                                   [1, 1, 1, 1, 1, 1],
                                   [0, 1, 1, 1, 1, 0]]
    assert int((edge & (t == 1)).sum()) == 12 and int((edge & (t == 0)).sum()) == 16
    uniform = torch.zeros(3, 4, dtype=torch.long)
    assert not label_boundaries(uniform, uniform == 0).any()  # one class up to the border: no boundary at all


def test_hand_computed_boundary_precision_recall_and_f1():
    s = boundary_scores(_grid(NARROW), _grid(SQUARE), 2, distances=(1, 2))
    # D = 1, class 1. Predicted boundary: all 8 pixels of the 4x2 rectangle (it is 2 wide). Each is on the true
    # ring (column 1, or rows 1 and 4) or next to it ((2,2) and (3,2) touch (2,1)): P = 8/8. True ring: 12
    # pixels; the predicted ones dilated by 1 cover columns 0..3, so the 4 ring pixels in column 4 are missed:
    # R = 8/12. F = 2 * 1 * 2/3 / (1 + 2/3) = 4/5.
    # D = 1, class 0. Predicted boundary: (0,1) (0,2) (5,1) (5,2), column 0 rows 1-4, column 3 rows 1-4 = 12.
    # True: row 0 and row 5 columns 1-4, columns 0 and 5 rows 1-4 = 16. (2,3) and (3,3) are 2 from every true
    # one; (1,3) is diagonal to (0,3)... matched: P = 10/12. Dilated by 1 the predicted ones cover columns 0..4,
    # so the true column 5 (4 pixels) is missed: R = 12/16. F = 2 * 5/6 * 3/4 / (5/6 + 3/4) = 15/19.
    assert s.precision[0].tolist() == pytest.approx([10 / 12, 8 / 8])
    assert s.recall[0].tolist() == pytest.approx([12 / 16, 8 / 12])
    assert s.f1[0].tolist() == pytest.approx([15 / 19, 4 / 5])
    # D = 2: every pixel is within 2 of a boundary pixel of the other map, both classes: P = R = F = 1.
    assert s.f1[1].tolist() == [1.0, 1.0]
    b = _scores(NARROW, SQUARE, 2, (1, 2)).compute()
    assert b[1].bf_score == pytest.approx((15 / 19 + 4 / 5) / 2) and b[2].bf_score == 1.0
    assert b[1].class_bf_score == pytest.approx([15 / 19, 4 / 5])


def test_trimap_iu_is_the_iu_of_the_band_around_true_edges():
    truth = ["00001111"] * 6
    pred = ["10000111"] + ["00000111"] * 5  # the edge one column right, and a stray 1 at (0,0)
    b = _scores(pred, truth, 2, (1, 2)).compute()
    # True boundary pixels: columns 3 (class 0) and 4 (class 1). Band D = 1: columns 2..5, 6 rows = 24 pixels; the
    # stray (0,0) lies outside. Per row: truth 0 pred 0 at columns 2, 3; truth 1 pred 0 at 4; truth 1 pred 1 at 5.
    # n = [[12, 0], [6, 6]]: IU_0 = 12 / (12 + 18 - 12) = 2/3, IU_1 = 6 / (12 + 6 - 6) = 1/2; accuracy 18/24.
    assert b[1].trimap_pixels == 24
    assert b[1].class_trimap_iu == pytest.approx([2 / 3, 1 / 2]) and b[1].trimap_iu == pytest.approx(7 / 12)
    assert b[1].trimap_pixel_acc == pytest.approx(18 / 24)
    # Band D = 2: columns 1..6 = 36 pixels (the stray, in column 0, still outside); n = [[18, 0], [6, 12]]:
    # IU_0 = 18 / (18 + 24 - 18) = 3/4, IU_1 = 12 / (18 + 12 - 12) = 2/3; accuracy 30/36.
    assert b[2].trimap_pixels == 36
    assert b[2].class_trimap_iu == pytest.approx([3 / 4, 2 / 3]) and b[2].trimap_pixel_acc == pytest.approx(5 / 6)
    # The stray pixel has edges of its own. D = 1, class 0: predicted boundary = column 4 (6) + (0,1) and (1,0)
    # next to the stray = 8, of which column 4 is within 1 of the true column 3: P = 6/8, R = 6/6, F = 6/7.
    # Class 1: predicted column 5 (6) + the stray itself (0,0) = 7; P = 6/7, R = 1, F = 12/13.
    assert b[1].class_bf_score == pytest.approx([6 / 7, 12 / 13])


# VOC's case: a void band (ignore label) between the object (1) and the background (0); the object's true edge lies
# somewhere inside it.
VOID = ["000vv111"] * 6


def test_ignore_pixels_are_no_boundary_and_not_in_the_band_but_their_rims_are_edges():
    t = _grid(VOID)
    # Boundary pixels: the rims of the band, columns 2 and 5; the band's own pixels never.
    assert label_boundaries(t, t != V)[0].int().tolist() == [0, 0, 1, 0, 0, 1, 0, 0]
    # A prediction with its edge anywhere inside the band is perfect: what is predicted under the ignore label
    # never counts, and read on the scored pixels only, both maps have their edges at the band's rims.
    inside = _scores(["00001111"] * 6, VOID, 2, (1,)).compute()[1]
    assert inside.class_bf_score == [1.0, 1.0] and inside.trimap_iu == 1.0
    # Band D = 1: columns 1..6 less the ignored 3 and 4 = columns 1, 2, 5, 6: 24 pixels.
    assert inside.trimap_pixels == 24

    far = ["00000011"] * 6  # the edge 1 column past the band: column 5 predicted 0
    s = boundary_scores(_grid(far), t, 2, distances=(1, 2))
    # Predicted, on scored pixels: 0 at columns 0-2 and 5, 1 at 6-7. Class 0's predicted boundary: column 2 (next to
    # the band) and column 5 (next to the band and to class 1) = 12; true: column 2 = 6. D = 1 and 2: column 5 is 3
    # from column 2: P = 6/12, R = 6/6, F = 2 * 1/2 * 1 / (3/2) = 2/3. Class 1: predicted column 6, true column 5,
    # 1 apart: P = R = F = 1.
    assert s.precision[:, 0].tolist() == [0.5, 0.5] and s.recall[:, 0].tolist() == [1.0, 1.0]
    assert s.f1.flatten().tolist() == pytest.approx([2 / 3, 1.0, 2 / 3, 1.0])
    b = _scores(far, VOID, 2, (1, 2)).compute()
    assert b[1].bf_score == pytest.approx(5 / 6)
    # Trimap D = 1, columns 1, 2, 5, 6: truth 0 pred 0 at 1, 2; truth 1 pred 0 at 5; truth 1 pred 1 at 6, so
    # n = [[12, 0], [6, 6]]: IU = 2/3, 1/2. D = 2: columns 0-2, 5-7 (36): n = [[18, 0], [6, 12]]: IU = 3/4, 2/3.
    assert b[1].trimap_pixels == 24 and b[1].class_trimap_iu == pytest.approx([2 / 3, 1 / 2])
    assert b[2].trimap_pixels == 36 and b[2].class_trimap_iu == pytest.approx([3 / 4, 2 / 3])
    everything_ignored = _scores(["01"], ["vv"], 2, (1,)).compute()[1]
    assert math.isnan(everything_ignored.bf_score) and everything_ignored.trimap_pixels == 0


BLOCK = ["1100",
         "1100",
         "0000",
         "0000"]


def test_a_class_absent_on_one_side():
    zeros, twos = ["0000"] * 4, ["2222"] * 4
    # Predicted block of 1 on a truth of all 0. Class 1's predicted boundary: (0,1), (1,0), (1,1) ((0,0) has only
    # class-1 neighbours in the image); class 0's: (0,2), (1,2), (2,0), (2,1). The truth has no edge at all.
    s = boundary_scores(_grid(BLOCK), _grid(zeros), 3, distances=(1,))
    assert s.precision[0, :2].tolist() == [0.0, 0.0] and math.isnan(s.recall[0, 0]) and math.isnan(s.recall[0, 1])
    assert s.f1[0, :2].tolist() == [0.0, 0.0]  # every predicted edge is spurious: F = 0 (in the prediction only: 0)
    assert math.isnan(s.f1[0, 2])  # class 2 is in neither map: this image does not count for it
    # The other way round: a missed object. Class 1 has 3 true boundary pixels and no predicted one: R = 0, F = 0.
    s = boundary_scores(_grid(zeros), _grid(BLOCK), 3, distances=(1,))
    assert s.recall[0, :2].tolist() == [0.0, 0.0] and math.isnan(s.precision[0, 1]) and s.f1[0, :2].tolist() == [0, 0]
    # No edge on either side: F = 1 where both maps hold the class (they agree), 0 where one of them lacks it.
    assert boundary_scores(_grid(zeros), _grid(zeros), 3, distances=(1,)).f1[0, 0] == 1.0
    assert boundary_scores(_grid(zeros), _grid(twos), 3, distances=(1,)).f1[0].tolist()[::2] == [0.0, 0.0]

    b = BoundaryScores(3, (1,))
    b.update(_grid(BLOCK), _grid(zeros))  # class 0: F = 0; class 1 (predicted only): F = 0
    b.update(_grid(zeros), _grid(zeros))  # class 0: F = 1
    m = b.compute()[1]
    # class 0: (0 + 1) / 2 images; class 1: 0 / 1; class 2: in no image (nan, left out): BF = (1/2 + 0) / 2
    assert m.class_bf_score[:2] == [0.5, 0.0] and math.isnan(m.class_bf_score[2])
    assert m.bf_score == pytest.approx(1 / 4)
    # SIFT Flow's rule: class 1 is never in the ground truth, so it is left out as well.
    assert b.compute(present_only=True)[1].bf_score == pytest.approx(1 / 2)
    b.reset()
    assert b.images.sum() == 0 and b.trimap[0].mat.sum() == 0


def test_a_perfect_prediction_scores_one():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 8, 10), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    target[:, 10:14, 6:20] = V  # an ignored strip
    pred = target.clone()
    pred[pred == V] = 3  # what is predicted under the ignore label does not count
    b = BoundaryScores(5, (1, 3))
    b.update(pred, target)
    for m in b.compute().values():
        assert m.bf_score == 1.0 and m.class_bf_score == [1.0] * 5
        assert m.trimap_iu == 1.0 and m.trimap_pixel_acc == 1.0 and m.trimap_pixels > 0


def test_a_batch_scores_each_image_by_itself_and_reduce_is_a_no_op_alone():
    batch, one_by_one = BoundaryScores(2, (1,)), BoundaryScores(2, (1,))
    pred, target = torch.stack([_grid(NARROW), _grid(SQUARE)]), torch.stack([_grid(SQUARE), _grid(SQUARE)])
    batch.update(pred, target)
    for p, t in zip(pred, target, strict=True):
        one_by_one.update(p, t)
    batch.reduce()  # not distributed: unchanged
    assert batch.compute() == one_by_one.compute()
    # image 1: F = 15/19 (class 0), 4/5 (class 1); image 2 is perfect: F = 1, 1
    assert batch.compute()[1].class_bf_score == pytest.approx([(15 / 19 + 1) / 2, (4 / 5 + 1) / 2])


def test_refusals():
    with pytest.raises(ConfigError) as e:
        BoundaryScores(3, (2, 0))
    assert e.value.options == ("boundary",)
    with pytest.raises(ConfigError):
        BoundaryScores(3, ())
    with pytest.raises(DataError, match=r"target labels \[7\]"):
        BoundaryScores(3, (1,)).update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7))
    with pytest.raises(ValueError, match="prediction"):
        BoundaryScores(3, (1,)).update(torch.zeros(2, 2), torch.zeros(2, 3))


def test_boundary_flag_takes_several_distances(capsys):
    a = build_parser().parse_args(["eval", "--checkpoint", "a.pt", "--boundary", "1", "2", "5"])
    assert options_of(EvalConfig, a).boundary == (1, 2, 5)
    assert options_of(EvalConfig, build_parser().parse_args(["eval", "--checkpoint", "a.pt"])).boundary == ()
    assert main(["eval", "--checkpoint", str(CAMVID), "--boundary", "0", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith("fix: set --boundary to distances such as 1 2 5")


def test_eval_writes_boundary_scores(data_root, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", str(CAMVID), "--data", str(data_root / "camvid"), "--split", "val",
                 "--max-images", "2", "--workers", "0", "--device", "cpu", "--precision", "fp32",
                 "--boundary", "1", "2", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "D=1 " in printed and "D=2 " in printed and "BF@2" in printed and "tIU@1" in printed
    record = json.loads(out.read_text())
    assert sorted(record["boundary"]) == ["1", "2"]
    for d in ("1", "2"):
        b = record["boundary"][d]
        assert set(b) == {"bf_score", "class_bf_score", "trimap_iu", "class_trimap_iu", "trimap_pixel_acc",
                          "trimap_pixels"}
        assert len(b["class_bf_score"]) == len(b["class_trimap_iu"]) == len(record["classes"]) == 11
        values = [b["bf_score"], b["trimap_iu"], b["trimap_pixel_acc"], *b["class_bf_score"], *b["class_trimap_iu"]]
        assert all(0 <= v <= 1 for v in values if not math.isnan(v))
        assert 0 < b["trimap_pixels"] < record["pixels"]
    # a wider band holds more pixels and finds more edges matched
    assert record["boundary"]["1"]["trimap_pixels"] < record["boundary"]["2"]["trimap_pixels"]
    assert record["boundary"]["1"]["bf_score"] <= record["boundary"]["2"]["bf_score"]

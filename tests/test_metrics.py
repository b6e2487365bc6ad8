"""The paper's four metrics (section 5) against hand-computed confusion matrices."""

from __future__ import annotations

import math

import pytest
import torch

from fcnseg.metrics import ConfusionMatrix


def test_hand_computed_matrix():
    # target / prediction over 3 classes, one ignored pixel (255).
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 255])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2, 0, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # n = [[2,1,0],[0,1,1],[1,0,3]]
    assert cm.mat.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    m = cm.compute()
    # t = [3, 2, 4]; predicted = [3, 2, 4]; IU = 2/(3+3-2), 1/(2+2-1), 3/(4+4-3)
    assert m.pixels == 9
    assert m.pixel_acc == pytest.approx(6 / 9)
    assert m.mean_acc == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert m.mean_iu == pytest.approx((2 / 4 + 1 / 3 + 3 / 5) / 3)
    assert m.fw_iu == pytest.approx((3 * 2 / 4 + 2 * 1 / 3 + 4 * 3 / 5) / 9)
    assert m.class_iu == pytest.approx([0.5, 1 / 3, 0.6])


def test_absent_class_is_left_out_of_the_means():
    cm = ConfusionMatrix(4)  # class 3 never appears in target nor prediction; class 2 only predicted
    cm.update(torch.tensor([[0, 1], [2, 1]]), torch.tensor([[0, 1], [1, 1]]))
    m = cm.compute()
    assert math.isnan(m.class_iu[3]) and math.isnan(m.class_acc[3])
    assert m.class_iu[2] == 0.0 and math.isnan(m.class_acc[2])
    assert m.mean_iu == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m.mean_acc == pytest.approx((1 + 2 / 3) / 2)



def test_present_only_leaves_a_predicted_only_class_out_and_keeps_fw_iu():
    # SIFT Flow's rule: class 2 is only predicted (absent from the ground truth, like cow on SIFT Flow's test).
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([[0, 1], [2, 1]]), torch.tensor([[0, 1], [1, 1]]))
    m = cm.compute(present_only=True)
    # t = [1, 3, 0, 0]; IU_0 = 1/1, IU_1 = 2/(3+2-2) = 2/3; class 2 gets nan (not 0) and is left out.
    assert math.isnan(m.class_iu[2]) and math.isnan(m.class_iu[3])
    assert m.mean_iu == pytest.approx((1 + 2 / 3) / 2)
    assert m.fw_iu == pytest.approx((1 * 1 + 3 * 2 / 3) / 4)  # was nan: nan IU times zero frequency
    assert m.pixel_acc == pytest.approx(3 / 4)  # the pixel predicted as class 2 still counts as wrong

def test_accumulates_over_the_split_not_per_image():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))  # image 1
    cm.update(torch.tensor([1]), torch.tensor([1]))  # image 2
    m = cm.compute()
    # one matrix [[3,0],[1,1]]: IU0 = 3/4, IU1 = 1/2
    assert m.mean_iu == pytest.approx((3 / 4 + 1 / 2) / 2)
    cm.reset()
    assert cm.mat.sum() == 0


def test_ignore_label_is_configurable_and_bad_labels_raise():
    cm = ConfusionMatrix(2, ignore_index=11)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 11, 1]))
    assert cm.compute().pixels == 2
    with pytest.raises(ValueError, match=r"target labels \[7\]"):
        cm.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))


def test_reduce_is_a_sum_of_matrices():
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    b.update(torch.tensor([1, 1]), torch.tensor([1, 0]))
    a.reduce()  # not distributed: unchanged
    merged = ConfusionMatrix(2)
    merged.mat = a.mat + b.mat
    assert merged.mat.tolist() == [[1, 2], [0, 1]]

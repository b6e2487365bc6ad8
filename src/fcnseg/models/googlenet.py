"""FCN-GoogLeNet: BVLC GoogLeNet convolutionalised, the third row of the paper's Table 1 (arXiv:1411.4038, 3.1).

The paper adapts GoogLeNet (Szegedy et al., 2015) by keeping "only the final loss layer" and "discarding the
final average pooling layer": ``score_fr`` scores ``inception_5b`` (1024 channels, stride 32) directly, and
the auxiliary classifiers ``loss1/*``, ``loss2/*`` are not built. The trunk is the Caffe model the paper used,
``bvlc_googlenet``, layer for layer, so its caffemodel converts key by key (``fcnseg convert caffe``).

Module names are Caffe's layer names with ``/`` as the module separator: Caffe's ``inception_3a/3x3_reduce``
is ``encoder.inception_3a.3x3_reduce`` here, ``conv1/7x7_s2`` is ``encoder.conv1.7x7_s2``, ``pool1/norm1`` is
``encoder.pool1.norm1`` (PyTorch names cannot hold ``/`` or ``.``; a name may start with a digit, reached with
``getattr``). The weightless layers keep their Caffe names too (``conv1.relu_7x7``, ``inception_3a.pool``).

Where this differs from ``torchvision.models.googlenet`` (whose weights come from another training, not from
the Caffe model the paper used; its ``aux1``/``aux2`` heads are the ``loss1``/``loss2`` left out here):

* no batch norm: every convolution has a bias and is followed by ReLU (torchvision: conv, BN, ReLU);
* the "5x5" branch is a 5x5 convolution padded by 2 (torchvision's is 3x3, a known bug of its port);
* LRN (size 5, alpha 1e-4, beta 0.75) after ``pool1/3x3_s2`` and after ``conv2/3x3`` (torchvision: none);
* ``pool4/3x3_s2`` is 3x3 with stride 2 (torchvision's ``maxpool4`` is 2x2);
* ``conv1/7x7_s2`` is padded by :data:`CONV1_PAD` rather than 3 (below); input in Caffe's form (BGR, 0-255,
  mean subtracted), not torchvision's normalised RGB.

Every pooling rounds up (Caffe's ceil mode), as torchvision's ``ceil_mode=True`` does too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .vgg import _ch, _Trunk

__all__ = ["GoogLeNetTrunk", "Inception", "CONV1_PAD", "INCEPTIONS"]

CONV1_PAD = 18
"""Padding of ``conv1/7x7_s2``: the least for which the 32x upsampled scores cover every input size.

The reference pads VGG's and AlexNet's first layer by 100 so that the 7x7 (6x6) ``fc6`` has a window for any
input. GoogLeNet without its average pooling has no such layer; the trunk maps x to x/32 + (pad - 33)/32, so
``upscore`` (kernel 63, derived by the head) ends at x + pad - 2 and crops by pad - 2. Caffe's own pad of 3
leaves inputs of 1 to 30 pixels short. 18 is the least pad that covers every size from 1 pixel up: the
stride-32 output then has exactly ceil(n / 32) positions for n input pixels, ``upscore`` returns
32 * ceil(n / 32) + 31 >= n + 31, and the crop window [16, 16 + n) fits with at least 15 to spare
(tests/test_googlenet.py checks every size from 1 to 300). It costs 15% more pixels at 500x500, where 100 would
cost 96%.
"""

INCEPTIONS: tuple[tuple[str, tuple[int, ...]], ...] = (
    # (Caffe name, (1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj) outputs); () is a 3x3 stride-2 max pooling.
    ("inception_3a", (64, 96, 128, 16, 32, 32)),
    ("inception_3b", (128, 128, 192, 32, 96, 64)),
    ("pool3", ()),
    ("inception_4a", (192, 96, 208, 16, 48, 64)),
    ("inception_4b", (160, 112, 224, 24, 64, 64)),
    ("inception_4c", (128, 128, 256, 24, 64, 64)),
    ("inception_4d", (112, 144, 288, 32, 64, 64)),
    ("inception_4e", (256, 160, 320, 32, 128, 128)),
    ("pool4", ()),
    ("inception_5a", (256, 160, 320, 32, 128, 128)),
    ("inception_5b", (384, 192, 384, 48, 128, 128)),
)
"""bvlc_googlenet's inception modules and the poolings between them, in order (Szegedy et al., table 1)."""

# Each branch's layers in order; concatenated on channels in this order, as Caffe's inception_*/output.
_BRANCHES = (
    ("1x1", "relu_1x1"),
    ("3x3_reduce", "relu_3x3_reduce", "3x3", "relu_3x3"),
    ("5x5_reduce", "relu_5x5_reduce", "5x5", "relu_5x5"),
    ("pool", "pool_proj", "relu_pool_proj"),
)


def _named(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


def _relu() -> nn.ReLU:
    return nn.ReLU(inplace=True)


def _pool_3x3_s2() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, 2, ceil_mode=True)


def _lrn() -> nn.LocalResponseNorm:
    # Caffe's LRN across channels: a / (1 + alpha / size * sum a^2) ^ beta, the same formula as PyTorch's.
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


class Inception(nn.Module):
    """One inception module (Szegedy et al., figure 2b): four branches over the same input, concatenated.

    Children carry Caffe's names after the module's own (``1x1``, ``3x3_reduce``, ``3x3``, ``5x5_reduce``,
    ``5x5``, ``pool``, ``pool_proj`` and their ReLUs ``relu_1x1`` ...). Every branch keeps H x W (a 3x3
    convolution padded by 1, a 5x5 by 2, a 3x3 stride-1 max pooling by 1), so all four share one coordinate map,
    which :meth:`branches` lets ``geometry`` check and compose; the 5x5 branch sets the receptive field.

    Args:
        in_channels: input channels.
        channels: outputs of ``1x1``, ``3x3_reduce``, ``3x3``, ``5x5_reduce``, ``5x5``, ``pool_proj``.

    Attributes:
        out_channels: ``1x1 + 3x3 + 5x5 + pool_proj`` outputs.
    """

    def __init__(self, in_channels: int, channels: Sequence[int]):
        super().__init__()
        c1, c3r, c3, c5r, c5, cp = channels
        layers = {
            "1x1": nn.Conv2d(in_channels, c1, 1), "relu_1x1": _relu(),
            "3x3_reduce": nn.Conv2d(in_channels, c3r, 1), "relu_3x3_reduce": _relu(),
            "3x3": nn.Conv2d(c3r, c3, 3, padding=1), "relu_3x3": _relu(),
            "5x5_reduce": nn.Conv2d(in_channels, c5r, 1), "relu_5x5_reduce": _relu(),
            "5x5": nn.Conv2d(c5r, c5, 5, padding=2), "relu_5x5": _relu(),
            "pool": nn.MaxPool2d(3, 1, padding=1, ceil_mode=True),
            "pool_proj": nn.Conv2d(in_channels, cp, 1), "relu_pool_proj": _relu(),
        }
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.out_channels = c1 + c3 + c5 + cp

    def branches(self) -> list[list[nn.Module]]:
        """The four branches' layers, each in order, in the order of concatenation."""
        return [[self._modules[n] for n in names] for names in _BRANCHES]

    def forward(self, x: Tensor) -> Tensor:
        outs = []
        for branch in self.branches():
            y = x
            for layer in branch:  # the first layer of each (a convolution or the pooling) leaves x intact
                y = layer(y)
            outs.append(y)  # (N, C_branch, H, W)
        return torch.cat(outs, dim=1)  # (N, out_channels, H, W)


class GoogLeNetTrunk(_Trunk):
    """bvlc_googlenet up to ``inception_5b``, without its average pooling and classifier; returns ``fc7``.

    ``fc7`` is the head's name for the feature it scores (:class:`~fcnseg.models.FCN`): here ``inception_5b``'s
    1024 channels at stride 32 after ``pool5/drop_7x7_s1`` (dropout 0.4, which Caffe applies after the average
    pooling that FCN-GoogLeNet discards). Top-level modules are Caffe's layer groups in order: ``conv1``,
    ``pool1``, ``conv2``, ``pool2``, ``inception_3a`` ... ``inception_5b``, ``pool5``.

    Args:
        in_channels: image channels.
        pad: padding of ``conv1/7x7_s2`` (:data:`CONV1_PAD`; Caffe's classifier: 3).
        width: channel multiplier; 1.0 is bvlc_googlenet, smaller values make tiny test models.
        dropout: ``pool5/drop_7x7_s1``'s rate (0.4 in bvlc_googlenet).
    """

    outputs = {"fc7": "pool5"}

    def __init__(self, in_channels: int = 3, *, pad: int = CONV1_PAD, width: float = 1.0, dropout: float = 0.4):
        super().__init__()
        c64, c192 = _ch(64, width), _ch(192, width)
        self._add("conv1", _named(("7x7_s2", nn.Conv2d(in_channels, c64, 7, stride=2, padding=pad)),
                                  ("relu_7x7", _relu())))
        self._add("pool1", _named(("3x3_s2", _pool_3x3_s2()), ("norm1", _lrn())))
        self._add("conv2", _named(("3x3_reduce", nn.Conv2d(c64, c64, 1)), ("relu_3x3_reduce", _relu()),
                                  ("3x3", nn.Conv2d(c64, c192, 3, padding=1)), ("relu_3x3", _relu()),
                                  ("norm2", _lrn())))
        self._add("pool2", _named(("3x3_s2", _pool_3x3_s2())))
        c_in = c192
        for name, channels in INCEPTIONS:
            if not channels:
                self._add(name, _named(("3x3_s2", _pool_3x3_s2())))
                continue
            block = Inception(c_in, [_ch(c, width) for c in channels])
            self._add(name, block)
            c_in = block.out_channels
        self._add("pool5", _named(("drop_7x7_s1", nn.Dropout(dropout))))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """bvlc_googlenet's initialisation (its prototxt's fillers): Caffe's "xavier", uniform in
        +-sqrt(3 / fan_in), and biases 0.2, so that no ReLU starts dead (converted weights replace both)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                nn.init.uniform_(m.weight, -(3 / fan_in) ** 0.5, (3 / fan_in) ** 0.5)
                nn.init.constant_(m.bias, 0.2)

    @property
    def out_channels(self) -> dict[str, int]:
        return {feat: [m for m in self.path(feat) if isinstance(m, Inception)][-1].out_channels
                for feat in self.outputs}

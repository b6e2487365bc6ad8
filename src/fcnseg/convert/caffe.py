"""Caffe ``.caffemodel`` files -> fcnseg checkpoints, without Caffe and without compiling caffe.proto.

A caffemodel is a serialised ``caffe.NetParameter`` (protocol buffers, proto2). Weights need only a few of its
fields, so a small wire-format decoder reads those and skips the rest. Field numbers are BVLC Caffe's
(``src/caffe/proto/caffe.proto``)::

    NetParameter      name = 1, layers = 2 (V1LayerParameter, deprecated), layer = 100 (LayerParameter)
    LayerParameter    name = 1, type = 2 (string), blobs = 7
    V1LayerParameter  layer = 1 (V0LayerParameter), name = 4, type = 5 (enum LayerType), blobs = 6
    V0LayerParameter  name = 1, type = 2 (string), blobs = 50
    BlobProto         num = 1, channels = 2, height = 3, width = 4 (the deprecated 4-D shape),
                      data = 5 (packed float), diff = 6, shape = 7 (BlobShape), double_data = 8,
                      double_diff = 9
    BlobShape         dim = 1 (packed int64)

Layers map onto the model by name (fcnseg keeps the reference's layer names): ``conv1_1`` ->
``encoder.conv1_1.weight`` / ``.bias``, ``score_fr`` -> ``score_fr.*`` and so on. The reference's
``fcn32s/16s/8s-heavy-pascal``, ``fcn8s-atonce-pascal`` and ``fcn-alexnet-pascal`` convert whole. ImageNet
classifiers (``VGG_ILSVRC_16_layers``, CaffeNet) give the trunk: fc6/fc7 reshaped from InnerProduct to
convolutions (arXiv:1411.4038, section 3.1), fc8 dropped, and the head left as the paper initialises it
(section 4.3: zero scores; section 3.3: bilinear upsampling).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..models import FCN, AlexNetTrunk, BilinearUpsample, VGG16Trunk, bilinear_kernel
from ..normalization import CAFFE_VGG
from ._common import VOC_CLASSES, ConvertError, PathLike, build_target, write_checkpoint

__all__ = ["read_caffemodel", "convert_caffemodel", "CaffeLayer", "read_caffe_layers"]

# ---------------------------------------------------------------------------------------------------------
# Protocol buffer wire format (https://protobuf.dev/programming-guides/encoding/): every field is a varint
# key (field number << 3 | wire type) followed by a varint, 8 bytes, a varint length and that many bytes,
# or 4 bytes.

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


class _WireError(ValueError):
    """Bytes that do not decode as the expected message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode the varint at ``pos``; returns (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _WireError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _WireError("varint longer than 10 bytes")


def _signed(v: int) -> int:
    """int64 from its varint (negative values are encoded in 10 bytes, two's complement)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of every field of one message, in order; values are not copied."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if number == 0:
            raise _WireError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_FIXED64, _LEN, _FIXED32):
            if wire == _LEN:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire == _FIXED64 else 4
            if pos + size > end:
                raise _WireError(f"field {number} runs past the end of its message")
            value, pos = buf[pos : pos + size], pos + size
        else:  # groups (3, 4) are deprecated and caffe.proto uses none
            raise _WireError(f"unsupported wire type {wire} for field {number}")
        yield number, wire, value


def _fixed_bytes(wire: int, value: int | memoryview, size: int, what: str) -> memoryview:
    """The little-endian bytes of a repeated float (size 4) or double (size 8), packed or not.

    Packed, one length-delimited run holds many values; unpacked, each value is its own fixed-width field.
    Both are the values' bytes in order, so the runs simply concatenate.
    """
    fixed = _FIXED32 if size == 4 else _FIXED64
    if not isinstance(value, memoryview) or wire not in (_LEN, fixed) or len(value) % size:
        raise _WireError(f"malformed {what} field")
    return value


def _varints(value: int | memoryview) -> list[int]:
    """A repeated int64 field occurrence, packed (a run of varints) or not (one varint)."""
    if isinstance(value, int):
        return [_signed(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(_signed(v))
    return out


def _str(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        raise _WireError("expected a string")
    return bytes(value).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------------
# caffe.proto's messages, the weight-carrying subset.

_BLOB_LEGACY_DIMS = {1: 0, 2: 1, 3: 2, 4: 3}  # BlobProto num, channels, height, width -> axis


def _blob(buf: memoryview) -> np.ndarray:
    """A ``BlobProto`` as a float32 array of its shape (Caffe's ``Blob::FromProto`` rules)."""
    legacy: dict[int, int] = {}
    dims: list[int] = []
    floats: list[memoryview] = []
    doubles: list[memoryview] = []
    for number, wire, value in _fields(buf):
        if number in _BLOB_LEGACY_DIMS and wire == _VARINT:
            legacy[number] = _signed(int(value))
        elif number == 5:
            floats.append(_fixed_bytes(wire, value, 4, "data"))
        elif number == 8:
            doubles.append(_fixed_bytes(wire, value, 8, "double_data"))
        elif number == 7 and isinstance(value, memoryview):  # BlobShape
            for n, _, v in _fields(value):
                if n == 1:
                    dims += _varints(v)
        # diff (6) and double_diff (9) are gradients, not weights.
    # As in Caffe: any deprecated field makes the shape 4-D (num, channels, height, width), unset ones 0.
    shape = tuple(legacy.get(n, 0) for n in _BLOB_LEGACY_DIMS) if legacy else tuple(dims)
    # bytearray: one copy, writable, and no view pins the whole file in memory.
    if floats:
        arr = np.frombuffer(bytearray().join(floats), dtype="<f4").astype(np.float32, copy=False)
    else:
        arr = np.frombuffer(bytearray().join(doubles), dtype="<f8").astype(np.float32)
    if arr.size != math.prod(shape):
        raise _WireError(f"shape {shape} holds {math.prod(shape)} values but the blob has {arr.size}")
    return arr.reshape(shape)


class CaffeLayer(NamedTuple):
    """One layer of a caffemodel: its name, its type (a string; V1 enums are named) and its weight blobs."""

    name: str
    type: str
    blobs: list[np.ndarray]


# (name, type, blobs) field numbers of each generation of layer message.
_LAYER = (1, 2, 7)
_V1_LAYER = (4, 5, 6)
_V0_LAYER = (1, 2, 50)
# Names of V1LayerParameter.LayerType values (for messages; the mapping itself goes by layer name).
_V1_TYPES = {
    0: "None", 1: "Accuracy", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout", 12: "ImageData",
    14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU", 20: "Softmax", 21: "SoftmaxWithLoss",
    22: "Split", 25: "Eltwise", 39: "Deconvolution",
}


def _layer(buf: memoryview, numbers: tuple[int, int, int]) -> CaffeLayer:
    name_f, type_f, blobs_f = numbers
    name, kind = "", ""
    raw: list[memoryview] = []
    v0: CaffeLayer | None = None
    for number, wire, value in _fields(buf):
        if number == name_f:
            name = _str(value)
        elif number == type_f:
            kind = _str(value) if wire == _LEN else _V1_TYPES.get(int(value), f"V1 type {value}")
        elif number == blobs_f and isinstance(value, memoryview):
            raw.append(value)
        elif numbers == _V1_LAYER and number == 1 and isinstance(value, memoryview):
            v0 = _layer(value, _V0_LAYER)  # a V1 layer still wrapping its V0 definition
    blobs = []
    for i, b in enumerate(raw):
        try:
            blobs.append(_blob(b))
        except _WireError as e:
            raise _WireError(f"layer {name!r} blob {i}: {e}") from e
    if v0 is not None:
        name, kind, blobs = name or v0.name, kind or v0.type, blobs or v0.blobs
    return CaffeLayer(name, kind, blobs)


def read_caffe_layers(path: PathLike) -> list[CaffeLayer]:
    """Every layer of the caffemodel at ``path``, in file order (``layer`` and deprecated ``layers`` alike).

    Raises :class:`ConvertError`, naming the file, when it does not decode as a ``NetParameter`` with layers.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path} does not exist")
    layers: list[CaffeLayer] = []
    try:
        for number, _, value in _fields(memoryview(path.read_bytes())):
            if number == 100 and isinstance(value, memoryview):
                layers.append(_layer(value, _LAYER))
            elif number == 2 and isinstance(value, memoryview):
                layers.append(_layer(value, _V1_LAYER))
    except _WireError as e:
        raise ConvertError(f"{path} is not a readable Caffe model (binary NetParameter): {e}") from e
    if not layers:
        raise ConvertError(f"{path} holds no Caffe layers: not a .caffemodel (a .prototxt is text, "
                           "without weights)")
    return layers


def read_caffemodel(path: PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name -> its blobs in order (float32, in the blob's shape), for every layer of a caffemodel.

    Layers without weights (ReLU, pooling, crop...) map to ``[]``. Old-format blobs keep their 4-D
    (num, channels, height, width) shape, e.g. a bias is (1, 1, 1, N). Raises :class:`ConvertError`.
    """
    return _by_name(read_caffe_layers(path), Path(path))


def _by_name(layers: list[CaffeLayer], path: Path) -> dict[str, list[np.ndarray]]:
    # Train and test variants of a layer may share a name; only one of them may carry weights.
    out: dict[str, list[np.ndarray]] = {}
    for layer in layers:
        if layer.blobs and out.get(layer.name):
            raise ConvertError(f"{path}: two layers named {layer.name!r} hold weights")
        if layer.blobs or layer.name not in out:
            out[layer.name] = layer.blobs
    return out


# ---------------------------------------------------------------------------------------------------------
# Caffe layers -> fcnseg model.

# Layers of ImageNet classifiers with no place in an FCN: fc8 is the 1000-way classifier, which the FCN
# replaces by score_fr (section 4.1).
_DROPPED = frozenset({"fc8"})
# InnerProduct in the ImageNet classifiers, convolutions in the FCNs.
_FC_LAYERS = frozenset({"fc6", "fc7"})


def _strip(shape: Sequence[int]) -> tuple[int, ...]:
    """Drop leading 1s: the padding of old 4-D blobs, e.g. a bias (1, 1, 1, N)."""
    s = tuple(shape)
    while s and s[0] == 1:
        s = s[1:]
    return s


def _fit(blob: np.ndarray, shape: Sequence[int], layer: str) -> np.ndarray | None:
    """``blob`` in ``shape`` when it holds that parameter, else None."""
    want = tuple(shape)
    if blob.shape == want or _strip(blob.shape) == _strip(want):
        return blob.reshape(want)
    if layer in _FC_LAYERS and len(want) == 4 and _strip(blob.shape) == (want[0], math.prod(want[1:])):
        # InnerProduct (out, C*H*W) -> convolution (out, C, H, W): Caffe flattens its input C, H, W row-major,
        # the order of a convolution kernel, so the same numbers compute the same function (section 3.1).
        return blob.reshape(want)
    return None


def _check_bilinear(blobs: list[np.ndarray], up: BilinearUpsample, where: str, model: str) -> None:
    """A caffemodel's deconvolution must be the fixed bilinear kernel the frozen model applies."""
    c, k = up.channels, up.kernel_size
    w = _fit(blobs[0], (c, c, k, k), "") if len(blobs) == 1 else None
    if w is None:
        raise ConvertError(f"{where} has blobs {[b.shape for b in blobs]}; {model} upsamples with one "
                           f"bias-free ({c}, {c}, {k}, {k}) kernel")
    want = np.zeros((c, c, k, k), np.float32)
    want[range(c), range(c)] = bilinear_kernel(k).numpy()
    err = float(np.abs(w - want).max())
    if err > 1e-6:
        raise ConvertError(f"{where} is not the bilinear kernel that {model}'s frozen upsampling applies "
                           f"(largest difference {err:.3g}); keep the learned kernel with model_args "
                           "learnable_upsampling=True")


def _check_scale(blobs: list[np.ndarray], scale: float, where: str, model: str) -> None:
    """The at-once FCN-8s scales its skips by constants (Scale layers with lr_mult 0); they must agree."""
    if len(blobs) != 1 or not np.allclose(blobs[0], scale, rtol=1e-6, atol=0):
        got = ", ".join(f"{float(b.min()):g}..{float(b.max()):g}" for b in blobs)
        raise ConvertError(f"{where} scales its skip by {got}; {model} scales it by {scale:g} "
                           "(the reference's at-once FCN-8s is fcn8s_atonce)")


def _load(net: FCN, layers: Mapping[str, list[np.ndarray]], types: Mapping[str, str], model: str, src: Path
          ) -> None:
    """Copy ``layers`` into ``net`` by name, checking every weight has exactly one place and vice versa."""
    if not isinstance(net.encoder, VGG16Trunk | AlexNetTrunk):
        raise ConvertError(f"model {model!r} has no Caffe trunk (VGG16 or AlexNet); {src} cannot "
                           "initialise it")
    # Caffe layer name -> [(state-dict key, tensor)] in Caffe's blob order: weight, then bias.
    targets: dict[str, list[tuple[str, Tensor]]] = {}
    for key, t in net.state_dict().items():
        module = key.rpartition(".")[0]
        targets.setdefault(module.removeprefix("encoder."), []).append((key, t))
    frozen = {n: m for n, m in net.named_children() if isinstance(m, BilinearUpsample) and not m.learnable}
    scales = {f"scale_{p}": s for p, s in zip(("pool4", "pool3"), net.skip_scales, strict=True)
              if hasattr(net, f"score_{p}")}
    present = {n for n, b in layers.items() if b}

    # An FCN caffemodel (it has score_fr) must fill the whole model; an ImageNet classifier fills the trunk
    # and the head keeps the paper's initialisation.
    trunk = [n for n in targets if not n.startswith(("score", "upscore"))]
    required = list(targets) if any(n.startswith("score_fr") for n in present) else trunk  # _sem, _geo too
    missing = [n for n in required if n not in present]
    if missing:
        hint = "" if set(missing) & set(trunk) else (
            "; a coarser FCN initialises a finer one by staged training (section 4.2): convert into the "
            "model the file was trained as, then train with init_from")
        raise ConvertError(f"{src} lacks layers that {model} needs: {', '.join(missing)}{hint}")
    known = [*targets, *frozen, *scales]
    unknown = [n for n in layers if n in present and n not in known and n not in _DROPPED]
    if unknown:
        desc = ", ".join(f"{n} ({types.get(n, '?')}, {len(layers[n])} blob{'s' * (len(layers[n]) != 1)})"
                         for n in unknown)
        raise ConvertError(f"{src} has layers with weights that {model} has no place for: {desc}. {model}'s "
                           f"layers: {', '.join(known)}")

    state = dict(net.state_dict())
    for name, blobs in layers.items():
        where = f"{src}: layer {name!r}"
        if not blobs:
            continue
        if name in frozen:
            _check_bilinear(blobs, frozen[name], where, model)
        elif name in scales:
            _check_scale(blobs, scales[name], where, model)
        elif name in targets:
            params = targets[name]
            if len(blobs) != len(params):
                raise ConvertError(f"{where} has {len(blobs)} blobs; {model} expects {len(params)} "
                                   f"({', '.join(k for k, _ in params)})")
            for i, ((key, t), blob) in enumerate(zip(params, blobs, strict=True)):
                w = _fit(blob, t.shape, name)
                if w is None:
                    raise ConvertError(f"{where} blob {i} has shape {blob.shape}; {model} expects "
                                       f"{tuple(t.shape)} for {key}")
                state[key] = torch.from_numpy(w)
    net.load_state_dict(state)


def convert_caffemodel(
    src: PathLike,
    dst: PathLike,
    *,
    model: str,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> Path:
    """Write an fcnseg checkpoint at ``dst`` holding ``model`` with the weights of the caffemodel ``src``.

    Args:
        src: a binary ``.caffemodel`` (new ``layer`` or old ``layers`` format).
        dst: the checkpoint to write (atomically).
        model: the registry name the file's net corresponds to: ``fcn32s``/``fcn16s``/``fcn8s`` for the
            reference's staged nets, ``fcn8s_atonce``, ``fcn_alexnet``; any VGG16 FCN for
            ``VGG_ILSVRC_16_layers``, ``fcn_alexnet`` for CaffeNet.
        num_classes: default: ``score_fr``'s outputs, or 21 (PASCAL VOC) for an ImageNet classifier.
        classes: class names (default: VOC's for 21 classes, ``class_i`` otherwise).
        model_args: further factory arguments (``learnable_upsampling``, ``width`` ...), recorded in the file.
            With frozen upsampling (the default, as in the reference) the file's deconvolutions must be the
            bilinear kernel; learnable, they are loaded.

    The checkpoint records Caffe's input contract (BGR, 0-255, VGG mean pixel subtracted: ``CAFFE_VGG``).
    Returns ``dst`` as a Path. Raises :class:`ConvertError`, naming the file and the layer, for an unknown
    layer with weights, a missing layer or a shape that does not fit.
    """
    src = Path(src)
    net_layers = read_caffe_layers(src)
    layers = _by_name(net_layers, src)
    if num_classes is None:
        # score_fr, or a multi-task net's first head (the reference's SIFT Flow nets: score_fr_sem)
        score = next((b for n, b in layers.items() if n.startswith("score_fr") and b), None)
        num_classes = int(score[0].shape[0]) if score else len(VOC_CLASSES)
    net, args = build_target(model, num_classes, model_args)
    _load(net, layers, {layer.name: layer.type for layer in net_layers}, model, src)
    return write_checkpoint(dst, net, model, args, classes, CAFFE_VGG, src, "caffemodel")

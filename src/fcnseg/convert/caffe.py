"""Caffe ``.caffemodel`` files -> fcnseg checkpoints, without Caffe: protobuf parses them.

A caffemodel is a serialised ``caffe.NetParameter`` (protocol buffers, proto2). :mod:`.caffe_proto` declares
the messages that carry weights, with BVLC Caffe's field numbers, and ``NetParameter.ParseFromString`` reads
the file; every other field is skipped as unknown. Both generations of layer list are read: ``layer``
(``LayerParameter``, type a string) and the deprecated ``layers`` (``V1LayerParameter``, type an enum, named
here as Caffe's upgrade names it; a V1 layer may still wrap its ``V0LayerParameter``). A blob's shape is
``shape.dim``, or, when any of the deprecated ``num``, ``channels``, ``height``, ``width`` is set, that 4-D
shape (Caffe's ``Blob::FromProto`` rule); its values are ``data`` (float) or ``double_data``.

Memory: the parsed message holds the weights once and the float32 arrays once more; the file's bytes are
released as parsing returns (benchmarks/caffe_import.py: peak RSS on a VGG16-size file in RESULTS.md).

Layers map onto the model by name (fcnseg keeps the reference's layer names): ``conv1_1`` ->
``encoder.conv1_1.weight`` / ``.bias``, ``score_fr`` -> ``score_fr.*`` and so on; a ``/`` in a Caffe name is
the module separator (GoogLeNet's ``inception_3a/3x3`` -> ``encoder.inception_3a.3x3.*``). The reference's
``fcn32s/16s/8s-heavy-pascal``, ``fcn8s-atonce-pascal`` and ``fcn-alexnet-pascal`` convert whole. ImageNet
classifiers (``VGG_ILSVRC_16_layers``, CaffeNet, ``bvlc_googlenet``) give the trunk: fc6/fc7 reshaped from
InnerProduct to convolutions (arXiv:1411.4038, section 3.1), the classifier (fc8, GoogLeNet's
``loss3/classifier``) and GoogLeNet's auxiliary classifiers (``loss1/*``, ``loss2/*``) dropped, and the head
left as the paper initialises it (section 4.3: zero scores; section 3.3: bilinear upsampling).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..errors import EXTRAS, MissingDependency
from ..models import FCN, AlexNetTrunk, BilinearUpsample, GoogLeNetTrunk, VGG16Trunk, bilinear_kernel
from ..normalization import CAFFE_VGG
from ._common import VOC_CLASSES, ConvertError, PathLike, build_target, write_checkpoint

try:
    from google.protobuf.message import DecodeError, Message
except ModuleNotFoundError:  # the `convert` extra is missing: one line naming it
    raise MissingDependency("protobuf", EXTRAS["protobuf"], needed_for="fcnseg convert caffe") from None

from .caffe_proto import V1_TYPE_NAMES, caffe_messages  # needs protobuf, checked above

__all__ = ["read_caffemodel", "convert_caffemodel", "CaffeLayer", "read_caffe_layers"]

_LEGACY_DIMS = ("num", "channels", "height", "width")
_NOT_CAFFE = "give the binary .caffemodel (the weights), not a .prototxt or a file of another format"
_PICK_MODEL = "set {model} (and {model_args} such as width) to the net the file was trained as"
_FIX_CLASSES = "leave {num_classes} unset (the file's score_fr gives it), or set {model} to the file's net"


class CaffeLayer(NamedTuple):
    """One layer of a caffemodel: its name, its type (a string; V1 enums are named) and its weight blobs."""

    name: str
    type: str
    blobs: list[np.ndarray]


def _blob(bp: Message, where: str) -> np.ndarray:
    """A ``BlobProto`` as a float32 array of its shape (Caffe's ``Blob::FromProto`` rules)."""
    if any(bp.HasField(d) for d in _LEGACY_DIMS):  # any deprecated field makes the shape 4-D, unset ones 0
        shape = tuple(int(getattr(bp, d)) for d in _LEGACY_DIMS)
    else:
        shape = tuple(bp.shape.dim)
    # diff and double_diff (gradients, not weights) are not declared: the parser skipped them.
    arr = np.array(bp.data if len(bp.data) else bp.double_data, dtype=np.float32)
    if arr.size != math.prod(shape):
        raise ConvertError(f"{where}: shape {shape} holds {math.prod(shape)} values but the blob has {arr.size}",
                           fix="the file is damaged: download it again")
    return arr.reshape(shape)


def _layer(layer: Message, v1: bool, path: Path) -> CaffeLayer:
    """A ``LayerParameter`` (``v1`` False) or ``V1LayerParameter`` as a :class:`CaffeLayer`."""
    name, kind, blobs = layer.name, layer.type, layer.blobs
    if v1:
        kind = V1_TYPE_NAMES.get(kind, f"V1 type {kind}") if layer.HasField("type") else ""
        if layer.HasField("layer"):  # a V1 layer still wrapping its V0 definition
            v0 = layer.layer
            name, kind, blobs = name or v0.name, kind or v0.type, blobs or v0.blobs
    return CaffeLayer(name, kind, [_blob(b, f"{path}: layer {name!r} blob {i}") for i, b in enumerate(blobs)])


def read_caffe_layers(path: PathLike) -> list[CaffeLayer]:
    """Every layer of the caffemodel at ``path``: the deprecated ``layers``, then ``layer``, each in file order.

    Raises :class:`ConvertError`, naming the file, when it does not parse as a ``NetParameter`` with layers.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path} does not exist", fix="check the path of the .caffemodel", path=path)
    net = caffe_messages()["NetParameter"]()
    try:
        net.ParseFromString(path.read_bytes())  # the bytes are freed as soon as the parse returns
    except DecodeError as e:
        raise ConvertError(f"{path} is not a readable Caffe model (binary NetParameter): truncated or another "
                           f"format ({e})", fix=_NOT_CAFFE, path=path) from e
    layers = [_layer(layer, True, path) for layer in net.layers] + [_layer(layer, False, path) for layer in net.layer]
    if not layers:
        raise ConvertError(f"{path} holds no Caffe layers: not a .caffemodel (a .prototxt is text, without "
                           "weights)", fix=_NOT_CAFFE, path=path)
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
            raise ConvertError(f"{path}: two layers named {layer.name!r} hold weights", path=path,
                               fix="give the file Caffe's solver saved, one weighted layer a name")
        if layer.blobs or layer.name not in out:
            out[layer.name] = layer.blobs
    return out


# ---------------------------------------------------------------------------------------------------------
# Caffe layers -> fcnseg model.

# Layers of ImageNet classifiers with no place in an FCN: fc8 (GoogLeNet: loss3/classifier) is the 1000-way
# classifier, which the FCN replaces by score_fr (section 4.1); GoogLeNet's auxiliary classifiers (loss1/*,
# loss2/*) are not built: the paper uses "only the final loss layer" (Table 1).
_DROPPED = frozenset({"fc8", "loss3/classifier"})
_DROPPED_PREFIXES = ("loss1/", "loss2/")
# InnerProduct in the ImageNet classifiers, convolutions in the FCNs.
_FC_LAYERS = frozenset({"fc6", "fc7"})


def _dropped(name: str) -> bool:
    return name in _DROPPED or name.startswith(_DROPPED_PREFIXES)


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
                           f"bias-free ({c}, {c}, {k}, {k}) kernel", fix=_PICK_MODEL)
    want = np.zeros((c, c, k, k), np.float32)
    want[range(c), range(c)] = bilinear_kernel(k).numpy()
    err = float(np.abs(w - want).max())
    if err > 1e-6:
        raise ConvertError(f"{where} is not the bilinear kernel that {model}'s frozen upsampling applies "
                           f"(largest difference {err:.3g})",
                           fix="keep the learned kernel with {model_args} learnable_upsampling=true")


def _check_scale(blobs: list[np.ndarray], scale: float, where: str, model: str) -> None:
    """The at-once FCN-8s scales its skips by constants (Scale layers with lr_mult 0); they must agree."""
    if len(blobs) != 1 or not np.allclose(blobs[0], scale, rtol=1e-6, atol=0):
        got = ", ".join(f"{float(b.min()):g}..{float(b.max()):g}" for b in blobs)
        raise ConvertError(f"{where} scales its skip by {got}; {model} scales it by {scale:g}",
                           fix="set {model} to fcn8s_atonce, the reference's at-once FCN-8s")


def _load(net: FCN, layers: Mapping[str, list[np.ndarray]], types: Mapping[str, str], model: str, src: Path
          ) -> None:
    """Copy ``layers`` into ``net`` by name, checking every weight has exactly one place and vice versa."""
    if not isinstance(net.encoder, VGG16Trunk | AlexNetTrunk | GoogLeNetTrunk):
        raise ConvertError(f"model {model!r} has no Caffe trunk (VGG16, AlexNet or GoogLeNet); {src} cannot "
                           "initialise it", fix="set {model} to a VGG16 FCN (fcn32s, fcn8s ...), fcn_alexnet or "
                           "fcn32s_googlenet")
    # Caffe layer name -> [(state-dict key, tensor)] in Caffe's blob order: weight, then bias. Nested modules
    # are Caffe's '/' (encoder.inception_3a.3x3.weight is layer inception_3a/3x3's first blob).
    targets: dict[str, list[tuple[str, Tensor]]] = {}
    for key, t in net.state_dict().items():
        module = key.rpartition(".")[0]
        targets.setdefault(module.removeprefix("encoder.").replace(".", "/"), []).append((key, t))
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
        staged = "convert into the {model} the file was trained as, then train the finer net from it with " \
            "{init_from}: a coarser FCN initialises a finer one by staged training (section 4.2)"
        raise ConvertError(f"{src} lacks layers that {model} needs: {', '.join(missing)}", path=src,
                           fix=_PICK_MODEL if set(missing) & set(trunk) else staged)
    known = [*targets, *frozen, *scales]
    unknown = [n for n in layers if n in present and n not in known and not _dropped(n)]
    if unknown:
        desc = ", ".join(f"{n} ({types.get(n) or '?'}, {len(layers[n])} blob{'s' * (len(layers[n]) != 1)})"
                         for n in unknown)
        raise ConvertError(f"{src} has layers with weights that {model} has no place for: {desc}. {model}'s "
                           f"layers: {', '.join(known)}", fix=_PICK_MODEL, path=src)

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
                                   f"({', '.join(k for k, _ in params)})", fix=_PICK_MODEL, path=src)
            for i, ((key, t), blob) in enumerate(zip(params, blobs, strict=True)):
                w = _fit(blob, t.shape, name)
                if w is None:
                    raise ConvertError(f"{where} blob {i} has shape {blob.shape}; {model} expects "
                                       f"{tuple(t.shape)} for {key}", path=src,
                                       fix=_FIX_CLASSES if name.startswith("score") else _PICK_MODEL)
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
            ``VGG_ILSVRC_16_layers``, ``fcn_alexnet`` for CaffeNet, ``fcn32s_googlenet`` for ``bvlc_googlenet``.
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

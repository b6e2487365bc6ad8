"""``fcnseg export``: ONNX or TorchScript with dynamic batch, height and width.

The crop offsets are constants of the network and the crop sizes are read from the input's shape at run
time, so the exported graph keeps the geometry for every input size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoint import Checkpoint, load_checkpoint
from .errors import ConfigError, FcnsegError, optional_import
from .outputs import TEMP_SUFFIX, OutputError, check_output_file, describe_os_error
from .scorer import make_scorer, model_input, require_single_task

FORMATS = ("onnx", "torchscript")


class _Logits(nn.Module):
    """Wraps a model so the exported graph takes normalised float images and returns logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class ExportMismatch(FcnsegError, RuntimeError):
    """The exported ONNX graph does not compute what the PyTorch model computes (checked on the traced sample)."""

    exit_code = 1


def export_model(checkpoint: str | Path | Checkpoint, out: str | Path, *, fmt: str = "onnx",
                 opset: int = 18, overwrite: bool = False, sample_size: tuple[int, int] = (67, 93),
                 int8_calibration: Sequence[str | Path] | None = None) -> Path:
    """Export the checkpoint's model; input ``image`` (N, C, H, W) float, normalised as the checkpoint says.

    ``sample_size`` is the (odd, non-square) size traced; every size works after export.
    ``int8_calibration``: image files; when given (ONNX only), the exported graph is quantised to int8 by
    ONNX Runtime (static, per-channel weights, activation ranges calibrated on these images, read as the
    scorer reads them: :func:`fcnseg.scorer.model_input`). An ONNX file is opened by the ONNX Runtime
    scorer before it is renamed into place and run on the traced sample; an fp32 one must match PyTorch
    there (else :class:`ExportMismatch`). Refusals are family errors; ONNX needs the ``export`` extra.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", fix="set {format} to onnx or torchscript")
    if int8_calibration is not None and fmt != "onnx":
        raise ConfigError("int8 quantisation is for ONNX files", fix="set {format} to onnx, or leave {int8} out")
    if int8_calibration is not None and not int8_calibration:
        raise ConfigError("int8 quantisation needs calibration images: none given",
                          fix="pass image files or folders as {int8}")
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    require_single_task(ck, "export")
    if fmt == "onnx":  # a missing extra is one line naming it, before any work
        optional_import("onnx", needed_for="fcnseg export")
        optional_import("onnxruntime", needed_for="fcnseg export")
    out = check_output_file(out, flag="-o", overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = _Logits(ck.build_model()).eval()
    x = torch.randn(1, ck.model_args.get("in_channels", 3), *sample_size)
    # Written beside the target and renamed over it: an interrupted export never leaves a half file.
    tmp_out = out.with_name(f".{out.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracing warns about shape-dependent slicing, which is intended
                traced = torch.jit.trace(model, x, check_trace=False)
            traced.save(str(tmp_out))
        else:
            _write_onnx(ck, model, x, tmp_out, opset, int8_calibration)
        os.chmod(tmp_out, 0o644)
        os.replace(tmp_out, out)
    except OSError as e:
        raise OutputError(describe_os_error(e, out, "-o")) from e
    finally:
        tmp_out.unlink(missing_ok=True)
    return out


def _write_onnx(ck: Checkpoint, model: nn.Module, x: Tensor, out: Path, opset: int,
                int8_calibration: Sequence[str | Path] | None) -> None:
    """The ONNX file (quantised to int8 on ``int8_calibration``), then checked by the ONNX Runtime scorer."""
    if int8_calibration is None:
        _onnx_export(model, x, out, opset)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            _onnx_export(model, x, fp32, opset)
            quantize_onnx_int8(fp32, out, (_calibration_input(p, ck) for p in int8_calibration))
    got = make_scorer(ck, engine="onnxruntime", onnx_file=str(out)).run(x)  # opens it; checks its classes
    with torch.no_grad():
        want = model(x)
    tolerance = 1e-3 * max(1.0, want.abs().max().item())  # float rounding; int8 is checked to run, not to match
    if int8_calibration is None and not torch.allclose(got, want, rtol=1e-3, atol=tolerance):
        raise ExportMismatch(f"the exported ONNX graph differs from the model by up to {(got - want).abs().max():.3g} "
                             f"on a {x.shape[-2]}x{x.shape[-1]} sample", fix="try another {opset}, and report it")


def _onnx_export(model: nn.Module, x: Tensor, out: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(out), input_names=["image"], output_names=["logits"], opset_version=opset,
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "logits": {0: "batch", 2: "height", 3: "width"}},
            dynamo=False,
        )


def _calibration_input(path: str | Path, ck: Checkpoint) -> Tensor:
    from .io import read_image

    return model_input(ck, read_image(Path(path)).unsqueeze(0))  # what the ONNX Runtime scorer feeds the graph


def quantize_onnx_int8(src: str | Path, dst: str | Path, images: Iterable[Tensor]) -> Path:
    """Static int8 quantisation of an ONNX file with ONNX Runtime (QDQ, per-channel int8 weights, uint8
    activations whose ranges are the min/max seen on ``images``: normalised (1, C, H, W) float tensors)."""
    quantization = optional_import("onnxruntime.quantization", needed_for="fcnseg export")
    quant_pre_process = optional_import("onnxruntime.quantization.shape_inference",
                                        needed_for="fcnseg export").quant_pre_process
    QuantFormat, QuantType = quantization.QuantFormat, quantization.QuantType  # noqa: N806 - the library's names

    class _Reader(quantization.CalibrationDataReader):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            self.it = iter(images)

        def get_next(self) -> dict[str, object] | None:
            x = next(self.it, None)
            return None if x is None else {"image": x.numpy()}

    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantization.quantize_static(str(prepared), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(dst)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantiser logs an INFO line per tensor on the root logger: hold it at WARNING."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)

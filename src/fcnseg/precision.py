"""Numeric precision chosen for the hardware: ``auto`` is bf16 only where the machine computes it natively.

bf16 halves memory traffic and doubles arithmetic throughput on CPUs with AVX512-BF16 or AMX and on GPUs
with bf16 tensor cores. Elsewhere it is emulated: on an AVX2-only CPU this project measured bf16 about 22x
slower than fp32 (EfficientNet-Lite0 FCN-8s, 1.9 s against 85 ms an image; benchmarks/RESULTS.md). So
``auto``, the default of ``predict``, ``eval``, ``serve`` and training's autocast, resolves per device, and an
explicit ``bf16`` on a machine without it is obeyed with a warning that says why it will be slow.
"""

from __future__ import annotations

import functools
import logging
import platform
from typing import get_args

import torch

from .errors import ConfigError
from .options import Precision

__all__ = ["PRECISIONS", "bf16_native", "resolve_precision", "cpu_model", "machine_summary"]

log = logging.getLogger("fcnseg.precision")

PRECISIONS: tuple[str, ...] = get_args(Precision)
"""Accepted values of every ``--precision`` flag."""


def _cpu_bf16() -> bool:
    # torch.cpu's probes exist since torch 2.3; older builds (the GPU machines' image) fall back to oneDNN's.
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(p is None for p in probes):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and \
            torch.backends.cpu.get_cpu_capability() not in ("AVX2", "DEFAULT", "NO AVX")
    return any(bool(p()) for p in probes if p is not None)


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively: CUDA with bf16 support, or a CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_bf16()
    return False


def resolve_precision(precision: str, device: str | torch.device = "cpu", *, flag: str = "--precision") -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` (auto, fp32 or bf16) on ``device``.

    ``auto`` is bf16 where :func:`bf16_native` holds, else fp32. An explicit ``bf16`` where it does not is
    kept, with a warning naming the machine and the fix (``flag`` spells the option there). An unknown value
    raises :class:`~fcnseg.errors.ConfigError`.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", fix="set {precision} to auto, fp32 or bf16")
    native = bf16_native(device)
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and not native:
        log.warning("%s bf16: %s has no native bf16 (%s), so bf16 is emulated and much slower than fp32 "
                    "(20-22x on AVX2 CPUs, benchmarks/RESULTS.md); fix: %s auto", flag, torch.device(device).type,
                    machine_summary() if torch.device(device).type == "cpu" else "no bf16 tensor cores", flag)
    return precision


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> str:
    """CPU model, torch's CPU capability and whether bf16 is native: recorded beside every benchmark figure."""
    return (f"{cpu_model()}, capability {torch.backends.cpu.get_cpu_capability()}, "
            f"bf16 {'native' if _cpu_bf16() else 'not native'}")

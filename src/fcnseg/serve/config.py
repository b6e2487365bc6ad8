"""The service's settings: one dataclass, each default with its reason (``fcnseg serve`` flags override them)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

DELAY_ENV = "FCNSEG_SERVE_TEST_DELAY_MS"
"""Test-only: milliseconds the worker sleeps before every batch, warm-up included. The shutdown and time-out
tests set it to make a request slow on purpose; never set it in production."""

CONFIG_ENV = "FCNSEG_SERVE_CONFIG"
"""How ``fcnseg serve --workers N`` hands the settings (JSON) to the worker processes uvicorn starts."""


def _test_delay_ms() -> float:
    return float(os.environ.get(DELAY_ENV, "0") or 0)


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one serving process (one model)."""

    checkpoint: str  # the fcnseg checkpoint served: model, classes, palette and normalisation come from it
    engine: str = "torch"  # torch or onnxruntime (then `onnx` names the file made by `fcnseg export`)
    onnx: str | None = None  # ONNX file for engine=onnxruntime
    precision: str = "auto"  # auto (bf16 where native: AVX512-BF16/AMX CPU, bf16 GPU; else fp32), fp32, bf16
    max_batch: int = 4  # on CPU the per-image cost hardly falls beyond a few images; a GPU wants more
    max_wait_ms: float = 5.0  # a lone request waits at most this long for company: small against ~30 ms inference
    queue_size: int = 64  # images waiting; beyond, 503 + Retry-After (a full queue is seconds of work on CPU)
    max_pixels: int = 8_000_000  # an 8 MP photo passes; logits take 4 bytes x classes per pixel
    max_bytes: int = 25 * 2**20  # request body limit: a large PNG fits, a flood does not
    timeout_s: float = 30.0  # per request, decode to encode; past it 504
    device: str = ""  # cpu, cuda, cuda:1 for engine=torch; empty = cuda if available, else cpu
    threads: int = 0  # torch / ONNX Runtime intra-op threads; 0 = all cores but one (left for HTTP and PNGs)
    test_delay_ms: float = field(default_factory=_test_delay_ms)  # see DELAY_ENV

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))

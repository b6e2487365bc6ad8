"""The service's settings: one dataclass, each default with its reason (``fcnseg serve``'s flags are generated
from it and override ``--config``, which overrides the defaults)."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass

from ..options import Engine, Precision, opt, shared

DELAY_ENV = "FCNSEG_SERVE_TEST_DELAY_MS"
"""Test-only: milliseconds the worker sleeps before every batch, warm-up included. The shutdown and time-out
tests set it to make a request slow on purpose; never set it in production."""

CONFIG_ENV = "FCNSEG_SERVE_CONFIG"
"""How ``fcnseg serve --workers N`` hands the settings (JSON) to the worker processes uvicorn starts."""


def _test_delay_ms() -> float:
    return float(os.environ.get(DELAY_ENV, "0") or 0)


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one serving process (one model); ``host``, ``port`` and ``workers`` are uvicorn's."""

    checkpoint: str = shared("checkpoint", MISSING)
    engine: Engine = shared("engine")
    onnx: str | None = shared("onnx_file", None)
    precision: Precision = shared("precision")
    max_batch: int = opt(4, "most images run together in one model call; on CPU the per-image cost hardly falls "
                         "beyond a few images, a GPU wants more")
    max_wait_ms: float = opt(5.0, "longest a batch waits for more images: small against ~30 ms inference")
    queue_size: int = opt(64, "most images waiting; beyond it 503 + Retry-After (a full queue is seconds of "
                          "work on CPU)")
    max_pixels: int = shared("max_pixels", 8_000_000, note="a request over it gets 422; an 8 MP photo passes, "
                             "and logits take 4 bytes x classes per pixel")
    max_bytes: int = opt(25 * 2**20, "largest request body, else 413: a large PNG fits, a flood does not")
    timeout_s: float = opt(30.0, "seconds per request, decode to response, else 504", flag="--timeout")
    device: str = shared("device")
    threads: int = opt(0, "torch / ONNX Runtime intra-op threads; 0 = all cores but one (left for HTTP and "
                       "PNGs)")
    host: str = opt("127.0.0.1", "address to listen on (default: this machine only)")
    port: int = opt(8000, "TCP port")
    workers: int = opt(1, "uvicorn worker processes, each with its own model copy and batcher")
    test_delay_ms: float = opt(help="test only; see DELAY_ENV", default_factory=_test_delay_ms, cli=False)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))

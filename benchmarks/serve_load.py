"""Load test of ``fcnseg serve`` against the model's own offline speed, on this machine, in one run.

    python benchmarks/serve_load.py                      # full run: 20 s per client count, 300 s soak
    python benchmarks/serve_load.py --duration-s 5 --soak-s 0 --clients 1 16   # a quick look

Starts ``fcnseg serve`` (a subprocess, 127.0.0.1 only, a free port) with the committed CamVid checkpoint and
sends 480x360 CamVid val PNGs (raw ``image/png`` bodies, label PNG answers) from 1, 4, 16 and 64 concurrent
clients, each count for a fixed time; then a soak at 16 clients. Reports throughput, latency percentiles,
errors, 503s and the server's resident memory (sampled from /proc every 0.25 s), beside two baselines measured
in the same run: the model alone (normalise + forward + argmax on decoded tensors, the server's own
function, no HTTP) and ``fcnseg predict`` over the same folder. Every phase stops by itself: a client sends
no new request after the phase's time, and each request has a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch

from fcnseg.checkpoint import load_checkpoint
from fcnseg.io import read_image
from fcnseg.precision import cpu_model
from fcnseg.serve.model import load_labeler
from fcnseg.serve.probe import wait_ready

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "benchmarks" / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"
DATA = Path(os.environ.get("FCNSEG_DATA", REPO.parent / "shared" / "data"))


@dataclass
class Phase:
    name: str
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of 200 answers, seconds
    busy: int = 0  # 503
    errors: int = 0  # anything else, transport errors included
    rss: list[tuple[float, int]] = field(default_factory=list)  # (time since phase start, bytes)
    loadavg: float = 0.0  # the machine's 1-minute load average at the phase's end: other work shows here

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def row(self) -> str:
        p50, p95, p99 = (np.percentile(self.latencies, q) * 1000 for q in (50, 95, 99)) if self.ok else (0, 0, 0)
        peak = max((r for _, r in self.rss), default=0) / 2**20
        return (f"| {self.name} | {self.clients} | {self.seconds:.0f} | {self.ok} | {self.ok / self.seconds:.1f} | "
                f"{p50:.0f} | {p95:.0f} | {p99:.0f} | {self.errors} | {self.busy} | {peak:.0f} | {self.loadavg:.1f} |")


class RssSampler(threading.Thread):
    """Samples a process's resident set size (VmRSS) every ``period`` s into the current phase."""

    def __init__(self, pid: int, period: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.phase: Phase | None = None
        self.t0 = time.monotonic()
        self.stop = threading.Event()

    def rss(self) -> int:
        text = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024

    def start_phase(self, phase: Phase) -> None:
        self.phase, self.t0 = phase, time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                rss = self.rss()
            except (OSError, AttributeError):
                return
            if self.phase is not None:
                self.phase.rss.append((time.monotonic() - self.t0, rss))


def offline_rate(ckpt: Path, images: list[torch.Tensor], batch: int, seconds: float) -> float:
    """Images/s of the server's inference function alone (decoded uint8 tensors in, labels out)."""
    labeler = load_labeler(load_checkpoint(ckpt))
    stacked = torch.stack(images)
    labeler(stacked[:batch])  # warm-up
    done, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        idx = [(i + k) % len(images) for k in range(batch)]
        labeler(stacked[idx])
        done, i = done + batch, i + batch
    return done / (time.perf_counter() - t0)


def predict_rate(ckpt: Path, folder: Path) -> tuple[float, str]:
    """``fcnseg predict`` over ``folder`` (label PNG + overlay per image), as its own summary line reports."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fcnseg.cli", "predict", "--checkpoint", str(ckpt), str(folder), "-o", out,
               "--quiet"]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
    line = r.stdout.strip().splitlines()[-1].split(" -> ")[0]  # without the temporary output folder
    return float(re.search(r"\(([\d.]+) images/s\)", line).group(1)), line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, bodies: list[bytes], phase: Phase, seconds: float, timeout: float) -> None:
    """``phase.clients`` clients, each sending one request after another until ``seconds`` have passed."""
    limits = httpx.Limits(max_connections=phase.clients, max_keepalive_connections=phase.clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        end = time.monotonic() + seconds

        async def one_client(k: int) -> None:
            i = k
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/segment", content=bodies[i % len(bodies)],
                                          headers={"content-type": "image/png"})
                    if r.status_code == 200 and r.content[:4] == b"\x89PNG":
                        phase.latencies.append(time.perf_counter() - t0)
                    elif r.status_code == 503:
                        phase.busy += 1
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")) / 10)
                    else:
                        phase.errors += 1
                except httpx.HTTPError:
                    phase.errors += 1
                i += phase.clients

        t0 = time.monotonic()
        await asyncio.gather(*(one_client(k) for k in range(phase.clients)))
        phase.seconds = time.monotonic() - t0
        phase.loadavg = os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    ap.add_argument("--images", type=Path, default=DATA / "camvid" / "val", help="folder of PNGs to send")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrent clients per phase")
    ap.add_argument("--duration-s", type=float, default=20.0, help="seconds per client count")
    ap.add_argument("--soak-s", type=float, default=300.0, help="seconds of the soak at --soak-clients (0: none)")
    ap.add_argument("--soak-clients", type=int, default=16)
    ap.add_argument("--offline-s", type=float, default=15.0, help="seconds per offline baseline")
    ap.add_argument("--max-batch", type=int, default=4, help="server --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="server --max-wait-ms")
    ap.add_argument("--queue-size", type=int, default=64, help="server --queue-size")
    ap.add_argument("--threads", type=int, default=0, help="server --threads (0: one per core)")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="client time limit per request")
    ap.add_argument("--results", type=Path, help="append the markdown report to this file")
    a = ap.parse_args()

    files = sorted(a.images.glob("*.png"))
    if not files:
        sys.exit(f"no PNGs in {a.images}: set FCNSEG_DATA or pass --images")
    bodies = [p.read_bytes() for p in files]
    tensors = [read_image(b) for b in bodies]
    argv = " ".join(sys.argv[1:])
    load_before = os.getloadavg()
    print(f"{len(files)} images from {a.images}", flush=True)

    batches = sorted({1, a.max_batch})
    offline = {b: offline_rate(a.checkpoint, tensors, b, a.offline_s) for b in batches}  # measured again after
    for b, r in offline.items():
        print(f"offline, batch {b}: {r:.1f} images/s", flush=True)
    predict, predict_line = predict_rate(a.checkpoint, a.images)
    print(f"fcnseg predict: {predict_line}", flush=True)

    port = free_port()
    cmd = [sys.executable, "-m", "fcnseg.cli", "serve", "--checkpoint", str(a.checkpoint), "--port", str(port),
           "--max-batch", str(a.max_batch), "--max-wait-ms", str(a.max_wait_ms), "--queue-size",
           str(a.queue_size), "--threads", str(a.threads)]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    sampler = RssSampler(server.pid)
    phases: list[Phase] = []
    try:
        try:
            wait_ready(url, timeout=120, process=server)
        except (TimeoutError, RuntimeError) as e:
            sys.exit(f"{e}; log: {log.name}")
        sampler.start()
        asyncio.run(load(url, bodies, Phase("warm-up", 4), 3.0, a.timeout_s))  # first calls per batch size
        plan = [(f"{c} clients", c, a.duration_s) for c in a.clients]
        if a.soak_s > 0:
            plan.append((f"soak, {a.soak_clients} clients", a.soak_clients, a.soak_s))
        for name, clients, seconds in plan:
            phase = Phase(name, clients)
            sampler.start_phase(phase)
            asyncio.run(load(url, bodies, phase, seconds, a.timeout_s))
            phases.append(phase)
            print(phase.row(), flush=True)
    finally:
        sampler.stop.set()
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    print(f"server exit code after SIGTERM: {code}", flush=True)
    # Other work on the machine moves every number: the baseline is taken before and after the load.
    offline_after = {b: offline_rate(a.checkpoint, tensors, b, a.offline_s) for b in batches}

    limit = max(*offline.values(), *offline_after.values())
    lines = [
        "", f"## Serving: `fcnseg serve` under load ({datetime.date.today().isoformat()})", "",
        f"`python benchmarks/serve_load.py {argv}`".replace(" `", "`"),
        "", f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; "
        f"`torch.backends.cpu.get_cpu_capability()` = `{torch.backends.cpu.get_cpu_capability()}`; "
        f"torch {torch.__version__}. Server: `fcnseg serve --max-batch {a.max_batch} --max-wait-ms "
        f"{a.max_wait_ms:g} --queue-size {a.queue_size} --threads {a.threads}`, committed CamVid checkpoint "
        f"(`{a.checkpoint.name}`), {len(files)} CamVid val PNGs (480x360) sent as raw `image/png`, label PNGs back; "
        "the clients (httpx, asyncio, one process) run on the same machine. "
        f"Load average (1, 5, 15 min) before the run: {', '.join(f'{x:.1f}' for x in load_before)}; "
        "a load above the core count means other processes shared the cores (the `load avg` column).", "",
        "Baselines in the same run:", "",
        *[f"- model alone (normalise + forward + argmax, batch {b}, no HTTP, no PNG): **{r:.1f} images/s** "
          f"before the load phases, {offline_after[b]:.1f} after" for b, r in offline.items()],
        f"- `fcnseg predict` over the same folder (label PNG + overlay each): {predict_line}", "",
        "| phase | clients | seconds | answered 200 | images/s | p50 ms | p95 ms | p99 ms | errors | 503s | "
        "peak server RSS (MiB) | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[p.row() for p in phases], "",
    ]
    by_clients = {p.clients: p for p in phases if not p.name.startswith("soak")}
    if 16 in by_clients:
        p16 = by_clients[16]
        lines.append(f"At 16 clients: {p16.ok / p16.seconds:.1f} images/s = "
                     f"**{100 * p16.ok / p16.seconds / limit:.0f}%** of the best offline rate above ({limit:.1f}).")
    soak = [p for p in phases if p.name.startswith("soak")]
    if soak and soak[0].rss:
        rss = soak[0].rss
        first = [r for t, r in rss if t <= 10]
        last = [r for t, r in rss if t >= rss[-1][0] - 10]
        lines.append(f"Soak ({soak[0].seconds:.0f} s at {soak[0].clients} clients): server RSS "
                     f"{np.median(first) / 2**20:.0f} MiB over its first 10 s, {np.median(last) / 2**20:.0f} MiB "
                     f"over its last 10 s (medians), peak {max(r for _, r in rss) / 2**20:.0f} MiB.")
    errors = sum(p.errors for p in phases)
    lines.append(f"Errors other than 503: {errors}. Server exit code after SIGTERM: {code}.")
    report = "\n".join(lines) + "\n"
    print(report)
    if a.results:
        with a.results.open("a") as f:
            f.write(report)


if __name__ == "__main__":
    main()

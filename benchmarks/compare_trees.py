"""Two source trees of fcnseg side by side: training throughput and serving throughput, in one run.

For a refactor that must not get slower (issue 17): each round runs, in turn and each in its own process,
``train_speed.py --child fcnseg`` (``fcnseg train`` with its defaults, Lite0 FCN-8s, CamVid, batch 8, 352 crops)
and ``serve_load.py`` at 16 clients, once from the old tree and once from the new one, alternating which goes
first, so that the machine's drifting load falls on both. Each tree runs its own benchmark scripts with its own
``src`` on ``PYTHONPATH``. The plain PyTorch loop runs once (the ceiling both are compared with).

    git worktree add --detach /tmp/old 3c25ee1
    python benchmarks/compare_trees.py --old /tmp/old --new . --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path


def run(tree: Path, args: list[str], timeout: float = 1200) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve() / "src")}
    out = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        sys.exit(f"{tree}: {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def train_ips(tree: Path, child: str, steps: int) -> float:
    out = run(tree, ["benchmarks/train_speed.py", "--child", child, "--steps", str(steps)])
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    s = json.loads(line[7:])["stamps"]  # wall seconds at each step (log_every=1)
    warmup, batch = 5, 8  # train_speed.py's defaults: images/s between step 5 and the last
    return batch * (len(s) - warmup) / (s[-1] - s[warmup - 1])


def serve_ips(tree: Path, duration_s: float) -> float:
    out = run(tree, ["benchmarks/serve_load.py", "--clients", "16", "--duration-s", str(duration_s), "--soak-s", "0",
                     "--offline-s", "5"])
    # serve_load's row of that phase: "| 16 clients | 16 | seconds | answered | images/s | ..."
    rows = [ln for ln in out.splitlines() if re.match(r"^\| 16 clients \|", ln)]
    if not rows:
        sys.exit(f"{tree}: no 16-client row in serve_load's output:\n{out[-2000:]}")
    return float(rows[0].split("|")[5])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="checkout of the old tree")
    ap.add_argument("--new", type=Path, default=Path("."), help="checkout of the new tree")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="training steps per run")
    ap.add_argument("--serve-s", type=float, default=20.0, help="seconds of 16-client load per run")
    ap.add_argument("--only", choices=["train", "serve"], help="measure only this (default: both)")
    a = ap.parse_args()
    trees = {"old": a.old, "new": a.new}
    rows: dict[str, dict[str, list[float]]] = {k: {"train": [], "serve": []} for k in trees}
    for r in range(a.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            if a.only != "serve":
                rows[name]["train"].append(train_ips(trees[name], "fcnseg", a.steps))
                print(f"round {r + 1} {name} train {rows[name]['train'][-1]:.2f} images/s", flush=True)
            if a.only != "train":
                rows[name]["serve"].append(serve_ips(trees[name], a.serve_s))
                print(f"round {r + 1} {name} serve {rows[name]['serve'][-1]:.2f} images/s", flush=True)
    plain = train_ips(a.new, "plain", a.steps) if a.only != "serve" else 0.0
    print(f"\nplain loop: {plain:.2f} images/s\n")
    print("| what | old (images/s per round) | new (images/s per round) | new / old (medians) |")
    print("|---|---|---|---:|")
    for what in ("train", "serve"):
        old, new = rows["old"][what], rows["new"][what]
        if old and new:
            ratio = statistics.median(new) / statistics.median(old)
            print(f"| {what} | {', '.join(f'{v:.2f}' for v in old)} | {', '.join(f'{v:.2f}' for v in new)} | "
                  f"{ratio:.3f} |")
    if plain:
        print(f"| train / plain loop | {statistics.median(rows['old']['train']) / plain:.2f}x | "
              f"{statistics.median(rows['new']['train']) / plain:.2f}x | |")


if __name__ == "__main__":
    main()

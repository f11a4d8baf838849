"""Sweep throughput: robusthp's multirun path vs the best plain-PyTorch layout on this machine.

For each sweep (StdCNN at batch 32; M1 at batch 32 and 1024), four cells (momentum 0, 0.2,
0.5, 0.9, fixed lr 0.01), one epoch of the 55k MNIST training split each. A cell is what
``eval=none`` does: train, then record clean accuracy on the 10k test set.

(a) plain PyTorch, the best layout measured here (column (c) is the alternative): one process per
    core, one thread each, channels_last, batches sliced from in-memory uint8 tensors;
    each cell trains, then evaluates the test set (eval mode, inference_mode, batches of 1000);
(b) robusthp: ``python -m robusthp.run -m hydra/launcher=parallel ... epochs=1 eval=none``,
    the README's CPU-parallel switch;
(c) plain PyTorch in the layout robusthp used before its speed work: one process, torch's
    default threads, NCHW, the cells one after another. (a)/(c) is what changing the layout
    can gain on this machine at best: the ceiling for (b)/(c), robusthp's gain over its old
    sequential default (which also paid its start-up and Lightning once).

Aggregate samples/s = training samples of all cells / (last cell's end - first cell's
training start), the same work in both: start-up (imports, data decoding) is outside the
window, each cell's test evaluation inside it. "train-only" rates count the training phases
alone (the sum of the cells' training times over the number of workers), for where the rest
goes. (b)'s wall time with start-up is printed too. Also: the machine's fp32 matmul peak
(one ``torch.mm`` per core, all cores at once) and the fraction of it each layout reaches,
from the training FLOPs per sample (``FlopCounterMode``, forward + backward).

    python benchmarks/sweep_throughput.py [--sweeps stdcnn:32,m1:32,m1:1024]

Data: real MNIST under $ROBUSTHP_DATA_DIR or ../shared/datasets, else random images of
the same size written in the MNIST idx format to a temporary folder (same arithmetic).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOMENTA = (0.0, 0.2, 0.5, 0.9)
TRAIN_SIZE = 55_000  # the paper's MNIST training split

_PLAIN_WORKER = r"""
import json, sys, time
import torch, torch.nn.functional as F
from robusthp.data import DataSettings, ImageDataModule, get_spec
from robusthp.models import build_model
from robusthp.optim import build_optimizer, resolve_sgd
root, model_name, batch_size, momenta = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
channels_last = sys.argv[5] == "channels_last"
memory_format = torch.channels_last if channels_last else torch.contiguous_format
dm = ImageDataModule(DataSettings(dataset="mnist", root=root, batch_size=batch_size, download=False,
                                  channels_last=channels_last))
dm.setup()
spec = get_spec("mnist")
out = []
for momentum in momenta:
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=1, num_classes=10, image_size=28, mean=spec.mean,
                        std=spec.std).to(memory_format=memory_format)
    optimizer, _ = build_optimizer(model.parameters(), resolve_sgd("lr", batch_size, momentum))
    loader = dm.train_dataloader().batches  # the shuffled (x, y) batches runs train on
    model.train()
    start, n = time.time(), 0
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += len(y)
    train_end = time.time()
    model.eval()
    correct = tested = 0
    with torch.inference_mode():
        for x, y in dm.test_dataloader():
            correct += int((model(x).argmax(1) == y).sum())
            tested += len(y)
    out.append({"start": start, "train_end": train_end, "end": time.time(), "samples": n,
                "test_acc": correct / tested})
print(json.dumps(out))
"""


def data_root(tmp: Path) -> Path:
    for root in (os.environ.get("ROBUSTHP_DATA_DIR"), REPO.parent / "shared" / "datasets"):
        if root and (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
            return Path(root)
    import numpy as np

    raw = tmp / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60_000), ("t10k", 10_000)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return tmp


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def one_thread_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def plain_layout(root: Path, model: str, batch_size: int, old: bool = False) -> tuple[float, float]:
    """(a): one one-thread process per core, channels_last, cells split between them; or
    with ``old``, (c): one process, torch's default threads, NCHW. Returns (samples/s,
    training-only samples/s)."""
    n = 1 if old else min(cores(), len(MOMENTA))
    shares = [list(MOMENTA[i::n]) for i in range(n)]
    fmt = "nchw" if old else "channels_last"
    procs = [
        subprocess.Popen([sys.executable, "-c", _PLAIN_WORKER, str(root), model, str(batch_size), json.dumps(s), fmt],
                         stdout=subprocess.PIPE, text=True, env=os.environ if old else one_thread_env())
        for s in shares
    ]
    cells = [c for p in procs for c in json.loads(p.communicate()[0])]
    samples = sum(c["samples"] for c in cells)
    window = max(c["end"] for c in cells) - min(c["start"] for c in cells)
    train_s = sum(c["train_end"] - c["start"] for c in cells)
    return samples / window, samples / (train_s / n)


def robusthp_layout(root: Path, model: str, batch_size: int, out: Path) -> tuple[float, float, float]:
    """(b): the multirun path; (samples/s, training-only samples/s, wall s with start-up)."""
    cmd = [sys.executable, "-m", "robusthp.run", "-m", "hydra/launcher=parallel", "dataset=mnist",
           f"model={model}", "regime=lr", f"batch_size={batch_size}",
           "momentum=" + ",".join(f"{m:g}" for m in MOMENTA), "epochs=1", "eval=none",
           "trainer.progress_bar=false", f"hydra.sweep.dir={out}", f"data.root={root}", "data.download=false"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    records = [json.loads(p.read_text()) for p in out.rglob("results.json")]
    assert len(records) == len(MOMENTA) and all(r["status"] == "ok" for r in records), records
    start = min(r["timestamps"]["train_start"] for r in records)
    end = max(r["timestamps"]["end"] for r in records)
    samples = sum(r["data_sizes"]["train"] for r in records)
    workers = min(cores(), len(MOMENTA))
    train_only = samples / (sum(r["timings_s"]["train"] for r in records) / workers)
    return samples / (end - start), train_only, wall


def matmul_peak(size: int = 1024, seconds: float = 3.0) -> float:
    """fp32 GFLOP/s of the whole machine: one single-thread torch.mm loop per core, at once."""
    code = (
        f"import time, torch; torch.set_num_threads(1); a = torch.randn({size}, {size}); b = torch.randn({size}, {size})\n"
        "for _ in range(3): a @ b\n"
        "n, t0 = 0, time.perf_counter()\n"
        f"while time.perf_counter() - t0 < {seconds}: a @ b; n += 1\n"
        f"print(2 * {size} ** 3 * n / (time.perf_counter() - t0) / 1e9)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=one_thread_env())
             for _ in range(cores())]
    return sum(float(p.communicate()[0]) for p in procs)


def train_flops_per_sample(model_name: str) -> float:
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from robusthp.models import build_model

    model = build_model(model_name, in_channels=1, num_classes=10, image_size=28, mean=(0.13,), std=(0.31,))
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", default="stdcnn:32,m1:32,m1:1024", help="model:batch_size,...")
    parser.add_argument("--rounds", type=int, default=3, help="(a), (b), (c) alternated this many times")
    parser.add_argument("--old", action=argparse.BooleanOptionalAction, default=True,
                        help="also run (c), the old one-process layout (the slowest of the three)")
    args = parser.parse_args()
    import torch

    peak = matmul_peak()
    print(f"torch {torch.__version__}; {cores()} cores; fp32 matmul peak {peak:.0f} GFLOP/s "
          f"(one 1-thread torch.mm per core); 4 cells x one epoch of {TRAIN_SIZE} MNIST images each; "
          f"(a), (b){', (c)' if args.old else ''} alternated {args.rounds}x: samples/s are medians, "
          f"ratios medians of the per-round ratios")
    print(f"{'sweep':14} {'(a) plain/s':>12} {'(b) robusthp/s':>15} {'(b)/(a)':>8} "
          f"{'(a) %peak':>10} {'(b) %peak':>10} {'train-only (a)/s':>17} {'(b)/s':>6} {'(b)/(a)':>8} "
          f"{'(b) wall s':>11} {'(c) old/s':>10} {'(a)/(c)':>8} {'(b)/(c)':>8}")
    median = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        root = data_root(Path(tmp) / "data")
        for spec in args.sweeps.split(","):
            model, batch_size = spec.split(":")
            flops = train_flops_per_sample(model)
            rounds = []  # (a, a train-only, b, b train-only, b wall, c) per round
            for r in range(args.rounds):
                sweep_dir = Path(tmp) / f"sweep-{model}-{batch_size}-{r}"
                a_b = plain_layout(root, model, int(batch_size)) + robusthp_layout(root, model, int(batch_size), sweep_dir)
                c = plain_layout(root, model, int(batch_size), old=True)[0] if args.old else float("nan")
                rounds.append((*a_b, c))
            a, a_train, b, b_train, wall, c = (median(col) for col in zip(*rounds, strict=True))
            ratio = median(r[2] / r[0] for r in rounds)
            train_ratio = median(r[3] / r[1] for r in rounds)
            ceiling, gain = median(r[0] / r[5] for r in rounds), median(r[2] / r[5] for r in rounds)
            print(f"{model + ' bs ' + batch_size:14} {a:>12.0f} {b:>15.0f} {ratio:>8.3f} "
                  f"{100 * a * flops / 1e9 / peak:>9.1f}% {100 * b * flops / 1e9 / peak:>9.1f}% "
                  f"{a_train:>17.0f} {b_train:>6.0f} {train_ratio:>8.3f} {wall:>11.1f} "
                  f"{c:>10.0f} {ceiling:>8.3f} {gain:>8.3f}   "
                  f"(per round (b)/(a): {', '.join(f'{r[2] / r[0]:.3f}' for r in rounds)})", flush=True)


if __name__ == "__main__":
    main()

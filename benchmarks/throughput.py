"""Steady-state training throughput of one pack, without Ray: point-epochs per second (thread
CPU time on CPU, so that other load on the machine counts less; wall time with a sync on a
GPU) for packs of K points, per network.

    .venv/bin/python benchmarks/throughput.py                        # a few networks, K = 4..256
    .venv/bin/python benchmarks/throughput.py rnn,5,20 lstm,1,5 --k 8 16 32
    .venv/bin/python benchmarks/throughput.py rnn,1,5 --device cuda --k 256 1024 4096
    .venv/bin/python benchmarks/throughput.py rnn,3,10 --k 20 --compare   # the three CPU paths
    .venv/bin/python benchmarks/throughput.py --k 20 --vectors   # AVX2: the 64-byte vectors' halves
    .venv/bin/python benchmarks/throughput.py --cells            # every cell against the RNN

`--cells` trains one pack of 32 points of every cell at l = 1, c = 5 and at l = 2, c = 10 and
prints its member-steps per second (one training step of one network on a batch of 128), the
ratio to the RNN's of the same l and c and to the RNN's of the same l and the same N per layer
(the state numbers a layer holds: 2c for the LRU, 4c for S6), and the code path that trained it
(a row's `kernel`).

This is what `memgrid.packs.best_k` and the CPU cost model (`MEMBER_BYTES_PER_S`) were set from.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memgrid import fast, train  # noqa: E402
from memgrid.cells import CELLS  # noqa: E402
from memgrid.fast import kernels, native  # noqa: E402
from memgrid.config import Point  # noqa: E402
from memgrid.train import PackTrainer  # noqa: E402
from memgrid.packs import best_k  # noqa: E402


def throughput(arch: str, layers: int, cells: int, k: int, device: str, rounds: int = 3) -> float:
    pts = [Point(arch, layers, cells, position=1 + i % 10, seed=i, max_epochs=10**9,
                 eval_every=10**9, plateau=False, solved_loss=0.0, mc_length=0) for i in range(k)]
    tr = PackTrainer(pts, device=device)
    cuda = tr.device.type == "cuda"
    clock = time.perf_counter if cuda else time.thread_time
    n = max(3, min(50, 4000 // (k * layers * cells))) if not cuda else 20
    tr.run_epoch()
    best = float("inf")
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
        t0 = clock()
        for _ in range(n):
            tr.run_epoch()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, (clock() - t0) / n)
    return k / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("nets", nargs="*", default=["rnn,1,5", "rnn,3,10", "rnn,5,20", "lstm,1,5", "gru,1,5"],
                    help="arch,layers,cells")
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128, 256])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare", action="store_true",
                    help="on the CPU, side by side: the C kernel's whole step (default), the C kernel's "
                         "forward and backward inside torch autograd, and torch ops (MEMGRID_KERNELS=0)")
    ap.add_argument("--vectors", action="store_true",
                    help="on the CPU, side by side: the C kernel as built (on AVX2 without AVX-512 its "
                         "64-byte vectors held as halves by hand) and built with -DMEMGRID_NO_HALVES "
                         "(the vectors left to the compiler); the same bits, and the ratio")
    ap.add_argument("--cells", action="store_true",
                    help="every cell beside the RNN: one pack of 32 at l = 1, c = 5 and l = 2, c = 10")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.cells:
        print(f"{native.cpu_text()}, {args.threads} thread(s); member-steps/s, one pack of 32; "
              "the ratio to the RNN of the same l and c, and to the RNN of the same l and N per layer")
        for l, c in ((1, 5), (2, 10)):
            rates = {a: throughput(a, l, c, 32, args.device) for a in CELLS}
            same_n = {n: rates["rnn"] if n == c else throughput("rnn", l, n, 32, args.device)
                      for n in sorted({CELLS[a].units(c) for a in CELLS})}
            for a, r in rates.items():
                n = CELLS[a].units(c)
                print(f"l={l} c={c:2d}  {CELLS[a].label:24s} {r:8.0f}  {r / rates['rnn']:5.2f}x RNN  "
                      f"{r / same_n[n]:5.2f}x RNN of N = {n:2d}  ({fast.path_name(a, args.device)})",
                      flush=True)
        return
    dev = args.device.split(":")[0]
    builds = {}
    if args.vectors:
        builds = {" halves ": kernels.lib(torch.float32),
                  " 64-byte": kernels._build(torch.float32, native.FLAGS + ["-DMEMGRID_NO_HALVES"])}
    for net in args.nets:
        arch, l, c = net.split(",")
        l, c = int(l), int(c)
        paths = ["step", "autograd", "torch"] if args.compare and dev == "cpu" else list(builds) or [None]
        rates = {}
        for path in paths:
            if path in builds:
                native._libs[torch.float32] = builds[path]
            elif path is not None:
                os.environ["MEMGRID_KERNELS"] = "0" if path == "torch" else "1"
                train.FUSED_STEP = path == "step"
            rates[path] = [throughput(arch, l, c, k, args.device) for k in args.k]
            cells = "  ".join(f"K={k}: {r:7.0f}" for k, r in zip(args.k, rates[path]))
            what = {"step": " C step    ", "autograd": " C autograd", "torch": " torch ops ", None: ""}.get(path, path)
            print(f"{arch} {l},{c}{what} (best_k {best_k(Point(arch, l, c, 1, 0), dev)}): {cells}  pe/s",
                  flush=True)
        if builds:
            print(f"{arch} {l},{c} halves / 64-byte: "
                  + "  ".join(f"K={k}: {x / y:5.2f}x" for k, x, y in zip(args.k, *rates.values())), flush=True)


if __name__ == "__main__":
    main()

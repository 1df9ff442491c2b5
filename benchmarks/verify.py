"""Checks to run after any change to the hot path (models/task/train), from memgrid.verify:

1. equivalence with torch.nn.RNN/LSTM/GRU: a pack of one with the same weights, a mixed-length
   batch, outputs and gradients to 1e-5;
2. bitwise pack invariance: train_points on a mixed pack vs each point alone, identical
   evaluation-loss curves;
3. with --results DIR: stored results still reproduce. A sample of the folder's trained points,
   each retrained alone (a pack does not change a point's numbers), against its stored row:
   epochs, stop reason, losses and r2 bit for bit (on a GPU, to float rounding), with the
   threads of the trials that trained them (`--threads`, the grid's cpus_per_trial: 1 unless
   it said otherwise); the stream MC to 1e-12, since its float64 fit goes through the BLAS,
   whose roundings differ between CPUs and thread counts in the last digits.

    .venv/bin/python benchmarks/verify.py                # CPU: 1e-5 and bitwise
    .venv/bin/python benchmarks/verify.py --device cuda  # on a GPU (float rounding, see below)
    .venv/bin/python benchmarks/verify.py --results docs/data/fig4_rnn-paper --sample 5
    .venv/bin/python benchmarks/verify.py --results docs/data/fig6_rnn --max-units 20 --max-epochs 1000

On a GPU, cuBLAS may pick another kernel for another batch count, so a point alone and in a
pack agree to float rounding there, not bit for bit; --device cuda reports the
largest difference of the evaluation curves instead of failing on it.
"""

from __future__ import annotations

import argparse
import sys

from memgrid.verify import check_equivalence, check_invariance, check_results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results", metavar="DIR", help="retrain a sample of this results folder")
    ap.add_argument("--sample", type=int, default=5, help="points to retrain (--results)")
    ap.add_argument("--seed", type=int, default=0, help="which points (--results)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, as the trials had (--results; default 1)")
    ap.add_argument("--max-epochs", type=int, metavar="N",
                    help="draw only points that trained at most N epochs (--results: quicker)")
    ap.add_argument("--max-units", type=int, metavar="N",
                    help="draw only networks of at most N units, c * l (--results: quicker)")
    args = ap.parse_args()
    dev = args.device
    if args.results:
        def where(row: dict) -> bool:
            return ((args.max_epochs is None or row["epochs"] <= args.max_epochs)
                    and (args.max_units is None or row["units"] <= args.max_units))

        print(f"{args.results}: retraining {args.sample} stored points, each alone")
        n, bad = check_results(args.results, args.sample, args.seed, dev, args.threads, where)
        print(f"{n - bad} of {n} reproduce their stored rows")
        return 1 if bad or not n else 0
    bad = 0
    for arch in ("rnn", "lstm", "gru"):
        for k in range(3):
            err = check_equivalence(arch, k=k, device=dev)
            print(f"equivalence {arch} member {k}: max abs err {err:.2e}")
            bad += err > 1e-5
        worst = check_invariance(arch, device=dev)
        print(f"pack invariance {arch}: " + ("bitwise" if worst == 0 else f"differs by {worst:.1e}"))
        bad += worst > (0 if dev == "cpu" else 1e-4)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a parallel scan pay for memgrid's newer cells at the task's lengths?

minGRU, minLSTM, the LRU and S6 update their state by a diagonal linear recurrence,
h_t = a_t * h_{t-1} + b_t, with a_t and b_t computed from the inputs alone: it can run as a
scan over time instead of a loop. This times, side by side in one run, forward and backward
(autograd, float32, one thread) of that recurrence for a pack's worth of numbers:

- `loop`: the sequential loop memgrid's definitions run (one step after the other);
- `scan`: a log-depth Hillis-Steele scan of the affine maps (ceil(log2 T) rounds);
- `logcumsumexp`: Heinsen's log-space scan, as the published minGRU code runs it
  (positive a and b only).

It prints ms per call and scan / loop ratios at T = 10, 15, 20, 25 (the task's lengths: q = 10..15
shifted by up to p - 10). Then the whole question for one cell: a minGRU layer of a pack as
memgrid trains it (``memgrid.models.reference_forward``, a loop over steps) against the same
layer with its gates computed for every step at once and the recurrence scanned.

    python benchmarks/scan.py [--threads 1] [--n 81920]
"""

from __future__ import annotations

import argparse
import time

import torch


def loop(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    h = torch.zeros_like(b[0])
    out = []
    for t in range(a.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out)


def scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inclusive scan of the maps h -> a_t h + b_t (composition: (a2 a1, a2 b1 + b2))."""
    T, d = a.shape[0], 1
    while d < T:
        a, b = (torch.cat([a[:d], a[d:] * a[:-d]]),
                torch.cat([b[:d], a[d:] * b[:-d] + b[d:]]))
        d *= 2
    return b


def logcumsumexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    log_a = torch.log(a).cumsum(0)
    return torch.exp(log_a + torch.logcumsumexp(torch.log(b) - log_a, 0))


def mingru_parallel(w: dict, x: torch.Tensor) -> torch.Tensor:
    """One minGRU layer, input `x` (K, B, T) of one unit each, every step's gates at once
    (they read the input alone), then the scan: the last step's sum over units (K, B)."""
    from memgrid.cells import g_positive

    xt = x.permute(2, 0, 1).unsqueeze(2)                                  # (T, K, 1, B)
    z = torch.sigmoid(w["w_z.0"][None] * xt + w["b_z.0"][None, :, :, None])
    h_new = g_positive(w["w_h.0"][None] * xt + w["b_h.0"][None, :, :, None])
    h = scan(1 - z, z * h_new)
    return h[-1].sum(1)


def time_ms(fn, a, b, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        a_, b_ = a.detach().requires_grad_(), b.detach().requires_grad_()
        t0 = time.perf_counter()
        fn(a_, b_).sum().backward()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=64 * 10 * 128,
                    help="recurrences side by side (K members x c units x B sequences)")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"{args.n} recurrences (K x c x B), float32, {args.threads} thread(s), forward + "
          f"backward, best of {args.reps}")
    print(f"{'T':>4} {'loop ms':>9} {'scan ms':>9} {'logcse ms':>10} {'scan/loop':>10} "
          f"{'logcse/loop':>12}")
    for T in (10, 15, 20, 25):
        a = torch.rand(T, args.n, generator=g) * 0.9 + 0.05
        b = torch.rand(T, args.n, generator=g) + 0.05
        ref = loop(a, b)
        for fn in (scan, logcumsumexp):                   # the same function, to rounding
            torch.testing.assert_close(fn(a, b), ref, rtol=1e-4, atol=1e-5)
        ms = [time_ms(fn, a, b, args.reps) for fn in (loop, scan, logcumsumexp)]
        print(f"{T:>4} {ms[0]:>9.2f} {ms[1]:>9.2f} {ms[2]:>10.2f} {ms[1] / ms[0]:>10.2f} "
              f"{ms[2] / ms[0]:>12.2f}")

    from memgrid.models import init_params, reference_forward
    K, c, B = 64, 10, 128
    print(f"\nminGRU, l = 1, c = {c}, a pack of K = {K}, batch {B}: definition (loop) vs "
          "gates at once + scan")
    print(f"{'T':>4} {'loop ms':>9} {'scan ms':>9} {'scan/loop':>10}")
    for T in (10, 15, 20, 25):
        params = init_params("mingru", 1, c, "sum", torch.arange(K))
        x = torch.rand(K, B, T, generator=g)
        mask = torch.ones(K, B, 0, dtype=torch.bool)
        torch.testing.assert_close(mingru_parallel(params, x),
                                   reference_forward("mingru", params, x, mask), rtol=1e-4, atol=1e-5)

        def run(fn):
            best = float("inf")
            for _ in range(args.reps):
                w = {n: v.detach().requires_grad_() for n, v in params.items()}
                t0 = time.perf_counter()
                fn(w).sum().backward()
                best = min(best, time.perf_counter() - t0)
            return 1e3 * best

        ms = [run(lambda w: reference_forward("mingru", w, x, mask)),
              run(lambda w: mingru_parallel(w, x))]
        print(f"{T:>4} {ms[0]:>9.2f} {ms[1]:>9.2f} {ms[1] / ms[0]:>10.2f}")


if __name__ == "__main__":
    main()

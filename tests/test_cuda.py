"""On a GPU: every cell computes there what it computes on the CPU, a pack trains there as it
does on the CPU, and packing stays invariant. Skipped where torch sees no CUDA device (CI);
`benchmarks/gpu_check.sh` runs them on a GPU machine."""

import pytest
import torch

from memgrid.cells import CELLS
from memgrid.config import Point
from memgrid.models import forward, init_params
from memgrid.task import TRAIN, TaskSpec, make_batch
from memgrid.train import PackTrainer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("arch", list(CELLS))
def test_every_cell_on_cuda_is_the_cpus(arch):
    """Outputs and gradients of a padded 2-layer pack, float64: the same on CUDA (PyTorch ops:
    the hand-written backward for RNN, LSTM, GRU, autograd on the definition for the others) as
    on the CPU (the C kernels where they run)."""
    pts = [Point(arch, 2, 4, p, s, q_min=3, q_max=8) for p, s in [(1, 0), (3, 1)]]
    spec = TaskSpec.of(pts)
    b = make_batch(spec, TRAIN, 5, 32)
    runs = []
    for dev in ("cpu", "cuda"):
        params = {n: v.double().to(dev).requires_grad_() for n, v in
                  init_params(arch, 2, 4, "sum", spec.seed).items()}
        y = forward(arch, params, b.x.double().to(dev), b.mask.to(dev))
        y.pow(2).sum().backward()
        runs.append((y.detach().cpu(), {n: v.grad.cpu() for n, v in params.items()}))
    (y_c, g_c), (y_g, g_g) = runs
    torch.testing.assert_close(y_g, y_c, atol=1e-10, rtol=1e-9)
    for n in g_c:
        torch.testing.assert_close(g_g[n], g_c[n], atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("arch", ["rnn", "lstm", "mingru"])
def test_a_pack_trains_on_cuda_as_on_the_cpu(arch):
    """Adam with the cosine decay, 20 epochs, float64: the same weights and curves on CUDA as on
    the CPU, to float rounding (the data and initial weights are the same bits on both)."""
    kw = dict(q_min=4, q_max=7, max_epochs=20, eval_every=10, eval_size=64, batch_size=32,
              optimizer="adam", lr_schedule="cosine", lr=0.01, plateau=False, solved_loss=0.0,
              mc_length=0)
    pts = [Point(arch, 2, 3, p, s, **kw) for p, s in [(1, 0), (4, 1)]]
    done = []
    for dev in ("cpu", "cuda"):
        tr = PackTrainer(pts, device=dev, dtype=torch.float64)
        tr.run()
        done.append(tr.finished)
    for (row_c, curve_c, w_c), (row_g, curve_g, w_g) in zip(*done):
        for n in w_c:
            torch.testing.assert_close(w_g[n].cpu(), w_c[n], atol=1e-8, rtol=1e-7)
        assert [c["eval_loss"] for c in curve_g] == pytest.approx([c["eval_loss"] for c in curve_c],
                                                                  abs=1e-8)


@pytest.mark.parametrize("arch", ["rnn", "gru", "lru"])
def test_pack_invariance_on_cuda(arch):
    """A point alone and in a pack with longer sequences and other rates ends with the same
    weights on CUDA, float32, to float rounding (bitwise is promised on the CPU only)."""
    from .test_cells import packed_and_alone

    (_, (_, _, w_p)), (_, (_, _, w_s)) = packed_and_alone(arch, "cuda", epochs=30)
    for n in w_s:
        torch.testing.assert_close(w_p[n], w_s[n], atol=1e-5, rtol=1e-4)

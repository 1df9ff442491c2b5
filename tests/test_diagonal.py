"""The C kernel of the diagonal cells, minGRU, minLSTM, the LRU (complex and real lambda) and the
selective SSM (memgrid.fast.diagonal), against the cells' definitions, and its whole training
step against the kernel inside autograd."""

import math

import pytest
import torch

from memgrid import train
from memgrid.config import Point
from memgrid.fast import diagonal
from memgrid.models import forward, init_params, reference_forward
from memgrid.task import TRAIN, TaskSpec, make_batch
from memgrid.train import PackTrainer

ARCHS = sorted(diagonal.ARCH)
pytestmark = pytest.mark.skipif(diagonal.lib(torch.float64) is None, reason="no C compiler")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers,readout,tbptt", [(1, "sum", 0), (2, "linear", 0), (3, "sum", 4)])
def test_kernel_computes_the_definition(arch, layers, readout, tbptt):
    """Outputs and every parameter's gradient of a pack of three (sequences of 3..8 steps, so
    that some start late and are masked; a pack member whose position sets a longer T) equal
    the definition's under autograd in float64, with truncated backpropagation too."""
    pts = [Point(arch, layers, 4, p, s, q_min=3, q_max=8) for p, s in [(1, 0), (3, 1), (9, 2)]]
    spec = TaskSpec.of(pts)
    b = make_batch(spec, TRAIN, 5, 32)
    assert b.mask.shape[2] > 0
    runs = []
    for f in (forward, reference_forward):
        params = {n: v.double().requires_grad_() for n, v in
                  init_params(arch, layers, 4, readout, spec.seed).items()}
        y = f(arch, params, b.x.double(), b.mask, tbptt)
        y.pow(2).sum().backward()
        runs.append((y.detach(), {n: v.grad for n, v in params.items()}))
    (y_fast, g_fast), (y_def, g_def) = runs
    torch.testing.assert_close(y_fast, y_def, atol=1e-13, rtol=1e-12)
    for n in g_def:
        torch.testing.assert_close(g_fast[n], g_def[n], atol=1e-12, rtol=1e-10, msg=n)
    with torch.no_grad():                                    # evaluation: two state slots
        params = {n: v.double() for n, v in init_params(arch, layers, 4, readout, spec.seed).items()}
        torch.testing.assert_close(forward(arch, params, b.x.double(), b.mask), y_def,
                                   atol=1e-13, rtol=1e-12)


def _train(arch, readout, fused, monkeypatch, optimizer):
    monkeypatch.setattr(train, "FUSED_STEP", fused)
    pts = [Point(arch, 2, 3, p, s, q_min=3, q_max=6, lr=0.01, optimizer=optimizer,
                 readout=readout, max_epochs=30, eval_every=10, eval_size=64, batch_size=32,
                 plateau=False, mc_length=0) for p, s in [(1, 0), (2, 1)]]
    tr = PackTrainer(pts)
    tr.run()
    return sorted(tr.finished, key=lambda f: f[0]["seed"])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("readout,optimizer", [("sum", "adam"), ("linear", "sgd")])
def test_whole_step_is_the_kernel_inside_autograd(arch, readout, optimizer, monkeypatch):
    """Training a pack for 30 epochs by the whole step in C and by the kernel's forward and
    backward inside torch autograd (torch's optimizer) ends at the same weights and curves: bit
    for bit with the `sum` readout (the same products and roundings), to float rounding with
    the linear one (its gradient is summed in another order, and torch's products round by CPU:
    over 30 epochs the LRU's evaluation loss moves by 3e-5 of itself on an AMD EPYC)."""
    whole = _train(arch, readout, True, monkeypatch, optimizer)
    inside = _train(arch, readout, False, monkeypatch, optimizer)
    for (row_w, curve_w, w_w), (row_i, curve_i, w_i) in zip(whole, inside):
        assert row_w["kernel"] == row_i["kernel"] and row_w["kernel"].startswith("c-")
        for n in w_i:
            if readout == "sum":
                assert torch.equal(w_w[n], w_i[n]), n
            torch.testing.assert_close(w_w[n], w_i[n], atol=1e-6, rtol=1e-5, msg=n)
        assert [c["epoch"] for c in curve_w] == [c["epoch"] for c in curve_i]
        for a, b in zip(curve_w, curve_i):
            assert math.isclose(a["eval_loss"], b["eval_loss"], rel_tol=1e-4, abs_tol=1e-6)


def test_rows_name_the_code_path_that_trains_them(monkeypatch):
    """The code path a row records: `c-...` for a cell this kernel runs, `torch` for one it does
    not (a cell defined by its user) and for every cell without one (MEMGRID_KERNELS=0)."""
    from memgrid import fast
    from memgrid.cells import CELLS, Cell

    toy = Cell("toy", lambda m, c: {"w": (c, m)}, lambda w, x, state: (x, state))
    monkeypatch.setitem(CELLS, "toy", toy)
    for arch in ARCHS:
        assert fast.path_name(arch, "cpu").startswith("c-"), arch
    assert fast.path_name("toy", "cpu") == "torch"
    monkeypatch.setattr(diagonal, "lib", lambda dtype: None)
    for arch in ARCHS:
        assert fast.path_name(arch, "cpu") == "torch", arch


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 5e-16), (torch.float32, 2.5e-7)])
def test_phi_is_the_normal_distribution_function(dtype, atol):
    """The blocks' exact GELU, f Phi(f): the kernel's Phi (csrc/common.h's phi_, a polynomial)
    equals (1 + erf(f / sqrt 2)) / 2 from torch in float64, to a few units of the type's last
    place, from f = -40 to 40, and is 0 and 1 at the ends."""
    from memgrid.fast.native import pointer

    f = torch.cat([torch.linspace(-40, 40, 200_001, dtype=torch.float64),
                   torch.linspace(-1e-3, 1e-3, 2001, dtype=torch.float64)]).to(dtype)
    out = torch.empty_like(f)
    assert diagonal.lib(dtype).phi(f.numel(), pointer(f), pointer(out)) == 0
    exact = 0.5 * (1 + torch.erf(f.double() / 2 ** 0.5))
    assert (out.double() - exact).abs().max().item() < atol
    assert out[0] == 0 and out[200_000] == 1


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 2.3e-16), (torch.float32, 1.2e-7)])
def test_sincos_is_sine_and_cosine(dtype, atol):
    """The complex SSM's phase (csrc/diag_ssm.h's sincos_, range reduction and polynomials)
    equals torch's sin and cos in float64 of the same numbers, to a unit or two of the type's
    last place, from -1000 to 1000 (every quadrant, many turns) and near 0."""
    from memgrid.fast.native import pointer

    x = torch.cat([torch.linspace(-1000, 1000, 2_000_001, dtype=torch.float64),
                   torch.linspace(-1e-3, 1e-3, 2001, dtype=torch.float64)]).to(dtype)
    sn, cs = torch.empty_like(x), torch.empty_like(x)
    assert diagonal.lib(dtype).sincos(x.numel(), pointer(x), pointer(sn), pointer(cs)) == 0
    assert (sn.double() - torch.sin(x.double())).abs().max().item() < atol
    assert (cs.double() - torch.cos(x.double())).abs().max().item() < atol

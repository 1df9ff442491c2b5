"""Packed cells against torch.nn.RNN/LSTM/GRU; parameter counts; member independence."""

import pytest
import torch

from memgrid.config import Point
from memgrid.models import count_params, forward, init_params
from memgrid.task import TRAIN, TaskSpec, make_batch

MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def torch_module_like(arch, params, k, layers, cells):
    """A torch module holding member k's weights (float64)."""
    m = MODULES[arch](1, cells, layers, batch_first=True).double()
    with torch.no_grad():
        for i in range(layers):
            getattr(m, f"weight_ih_l{i}").copy_(params[f"w_ih.{i}"][k])
            getattr(m, f"weight_hh_l{i}").copy_(params[f"w_hh.{i}"][k])
            getattr(m, f"bias_ih_l{i}").copy_(params[f"b_ih.{i}"][k])
            getattr(m, f"bias_hh_l{i}").copy_(params[f"b_hh.{i}"][k])
    return m


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers,cells", [(1, 5), (3, 4)])
@pytest.mark.parametrize("readout", ["sum", "linear"])
def test_pack_member_matches_torch_module(arch, layers, cells, readout):
    """Outputs and gradients of every parameter, on a batch of mixed lengths, to 1e-5."""
    pts = [Point(arch, layers, cells, p, s, readout=readout) for p, s in [(2, 3), (5, 4), (12, 9)]]
    spec = TaskSpec.of(pts)
    params = {n: v.double().requires_grad_() for n, v in init_params(arch, layers, cells, readout, spec.seed).items()}
    batch = make_batch(spec, TRAIN, 0, 8)
    y = forward(arch, params, batch.x.double(), batch.mask)
    T = batch.x.shape[2]
    for k in range(len(pts)):
        m = torch_module_like(arch, params, k, layers, cells)
        outs = []
        for j in range(8):
            q = int(batch.length[k, j])
            h, _ = m(batch.x[k, j, T - q:].double().reshape(1, q, 1))          # one sequence alone
            last = h[0, -1]
            outs.append(last @ params["w_out"][k] + params["b_out"][k] if readout == "linear" else last.sum())
        ref = torch.stack(outs)
        assert torch.allclose(y[k], ref, atol=1e-5, rtol=0)
        loss_ours = (y[k] - batch.y[k]).abs().mean()
        loss_ref = (ref - batch.y[k]).abs().mean()
        g_ours = torch.autograd.grad(loss_ours, [params[f"w_hh.{i}"] for i in range(layers)]
                                     + [params[f"b_ih.{i}"] for i in range(layers)], retain_graph=True)
        g_ref = torch.autograd.grad(loss_ref, [getattr(m, f"weight_hh_l{i}") for i in range(layers)]
                                    + [getattr(m, f"bias_ih_l{i}") for i in range(layers)], retain_graph=True)
        for a, b in zip(g_ours, g_ref):
            assert torch.allclose(a[k], b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,layers,cells,readout,expected", [
    ("rnn", 1, 5, "sum", 40),          # 5 + 25 + 2*5
    ("lstm", 1, 5, "sum", 160),        # 4 * 40
    ("gru", 1, 5, "sum", 120),         # 3 * 40
    ("rnn", 3, 4, "sum", 28 + 2 * 40),  # (4 + 16 + 8) + 2 * (16 + 16 + 8)
    ("lstm", 2, 10, "linear", 4 * 130 + 4 * 220 + 11),  # 4(10+100+20) + 4(100+100+20) + 11
    ("gru", 5, 20, "sum", 3 * 460 + 4 * 3 * 840),
])
def test_parameter_counts(arch, layers, cells, readout, expected):
    p = Point(arch, layers, cells, 1, 0, readout=readout)
    assert p.params == expected
    assert count_params(init_params(arch, layers, cells, readout, torch.tensor([0]))) == expected
    m = MODULES[arch](1, cells, layers)
    assert sum(t.numel() for t in m.parameters()) + (cells + 1 if readout == "linear" else 0) == expected


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_members_are_independent(arch):
    """No member's output or gradient depends on another member's weights or data."""
    pts = [Point(arch, 2, 3, p, s) for p, s in [(1, 0), (3, 1), (2, 2)]]
    spec = TaskSpec.of(pts)
    params = {n: v.requires_grad_() for n, v in init_params(arch, 2, 3, "sum", spec.seed).items()}
    batch = make_batch(spec, TRAIN, 0, 16)
    y = forward(arch, params, batch.x, batch.mask)
    loss1 = (y[1] - batch.y[1]).abs().mean()
    grads = torch.autograd.grad(loss1, list(params.values()))
    for g in grads:
        assert torch.all(g[0] == 0) and torch.all(g[2] == 0) and g[1].abs().sum() > 0
    # perturb member 0's weights and data: member 1's output is unchanged, bit for bit
    p2 = {n: v.detach().clone() for n, v in params.items()}
    for v in p2.values():
        v[0] += 0.3
    x2 = batch.x.clone()
    x2[0] = torch.rand_like(x2[0])
    y2 = forward(arch, p2, x2, batch.mask)
    assert torch.equal(y2[1:], y.detach()[1:])


def test_init_is_torch_default_range_and_pure():
    seeds = torch.tensor([0, 1, 0])
    p = init_params("lstm", 2, 16, "sum", seeds)
    for v in p.values():
        assert v.abs().max() <= 0.25 and v.abs().max() > 0.2     # U(-1/sqrt(16), 1/sqrt(16))
        assert torch.equal(v[0], v[2]) and not torch.equal(v[0], v[1])


def test_tbptt_cuts_gradient_not_output():
    pts = [Point("rnn", 1, 4, 6, 0, q_min=10, q_max=10)]
    spec = TaskSpec.of(pts)
    params = {n: v.double().requires_grad_() for n, v in init_params("rnn", 1, 4, "sum", spec.seed).items()}
    b = make_batch(spec, TRAIN, 0, 32)
    x = b.x.double().requires_grad_()
    y_full = forward("rnn", params, x, b.mask)
    y_cut = forward("rnn", params, x, b.mask, tbptt=3)
    assert torch.equal(y_full, y_cut)
    g_full = torch.autograd.grad(y_full.sum(), x)[0]
    g_cut = torch.autograd.grad(y_cut.sum(), x)[0]
    assert torch.all(g_full[0, :, :7] != 0)            # every step reaches the answer
    assert torch.all(g_cut[0, :, :7] == 0)              # only the last 3 steps do
    assert torch.all(g_cut[0, :, 7:] != 0)

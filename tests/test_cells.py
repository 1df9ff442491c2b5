"""The cells of memgrid.cells: the newer cells against their published implementation, the
paper's cells' fast paths against their definitions, and what every cell must do in a pack."""


import dataclasses
import math

import pytest
import torch

from memgrid.stream_mc import trained_memory_capacity
from memgrid.cells import CELLS
from memgrid.config import Point
from memgrid.fast import DIAGONAL
from memgrid.models import count_params, forward, init_params, reference_forward
from memgrid.task import TRAIN, TaskSpec, make_batch
from memgrid.train import PackTrainer

NEW = [n if n in DIAGONAL else pytest.param(n, marks=pytest.mark.slow)
       for n, c in CELLS.items() if not c.fast]
"""the cells without a fast path; those without a C kernel (memgrid.fast.DIAGONAL) train
through autograd, tens of seconds for the tests that train them: slow"""
GATED_MIN = ["mingru", "minlstm"]
BLOCKS = ["mingru_block", "minlstm_block"]


def _packed(arch, q, step, batch, layers=2, cells=3, readout="sum", **kw):
    """Two members (seeds 0, 1) of a packed stack in float64 on one batch of fixed length q:
    (params, batch, outputs `(2, batch)`), the graph kept for a backward; kw: forward's."""
    spec = TaskSpec.of([Point(arch, layers, cells, 2, s, q_min=q, q_max=q) for s in (0, 1)])
    params = {n: v.double().requires_grad_() for n, v in
              init_params(arch, layers, cells, readout, spec.seed).items()}
    b = make_batch(spec, TRAIN, step, batch)
    return params, b, forward(arch, params, b.x.double(), b.mask, **kw)


def _published(arch, params, k, layers, cells):
    """Member k of a packed stack as Feng et al.'s published modules (mingru-pytorch), one per
    layer, in float64. Their Linear has no bias: each layer reads its input with a column of
    ones appended, and the weight's last column is memgrid's bias."""
    from minGRU_pytorch.minGRU import minGRU
    from minGRU_pytorch.minLSTM import minLSTM

    names = {"mingru": ("h", "z"), "minlstm": ("h", "f", "i")}[arch]
    mods = []
    for i in range(layers):
        m = 1 if i == 0 else cells
        cls = minGRU if arch == "mingru" else minLSTM
        mod = cls(m + 1, expansion_factor=cells / (m + 1), proj_out=False).double()
        lin = mod.to_hidden_and_gate if arch == "mingru" else mod.to_hidden_and_f_i_gate
        assert lin.weight.shape == (len(names) * cells, m + 1)
        with torch.no_grad():
            lin.weight.copy_(torch.cat([torch.cat([params[f"w_{n}.{i}"][k], params[f"b_{n}.{i}"][k, :, None]], 1)
                                        for n in names]).double())
        mods.append(mod)
    return mods


def _run_published(mods, x, step_by_step):
    """x `(B, T)` -> the last layer's sum at the last step `(B,)`; the whole sequence at once
    (the published parallel scan in log space) or one step at a time (its sequential mode)."""
    h = x.unsqueeze(-1)
    for mod in mods:
        inp = torch.cat([h, torch.ones_like(h[..., :1])], -1)
        if step_by_step:
            prev, outs = None, []
            for t in range(inp.shape[1]):
                out, prev = mod(inp[:, t:t + 1], prev, return_next_prev_hidden=True)
                outs.append(out)
            h = torch.cat(outs, 1)
        else:
            h = mod(inp)
    return h[:, -1].sum(-1)


@pytest.mark.parametrize("arch", GATED_MIN)
@pytest.mark.parametrize("step_by_step", [False, True])
def test_new_cells_are_the_published_ones(arch, step_by_step):
    """Outputs and gradients of every member of a packed 2-layer stack equal the published
    modules holding its weights (float64), in their parallel scan and step by step."""
    layers, cells = 2, 3
    params, b, y = _packed(arch, 7, 3, 16)
    y.pow(2).sum().backward()
    for k in range(2):
        mods = _published(arch, {n: v.detach() for n, v in params.items()}, k, layers, cells)
        ref = _run_published(mods, b.x[k].double(), step_by_step)
        torch.testing.assert_close(y[k].detach(), ref, atol=1e-12, rtol=1e-10)
        ref.pow(2).sum().backward()
        lin = [m.to_hidden_and_gate if arch == "mingru" else m.to_hidden_and_f_i_gate for m in mods]
        names = {"mingru": ("h", "z"), "minlstm": ("h", "f", "i")}[arch]
        for i, l in enumerate(lin):
            for j, n in enumerate(names):
                g = l.weight.grad[j * cells:(j + 1) * cells]
                torch.testing.assert_close(params[f"w_{n}.{i}"].grad[k], g[:, :-1], atol=1e-10, rtol=1e-8)
                torch.testing.assert_close(params[f"b_{n}.{i}"].grad[k], g[:, -1], atol=1e-10, rtol=1e-8)


def _minlm_layers(arch, layers, cells):
    """minLM's layers (mingru-pytorch's minLM with its convolution enabled, minGRU or minLSTM
    at expansion 1) in float64, each after a Linear input projection: [(proj, conv, norm, rnn,
    ff_norm, ff)] and memgrid's parameter names -> (module, attribute, index): memgrid's
    parameter is ``getattr(module, attribute)[index]``."""
    from minGRU_pytorch.minLM import minLM

    lm = minLM(num_tokens=2, dim=cells, depth=layers, expansion=1, enable_conv=True,
               use_lstm=arch == "minlstm_block").double()
    gates = {"mingru_block": ("h", "z"), "minlstm_block": ("h", "f", "i")}[arch]
    blocks, names, c, every = [], {}, cells, slice(None)
    for i, (conv, norm, rnn, ff_norm, ff, dropout) in enumerate(lm.layers):
        proj = torch.nn.Linear(1 if i == 0 else cells, cells).double()
        lin = rnn.to_hidden_and_gate if arch == "mingru_block" else rnn.to_hidden_and_f_i_gate
        assert dropout is None and lin.bias is None and isinstance(rnn.to_out, torch.nn.Identity)
        assert lin.weight.shape == (len(gates) * c, c) and conv.kernel_size == 3
        blocks.append((proj, conv, norm, rnn, ff_norm, ff))
        names.update({f"{n}.{i}": v for n, v in {
            "w_in": (proj, "weight", every), "b_in": (proj, "bias", every),
            "w_conv": (conv.net[0], "weight", (every, 0)), "b_conv": (conv.net[0], "bias", every),
            "w_mix": (conv.net[1], "weight", (every, every, 0)),
            "b_mix": (conv.net[1], "bias", every), "norm_rnn": (norm, "weight", every),
            **{f"w_{g}": (lin, "weight", slice(j * c, (j + 1) * c)) for j, g in enumerate(gates)},
            "norm_ff": (ff_norm, "weight", every), "w_ff1": (ff[0], "weight", every),
            "b_ff1": (ff[0], "bias", every), "w_ff2": (ff[2], "weight", every),
            "b_ff2": (ff[2], "bias", every)}.items()})
    return blocks, names


def _run_minlm_layers(blocks, u):
    """u `(B, T)` -> the last layer's outputs `(B, T, c)`, its rnn's outputs (its states) and
    its convolution's inputs, each `(B, T, c)`: minLM's layer loop after each projection."""
    x = u.unsqueeze(-1)
    for proj, conv, norm, rnn, ff_norm, ff in blocks:
        x = conv_in = proj(x)
        x = conv(x) + x
        x = (h := rnn(norm(x))) + x
        x = ff(ff_norm(x)) + x
    return x, h, conv_in


@pytest.mark.parametrize("arch", BLOCKS)
def test_blocks_are_minlms_layers(arch):
    """Every member of a packed 2-layer block stack equals minLM's layers after a Linear input
    projection, holding the member's weights (float64): the linear readout of the last
    layer's last output, that layer's last Cell.read (the rnn's state, the convolution's
    window of the last two inputs) and every parameter's gradient, the readout's included."""
    layers, cells, batch, q = 2, 4, 3, 6
    params, b, (y, reads) = _packed(arch, q, 1, batch, layers, cells, "linear",
                                    return_states=True)
    y.pow(2).sum().backward()
    for k in range(2):
        blocks, names = _minlm_layers(arch, layers, cells)
        assert set(names) | {"w_out", "b_out"} == set(params)
        assert sum(p.numel() for blk in blocks for mod in blk for p in mod.parameters()) \
            == Point(arch, layers, cells, 1, 0).params
        with torch.no_grad():
            for n, (mod, attr, idx) in names.items():
                getattr(mod, attr)[idx].copy_(params[n][k])
        w_out, b_out = (params[n][k].detach().clone().requires_grad_() for n in ("w_out", "b_out"))
        out, h, conv_in = _run_minlm_layers(blocks, b.x[k].double())
        ref = out[:, -1] @ w_out + b_out
        torch.testing.assert_close(y[k].detach(), ref, atol=1e-12, rtol=1e-10)
        window = conv_in[:, -2:].permute(2, 1, 0).reshape(2 * cells, batch)    # oldest first
        torch.testing.assert_close(reads[-1][k].detach(), torch.cat([h[:, -1].T, window]),
                                   atol=1e-12, rtol=1e-10)
        ref.pow(2).sum().backward()
        for n, (mod, attr, idx) in names.items():
            torch.testing.assert_close(params[n].grad[k], getattr(mod, attr).grad[idx],
                                       atol=1e-10, rtol=1e-8, msg=n)
        torch.testing.assert_close(params["w_out"].grad[k], w_out.grad, atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(params["b_out"].grad[k], b_out.grad, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("arch", BLOCKS)
def test_blocks_init_is_the_published_modules(arch):
    """Every parameter is drawn as its published module's default: U(-b, b), b = 1/sqrt(fan
    in) of its Linear's or Conv1d's weight (torch's fan in), ones for an RMSNorm; a function of
    the seed alone."""
    layers, cells = 2, 32
    a = init_params(arch, layers, cells, "sum", torch.tensor([3, 4]))
    alone = init_params(arch, layers, cells, "sum", torch.tensor([4]))
    for n, (mod, attr, idx) in _minlm_layers(arch, layers, cells)[1].items():
        assert torch.equal(a[n][1], alone[n][0]), n
        if isinstance(mod, torch.nn.RMSNorm):
            assert torch.equal(a[n], torch.ones_like(a[n])), n
            continue
        bound = 1 / math.sqrt(torch.nn.init._calculate_fan_in_and_fan_out(mod.weight)[0])
        assert getattr(mod, attr).abs().max() <= bound, n          # the module's own draw
        assert bound * 0.8 < a[n].abs().max() <= bound, n


@pytest.mark.parametrize("arch", [*BLOCKS, "lru_block", "mamba", "mamba_complex"])
def test_a_late_sequence_runs_as_alone(arch):
    """A sequence that starts late in a packed batch (its earlier steps masked) gives what it
    gives alone from its first step (float64): the convolution's window holds zeros, not the
    projection of the padding, before it; the padding read as inputs would change it."""
    batch = 8
    spec = TaskSpec.of([Point(arch, 2, 3, 2, s, q_min=3, q_max=7) for s in (0, 1)])
    params = {n: v.double() for n, v in init_params(arch, 2, 3, "sum", spec.seed).items()}
    b = make_batch(spec, TRAIN, 2, batch)
    x = b.x.double()
    y = forward(arch, params, x, b.mask)
    unmasked = forward(arch, params, x, torch.ones_like(b.mask))
    assert (b.length < x.shape[2]).sum() >= 4
    for k in range(2):
        one = {n: v[k:k + 1] for n, v in params.items()}
        for j in range(batch):
            q = int(b.length[k, j])
            alone = forward(arch, one, x[k:k + 1, j:j + 1, -q:].contiguous(),
                            torch.ones(1, 1, 0, dtype=torch.bool))
            torch.testing.assert_close(y[k, j], alone[0, 0], atol=1e-12, rtol=1e-10)
            if q < x.shape[2]:
                assert (unmasked[k, j] - y[k, j]).abs() > 1e-9


def _lru_complex(w, u):
    """The LRU of Orvieto et al. (their eqs. 1 and 6-7) in complex arithmetic, one member, one
    layer, step by step: u `(T, m)` -> y `(T, c)`. Written from the paper, sharing no code."""
    lam = torch.exp(-torch.exp(w["nu_log"]) + 1j * torch.exp(w["theta_log"]))
    gamma = torch.exp(w["gamma_log"])
    B = torch.complex(w["b_re"], w["b_im"])
    C = torch.complex(w["c_re"], w["c_im"])
    x = torch.zeros(lam.shape[0], dtype=torch.complex128)
    ys = []
    for t in range(u.shape[0]):
        x = lam * x + gamma * (B @ u[t].to(torch.complex128))
        ys.append((C @ x).real + w["d"] @ u[t])
    return torch.stack(ys)


@pytest.mark.parametrize("arch,ring", [("lru", (0.0, 1.0, 2 * torch.pi)),
                                       ("lru_ring", (0.9, 1.0, torch.pi / 10))])
def test_lru_is_the_papers_complex_recurrence(arch, ring):
    """Outputs and gradients of a packed 2-layer LRU equal the paper's complex recurrence
    (float64), and its init puts every |lambda| on its ring (|lambda|^2 uniform on [r_min^2,
    r_max^2]) with its phase in [0, max_phase] and gamma = sqrt(1 - |lambda|^2)."""
    layers = 2
    params, b, y = _packed(arch, 6, 1, 8)
    y.pow(2).sum().backward()
    for k in range(2):
        ref_w = {n: v.detach()[k].clone().requires_grad_() for n, v in params.items()}
        h = b.x[k].double().T.unsqueeze(-1)                             # (T, B, 1)
        for i in range(layers):
            w = {n.split(".")[0]: v for n, v in ref_w.items() if n.endswith(f".{i}")}
            h = torch.stack([_lru_complex(w, h[:, j]) for j in range(h.shape[1])], 1)   # (T, B, c)
        ref = h[-1].sum(-1)
        torch.testing.assert_close(y[k].detach(), ref, atol=1e-10, rtol=1e-9)
        ref.pow(2).sum().backward()
        for n, v in ref_w.items():
            torch.testing.assert_close(params[n].grad[k], v.grad, atol=1e-9, rtol=1e-8)
    r_min, r_max, max_phase = ring
    init = init_params(arch, 1, 400, "sum", torch.tensor([0]))
    mod = torch.exp(-torch.exp(init["nu_log.0"]))
    assert r_min <= mod.min() and mod.max() < r_max
    assert abs((mod ** 2).mean().item() - (r_min ** 2 + r_max ** 2) / 2) < 0.05
    torch.testing.assert_close(torch.exp(init["gamma_log.0"]), torch.sqrt(1 - mod ** 2))
    phase = torch.exp(init["theta_log.0"])
    assert 0 < phase.min() and phase.max() < max_phase and phase.max() > 0.9 * max_phase


LRU_NAMES = ("nu_log", "theta_log", "gamma_log", "b_re", "b_im", "c_re", "c_im", "d")


def _lru_sequence_layers(params, k, layers, cells):
    """Member k of a packed `lru_block` stack as the paper's sequence layer in torch.nn
    modules (float64), each after a Linear input projection: [(proj, norm, lru, out1, out2)],
    lru the LRU's parameters by name, and memgrid's parameter names -> the reference's
    tensors, holding member k's values."""
    blocks, names = [], {}
    for i in range(layers):
        m = 1 if i == 0 else cells
        proj, norm = torch.nn.Linear(m, cells).double(), torch.nn.LayerNorm(cells).double()
        out1, out2 = torch.nn.Linear(cells, cells).double(), torch.nn.Linear(cells, cells).double()
        lru = {n: torch.zeros_like(params[f"{n}.{i}"][k], requires_grad=True) for n in LRU_NAMES}
        mine = {"w_in": proj.weight, "b_in": proj.bias, "norm_w": norm.weight,
                "norm_b": norm.bias, **lru, "w_glu1": out1.weight, "b_glu1": out1.bias,
                "w_glu2": out2.weight, "b_glu2": out2.bias}
        with torch.no_grad():
            for n, v in mine.items():
                v.copy_(params[f"{n}.{i}"][k])
        names.update({f"{n}.{i}": v for n, v in mine.items()})
        blocks.append((proj, norm, lru, out1, out2))
    return blocks, names


def _run_lru_sequence_layers(blocks, x):
    """x `(B, T)` -> the last layer's outputs `(B, T, c)`: u = proj(x); y = LRU(norm(u)), the
    complex recurrence step by step (:func:`_lru_complex`); g = GELU(y) (tanh approximation);
    u + out1(g) * sigmoid(out2(g))."""
    h = x.unsqueeze(-1)
    for proj, norm, lru, out1, out2 in blocks:
        u = proj(h)
        z = norm(u)
        g = torch.nn.functional.gelu(torch.stack([_lru_complex(lru, seq) for seq in z]),
                                     approximate="tanh")
        h = u + out1(g) * torch.sigmoid(out2(g))
    return h


def test_lru_block_is_the_papers_sequence_layer():
    """Every member of a packed 2-layer `lru_block` stack equals the paper's sequence layer
    (LayerNorm, LRU, GELU, GLU, skip) after a Linear input projection, written from the paper
    with torch.nn modules and the complex recurrence, holding the member's weights (float64):
    the linear readout of the last layer's last output and every parameter's gradient."""
    layers, cells, batch, q = 2, 4, 3, 6
    params, b, y = _packed("lru_block", q, 1, batch, layers, cells, "linear")
    y.pow(2).sum().backward()
    for k in range(2):
        blocks, names = _lru_sequence_layers({n: v.detach() for n, v in params.items()}, k,
                                             layers, cells)
        assert set(names) | {"w_out", "b_out"} == set(params)
        w_out, b_out = (params[n][k].detach().clone().requires_grad_() for n in ("w_out", "b_out"))
        ref = _run_lru_sequence_layers(blocks, b.x[k].double())[:, -1] @ w_out + b_out
        torch.testing.assert_close(y[k].detach(), ref, atol=1e-12, rtol=1e-10)
        ref.pow(2).sum().backward()
        for n, v in [*names.items(), ("w_out", w_out), ("b_out", b_out)]:
            torch.testing.assert_close(params[n].grad[k], v.grad, atol=1e-10, rtol=1e-8, msg=n)


def test_lru_block_init():
    """The projections draw torch's Linear init, U(-b, b), b = 1/sqrt(fan in); the LayerNorm
    starts at ones and zeros; the LRU, reading c channels in every layer, draws `lru`'s init
    for c inputs (B's entries N(0, 1/2c)); a function of the seed alone."""
    layers, cells = 2, 64
    a = init_params("lru_block", layers, cells, "sum", torch.tensor([3, 4]))
    alone = init_params("lru_block", layers, cells, "sum", torch.tensor([4]))
    for n, v in a.items():
        assert torch.equal(v[1], alone[n][0]), n
        base, layer = n.split(".")
        if base.startswith("norm"):
            assert torch.equal(v, torch.full_like(v, float(base == "norm_w"))), n
        elif base in ("w_in", "b_in", "w_glu1", "b_glu1", "w_glu2", "b_glu2"):
            bound = 1 / math.sqrt(1 if base.endswith("_in") and layer == "0" else cells)
            assert bound * 0.8 < v.abs().max() <= bound, n
        elif base in ("b_re", "b_im"):
            assert abs(v.std().item() * math.sqrt(2 * cells) - 1) < 0.05, n
    mod = torch.exp(-torch.exp(a["nu_log.0"]))
    torch.testing.assert_close(torch.exp(a["gamma_log.0"]), torch.sqrt(1 - mod ** 2))


def test_lru_real_is_a_real_diagonal_recurrence():
    """`lru_real` is x' = lambda x + gamma B u, y = C x + D u with real lambda in (0, 1): a
    plain loop, one member, one sequence at a time (float64), outputs and gradients."""
    layers = 2
    params, b, y = _packed("lru_real", 6, 1, 8)
    y.pow(2).sum().backward()
    for k in range(2):
        ref_w = {n: v.detach()[k].clone().requires_grad_() for n, v in params.items()}
        outs = []
        for j in range(b.x.shape[1]):
            seq = [u.reshape(1) for u in b.x[k, j].double()]
            for i in range(layers):
                w = {n.split(".")[0]: v for n, v in ref_w.items() if n.endswith(f".{i}")}
                lam, gamma = torch.exp(-torch.exp(w["nu_log"])), torch.exp(w["gamma_log"])
                x, ys = torch.zeros(lam.shape[0], dtype=torch.float64), []
                for u in seq:
                    x = lam * x + gamma * (w["b"] @ u)
                    ys.append(w["c"] @ x + w["d"] @ u)
                seq = ys
            outs.append(seq[-1].sum())
        ref = torch.stack(outs)
        torch.testing.assert_close(y[k].detach(), ref, atol=1e-10, rtol=1e-9)
        ref.pow(2).sum().backward()
        for n, v in ref_w.items():
            torch.testing.assert_close(params[n].grad[k], v.grad, atol=1e-9, rtol=1e-8)


def _mamba_block(params, k, i, m, cells, pscan):
    """Layer i of member k as mambapy's MambaBlock (float64) with a biased input projection."""
    from mambapy.mamba import MambaBlock, MambaConfig

    from memgrid.cells import MAMBA_CONV, S6_STATE

    cfg = MambaConfig(d_model=m, n_layers=1, d_state=S6_STATE, expand_factor=cells // m,
                      d_conv=MAMBA_CONV, dt_rank=1, bias=True, conv_bias=True, pscan=pscan)
    blk = MambaBlock(cfg).double()
    assert blk.in_proj.weight.shape == (2 * cells, m)
    with torch.no_grad():
        for mod, name in [(blk.in_proj.weight, "w_in"), (blk.in_proj.bias, "b_in"),
                          (blk.conv1d.bias, "b_conv"), (blk.x_proj.weight, "w_x"),
                          (blk.dt_proj.weight, "w_dt"), (blk.dt_proj.bias, "b_dt"),
                          (blk.A_log, "a_log"), (blk.D, "d")]:
            mod.copy_(params[f"{name}.{i}"][k])
        blk.conv1d.weight.copy_(params[f"w_conv.{i}"][k][:, None])
    return blk


@pytest.mark.parametrize("arch", ["mamba", "s6_bare"])
def test_ssm_lin_starts_a_on_the_real_part_of_s4d_lin(arch):
    """The `_lin` cells draw the same weights as Mamba's init from the same seed, but for A,
    which starts at -1/2 for every channel and state number (S4D-real: -(1..n)); they compute
    the same function of those weights."""
    seeds = torch.tensor([3, 4])
    real, lin = (init_params(a, 2, 5, "sum", seeds) for a in (arch, f"{arch}_lin"))
    assert real.keys() == lin.keys()
    for n in real:
        if n.startswith("a_log"):
            assert torch.equal(-torch.exp(lin[n]), torch.full_like(lin[n], -0.5)), n
            assert torch.equal(-torch.exp(real[n][0, 0]), -torch.arange(1.0, 5.0)), n
        else:
            assert torch.equal(real[n], lin[n]), n
    spec = TaskSpec.of([Point(arch, 2, 5, 2, s, q_min=6, q_max=6) for s in (3, 4)])
    b = make_batch(spec, TRAIN, 0, 8)
    torch.testing.assert_close(reference_forward(f"{arch}_lin", lin, b.x, b.mask),
                               reference_forward(arch, lin, b.x, b.mask), rtol=0, atol=0)


@pytest.mark.parametrize("pscan", [False, True])
def test_mamba_is_mambapys_block(pscan):
    """A packed 2-layer `mamba` equals mambapy's MambaBlock (input projection with its bias,
    causal depthwise convolution, SiLU, selective scan, SiLU gate; its sequential loop and its
    parallel scan) holding the member's weights, up to its output projection, which memgrid
    leaves to the next layer and the readout: outputs and every parameter's gradient. mambapy
    takes A and D through float32, hence the tolerance."""
    layers, cells = 2, 6
    params, b, y = _packed("mamba", 7, 2, 8, layers, cells)
    y.sum().backward()
    names = ["w_in", "b_in", "w_conv", "b_conv", "w_x", "w_dt", "b_dt", "a_log", "d"]
    for k in range(2):
        h = b.x[k].double().unsqueeze(-1)                               # (B, T, 1)
        blocks = []
        for i in range(layers):
            blk = _mamba_block({n: v.detach() for n, v in params.items()}, k, i,
                               1 if i == 0 else cells, cells, pscan)
            seen = []
            blk.out_proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
            blk(h)
            h = seen[0]                                                  # (B, T, c)
            blocks.append(blk)
        ref = h[:, -1].sum(-1)
        torch.testing.assert_close(y[k].detach(), ref, atol=1e-5, rtol=1e-5)
        ref.sum().backward()
        for i, blk in enumerate(blocks):
            got = dict(zip(names, [blk.in_proj.weight.grad, blk.in_proj.bias.grad,
                                   blk.conv1d.weight.grad[:, 0], blk.conv1d.bias.grad,
                                   blk.x_proj.weight.grad, blk.dt_proj.weight.grad,
                                   blk.dt_proj.bias.grad, blk.A_log.grad, blk.D.grad]))
            for n in names:
                torch.testing.assert_close(params[f"{n}.{i}"].grad[k], got[n], atol=1e-5,
                                           rtol=1e-4, msg=f"{n}.{i}")


def _mamba_complex_layer(w, u):
    """One `mamba_complex` layer of one member from the equations of state-spaces/mamba's
    selective_scan_ref for a complex A, in complex arithmetic, step by step: u `(T, m)` ->
    `(T, c)`. B and C take x_proj's outputs in (real, imaginary) pairs; y = 2 Re(C . h)."""
    F = torch.nn.functional
    c, width = w["w_conv"].shape
    n, r = w["a_log"].shape[1], w["w_dt"].shape[1]
    x, z = (u @ w["w_in"].T + w["b_in"]).chunk(2, -1)
    x = torch.cat([x.new_zeros(width - 1, c), x])                     # zero-padded, causal
    A = torch.complex(-torch.exp(w["a_log"]), w["a_im"])
    h, ys = torch.zeros(c, n, dtype=torch.complex128), []
    for t in range(u.shape[0]):
        v = F.silu((x[t:t + width].T * w["w_conv"]).sum(-1) + w["b_conv"])
        dbc = w["w_x"] @ v
        delta = F.softplus(w["w_dt"] @ dbc[:r] + w["b_dt"])
        bc = dbc[r:].reshape(2, n, 2)                                 # [B, C], (re, im) pairs
        B, C = torch.complex(bc[..., 0], bc[..., 1])
        h = torch.exp(delta[:, None] * A) * h + (delta * v)[:, None] * B
        ys.append(((h @ C).real * 2 + w["d"] * v) * F.silu(z[t]))
    return torch.stack(ys)


def test_mamba_complex_is_the_reference_complex_scan():
    """A packed 2-layer `mamba_complex` equals `mamba`'s block with the complex selective scan
    of state-spaces/mamba's reference, written with torch complex numbers (float64): the last
    layer's output at the last step and every parameter's gradient."""
    layers, cells = 2, 4
    params, b, y = _packed("mamba_complex", 6, 2, 3, layers, cells)
    y.pow(2).sum().backward()
    for k in range(2):
        ref_w = {n: v.detach()[k].clone().requires_grad_() for n, v in params.items()}
        outs = []
        for j in range(b.x.shape[1]):
            h = b.x[k, j].double()[:, None]                                  # (T, 1)
            for i in range(layers):
                h = _mamba_complex_layer({n.split(".")[0]: v for n, v in ref_w.items()
                                          if n.endswith(f".{i}")}, h)
            outs.append(h[-1].sum())
        ref = torch.stack(outs)
        torch.testing.assert_close(y[k].detach(), ref, atol=1e-10, rtol=1e-10)
        ref.pow(2).sum().backward()
        for n, v in ref_w.items():
            torch.testing.assert_close(params[n].grad[k], v.grad, atol=1e-10, rtol=1e-10, msg=n)


def test_mamba_complex_starts_a_on_s4d_lin():
    """A starts on S4D-Lin, -1/2 + i pi k for state k = 0..n-1 of every channel; every other
    parameter is `mamba`'s draw: in a 1-layer stack from the same seed (W_x's first rows, the
    same stream), in a deeper layer (m = c) from the same stream."""
    from memgrid.cells import S6_STATE

    seeds, cells = torch.tensor([3, 4]), 5
    cplx = init_params("mamba_complex", 2, cells, "sum", seeds)
    for i in range(2):
        assert torch.equal(-torch.exp(cplx[f"a_log.{i}"]), torch.full((2, cells, S6_STATE), -0.5))
        torch.testing.assert_close(cplx[f"a_im.{i}"], torch.tensor(
            [math.pi * k for k in range(S6_STATE)]).expand(2, cells, -1))
    one = init_params("mamba", 1, cells, "sum", seeds)
    assert set(one) | {"a_im.0"} == {n for n in cplx if n.endswith(".0")}
    for n in one:
        if not n.startswith("a_log"):
            assert torch.equal(cplx[n][:, :one[n].shape[1]], one[n]), n
    assert cplx["w_x.0"].shape[1] == one["w_x.0"].shape[1] + 2 * S6_STATE
    drawn = {}
    for i, (n, shape) in enumerate(CELLS["mamba_complex"].weights(cells, cells).items()):
        def draw(count, i=i):                                   # a fresh stream per parameter
            return torch.rand(2, count, generator=torch.Generator().manual_seed(i))
        v = CELLS["mamba_complex"].init(n, shape, cells, cells, draw, drawn)
        if n not in ("w_x", "a_log", "a_im"):
            assert torch.equal(v, CELLS["mamba"].init(n, shape, cells, cells, draw, drawn)), n
        drawn[n] = v


@pytest.mark.parametrize("pscan", [False, True])
def test_s6_bare_is_mambapys_selective_scan(pscan):
    """A packed 2-layer `s6_bare` equals mambapy's MambaBlock.ssm (sequential loop and
    parallel scan) holding the member's weights, after the layer's affine input projection;
    outputs and gradients."""
    from mambapy.mamba import MambaBlock, MambaConfig

    from memgrid.cells import S6_STATE

    layers, cells = 2, 3
    params, b, y = _packed("s6_bare", 7, 2, 8)
    y.sum().backward()
    for k in range(2):
        h = b.x[k].double().unsqueeze(-1)                               # (B, T, 1)
        blocks = []
        for i in range(layers):
            cfg = MambaConfig(d_model=cells, n_layers=1, d_state=S6_STATE, expand_factor=1,
                              dt_rank=1, pscan=pscan)
            blk = MambaBlock(cfg).double()
            with torch.no_grad():
                blk.x_proj.weight.copy_(params[f"w_x.{i}"][k])
                blk.dt_proj.weight.copy_(params[f"w_dt.{i}"][k])
                blk.dt_proj.bias.copy_(params[f"b_dt.{i}"][k])
                blk.A_log.copy_(params[f"a_log.{i}"][k])
                blk.D.copy_(params[f"d.{i}"][k])
            w_in = params[f"w_in.{i}"][k].detach().clone().requires_grad_()
            b_in = params[f"b_in.{i}"][k].detach().clone().requires_grad_()
            blocks.append((blk, w_in, b_in))
            h = blk.ssm(h @ w_in.T + b_in, None)
        ref = h[:, -1].sum(-1)
        torch.testing.assert_close(y[k].detach(), ref, atol=1e-5, rtol=1e-5)
        ref.sum().backward()
        for i, (blk, w_in, b_in) in enumerate(blocks):
            torch.testing.assert_close(params[f"w_in.{i}"].grad[k], w_in.grad, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(params[f"b_in.{i}"].grad[k], b_in.grad, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(params[f"w_x.{i}"].grad[k], blk.x_proj.weight.grad, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(params[f"b_dt.{i}"].grad[k], blk.dt_proj.bias.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", list(CELLS))
def test_output_reads_the_memory_when_the_last_input_is_zero(arch):
    """Two sequences that differ only before their last input, which is 0, give different
    outputs: no cell's output is forced proportional to its current input (a bare SSM fed
    through a projection without a bias gives exactly its readout's bias there)."""
    params = {n: v.double() for n, v in init_params(arch, 2, 4, "sum", torch.tensor([0, 1])).items()}
    x = torch.tensor([[0.9, 0.1, 0.7, 0.0], [0.2, 0.8, 0.3, 0.0]], dtype=torch.float64)
    y = reference_forward(arch, params, x.expand(2, 2, 4).contiguous(),
                          torch.ones(2, 2, 0, dtype=torch.bool))
    assert (y[:, 0] - y[:, 1]).abs().min() > 1e-9, y


@pytest.mark.parametrize("arch", [n for n, c in CELLS.items() if c.fast])
@pytest.mark.parametrize("grad", [False, True])
def test_fast_paths_compute_the_definition(arch, grad):
    """RNN, LSTM, GRU: memgrid.models' fast path (the C kernel here) and the cell's definition
    under autograd give the same outputs and gradients to float rounding (float64), padded
    sequences and a 2-layer stack included."""
    pts = [Point(arch, 2, 4, p, s, q_min=3, q_max=8) for p, s in [(1, 0), (3, 1)]]
    spec = TaskSpec.of(pts)
    b = make_batch(spec, TRAIN, 5, 32)
    runs = []
    for f in (forward, reference_forward):
        params = {n: v.double().requires_grad_(grad) for n, v in
                  init_params(arch, 2, 4, "sum", spec.seed).items()}
        with torch.set_grad_enabled(grad):
            y = f(arch, params, b.x.double(), b.mask)
            if grad:
                y.pow(2).sum().backward()
        runs.append((y.detach(), {n: v.grad for n, v in params.items()}))
    (y_fast, g_fast), (y_def, g_def) = runs
    torch.testing.assert_close(y_fast, y_def, atol=1e-12, rtol=1e-10)
    for n in g_def:
        if grad:
            torch.testing.assert_close(g_fast[n], g_def[n], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("arch,layers,cells,readout,expected", [
    ("mingru", 1, 5, "sum", 2 * (5 + 5)),
    ("mingru", 3, 4, "linear", 2 * (4 + 4) + 2 * 2 * (16 + 4) + 4 + 1),
    ("minlstm", 2, 3, "sum", 3 * (3 + 3) + 3 * (9 + 3)),
    ("lru", 2, 3, "sum", (3 * 3 + 3 * 1 * 3 + 2 * 9) + (3 * 3 + 3 * 9 + 2 * 9)),
    ("lru_real", 2, 3, "sum", (2 * 3 + 2 * 1 * 3 + 9) + (2 * 3 + 2 * 9 + 9)),
    ("s6_bare", 1, 20, "sum", 20 + 20 + (2 + 8) * 20 + 20 * 2 + 20 + 20 * 4 + 20),  # dt_rank 2
    ("mamba", 2, 3, "linear", (6 + 6 + 12 + 3 + 9 * 3 + 3 + 3 + 12 + 3)
                              + (18 + 6 + 12 + 3 + 9 * 3 + 3 + 3 + 12 + 3) + 3 + 1),
    # mamba's, with x_proj's 2n more rows (B and C complex) and A's imaginary part (c x n)
    ("mamba_complex", 2, 3, "linear", (6 + 6 + 12 + 3 + 17 * 3 + 3 + 3 + 2 * 12 + 3)
                                      + (18 + 6 + 12 + 3 + 17 * 3 + 3 + 3 + 2 * 12 + 3) + 3 + 1),
    # input projection, depthwise and 1x1 convolutions, RMSNorm, rnn (2 or 3 c x c), RMSNorm, FF
    ("mingru_block", 1, 5, "sum", (5 + 5) + (15 + 5) + (25 + 5) + 5 + 50 + 5
                                  + (100 + 20 + 100 + 5)),
    ("minlstm_block", 2, 3, "linear", (3 + 3) + (9 + 3) + (9 + 3) + 3 + 27 + 3 + (36 + 12 + 36 + 3)
                                      + (9 + 3) + (9 + 3) + (9 + 3) + 3 + 27 + 3
                                      + (36 + 12 + 36 + 3) + 3 + 1),
    # input projection, LayerNorm, LRU (nu, theta, gamma; B, C complex; D c x c), GLU
    ("lru_block", 1, 5, "sum", (5 + 5) + 2 * 5 + (3 * 5 + 4 * 25 + 25) + 2 * (25 + 5)),
    ("lru_block", 2, 3, "linear", (3 + 3) + 2 * 3 + (3 * 3 + 4 * 9 + 9) + 2 * (9 + 3)
                                  + (9 + 3) + 2 * 3 + (3 * 3 + 4 * 9 + 9) + 2 * (9 + 3) + 3 + 1),
])
def test_parameter_counts_in_closed_form(arch, layers, cells, readout, expected):
    """Point.params (from the definition's shapes) is the closed form and what init makes."""
    p = Point(arch, layers, cells, 1, 0, readout=readout)
    assert p.params == expected
    params = init_params(arch, layers, cells, readout, torch.tensor([0]))
    assert count_params(params) == expected


@pytest.mark.parametrize("arch", GATED_MIN)
def test_new_cells_init_is_a_linear_layers(arch):
    """U(-1/sqrt(m), 1/sqrt(m)), m the layer's inputs (torch.nn.Linear's), a function of the
    seed alone."""
    a = init_params(arch, 2, 6, "sum", torch.tensor([3, 4]))
    b = init_params(arch, 2, 6, "sum", torch.tensor([4]))
    for n, v in a.items():
        m = 1 if n.endswith(".0") else 6
        assert v.abs().max() <= 1 / m ** 0.5 and v.abs().max() > 0.6 / m ** 0.5, n
        assert torch.equal(v[1], b[n][0]), n


@pytest.mark.parametrize("arch", NEW)
def test_new_cells_learn_the_last_element(arch):
    """p = 1 (the last element) is learned: evaluation loss below memgrid's threshold 0.05
    within 300 epochs, with the linear readout (their states are positive, g(.) > 0, so the
    paper's sum readout can only approach targets near 0)."""
    p = Point(arch, 1, 4, 1, 0, q_min=4, q_max=6, lr=0.01, optimizer="adam", batch_size=64,
              steps_per_epoch=2, max_epochs=300, eval_every=50, eval_size=256, plateau=False,
              mc_length=0, readout="linear")
    tr = PackTrainer([p])
    tr.run()
    row = tr.finished[0][0]
    assert row["loss"] < 0.05, row["loss"]


def packed_and_alone(arch, device="cpu", epochs=40):
    """Point (arch, l 2, c 4, p 1, seed 5) trained inside a pack with longer sequences and other
    learning rates, and alone: [(trainer, (row, curve, weights) of that point)] for each."""
    kw = dict(max_epochs=epochs, eval_every=10, eval_size=64, q_min=3, q_max=5, batch_size=32,
              plateau=False, mc_length=0)
    alone = Point(arch, 2, 4, 1, 5, lr=0.03, **kw)
    others = [Point(arch, 2, 4, p, s, lr=lr, **kw) for p, s, lr in [(9, 1, 0.1), (4, 2, 0.01)]]
    runs = []
    for group in ([*others, alone], [alone]):
        tr = PackTrainer(group, device=device)
        tr.run()
        runs.append((tr, next(f for f in tr.finished if f[0]["seed"] == 5)))
    return runs


@pytest.mark.parametrize("arch", NEW)
def test_new_cells_are_pack_invariant(arch):
    """A point trained alone and inside a pack with longer sequences and other learning rates
    ends with the same weights and curve, bit for bit (a cell on autograd: 10 epochs, not 40)."""
    (packed, (row_p, curve_p, w_p)), (single, (row_s, curve_s, w_s)) = packed_and_alone(
        arch, epochs=40 if arch in DIAGONAL else 10)
    assert packed.T > single.T
    for n in w_s:
        assert torch.equal(w_p[n], w_s[n]), n
    assert [c["eval_loss"] for c in curve_p] == [c["eval_loss"] for c in curve_s]


@pytest.mark.parametrize("arch", NEW)
def test_new_cells_stream_mc_within_their_units(arch):
    """Jaeger's MC of a trained network, read from every layer's Cell.read, stays within the
    N those reads hold (a linear readout of N numbers cannot hold more)."""
    p = Point(arch, 2, 3, 2, 0, q_min=4, q_max=6, lr=0.01, optimizer="adam", max_epochs=20,
              steps_per_epoch=2, batch_size=32, eval_every=10, eval_size=64, plateau=False,
              mc_length=0)
    tr = PackTrainer([p])
    tr.run()
    weights = {n: v.unsqueeze(0) for n, v in tr.finished[0][2].items()}
    mc, _ = trained_memory_capacity(arch, weights, torch.tensor([0]), length=500)
    assert 0 < mc.item() <= p.units + 1e-6


def test_a_cell_is_one_definition(monkeypatch):
    """A cell added as the README says, by its definition alone (a linear RNN, with a `w_hh`
    as the paper's cells have, but no fast path): a grid accepts it, its parameter count and N
    come from the definition, and a pack of it trains, stores rows with its stream MC, and
    gets a memory limit."""
    from memgrid.analysis import memory_limits
    from memgrid.cells import Cell, affine
    from memgrid.grid_file import parse_grid

    def step(w, x, state):
        (h,) = state
        h = torch.baddbmm(affine(w["w_ih"], w["b"], x), w["w_hh"], h)
        return h, (h,)

    toy = Cell("toy", lambda m, c: {"w_ih": (c, m), "w_hh": (c, c), "b": (c,)}, step)
    monkeypatch.setitem(CELLS, "toy", toy)
    grid = parse_grid({"name": "toy", "axes": {"arch": ["toy"], "layers": [2], "cells": [3],
                                               "position": [1, 2], "seed": [0]}}, "toy.yaml")
    pts = [dataclasses.replace(p, max_epochs=40, eval_every=20, eval_size=64, mc_length=300,
                               plateau=False, solved_loss=0.0) for p in grid.points()]
    assert pts[0].params == (3 + 9 + 3) + (9 + 9 + 3) and pts[0].units == 6
    tr = PackTrainer(pts)
    tr.run()
    rows, curves = tr.pop_finished()
    assert [r["params"] for r in rows] == [36, 36] and len(curves) == 2 * 3
    assert all(0 < r["mc_stream"] <= 6 for r in rows)
    import pandas as pd
    lim = memory_limits(pd.DataFrame(rows))
    assert lim["units"].tolist() == [6] and lim["limit"].tolist() == [2]

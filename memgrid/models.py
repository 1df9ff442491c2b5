"""Packed RNN / LSTM / GRU: K independent networks computed as one.

Every parameter is stacked over the pack, ``[K, ...]``, with torch's names and shapes behind
the K (``w_ih.0`` is ``weight_ih_l0``: ``(K, G*c, in)``; G = 1, 4, 3 gates). The cell
equations and gate orders are those of ``torch.nn.RNN`` (tanh), ``torch.nn.LSTM`` (i, f, g, o)
and ``torch.nn.GRU`` (r, z, n), so member k with torch's weights computes what the torch module
computes. ``torch.nn.RNN`` cannot be vmapped, hence the hand-written cells.

Layout: the state is ``(K, c, B)`` and the recurrence is ``W_hh @ h``, a batched matmul over K
(5-7x faster in MKL than ``(K, B, c) @ W`` at these sizes, PERF_NOTES).
"""

from __future__ import annotations

import math

import torch

from .config import GATES
from .task import INIT, key, uniform

Params = dict[str, torch.Tensor]


def param_shapes(arch: str, layers: int, cells: int, readout: str) -> dict[str, tuple[int, ...]]:
    """Per-member shapes, in a fixed order (the order is part of the init's counter)."""
    g, c = GATES[arch], cells
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        m = 1 if i == 0 else c
        shapes[f"w_ih.{i}"] = (g * c, m)
        shapes[f"w_hh.{i}"] = (g * c, c)
        shapes[f"b_ih.{i}"] = (g * c,)
        shapes[f"b_hh.{i}"] = (g * c,)
    if readout == "linear":
        shapes["w_out"] = (c,)
        shapes["b_out"] = ()
    return shapes


def init_params(arch: str, layers: int, cells: int, readout: str, seed: torch.Tensor) -> Params:
    """torch's default init, U(-1/sqrt(c), 1/sqrt(c)) for every weight and bias, drawn from the
    counter-based generator: member k's weights depend on its seed alone, not on the pack."""
    K = seed.shape[0]
    k = key(seed, INIT).reshape(K, 1)
    bound = 1.0 / math.sqrt(cells)
    params = {}
    for n, (name, shape) in enumerate(param_shapes(arch, layers, cells, readout).items()):
        numel = math.prod(shape)
        idx = torch.arange(numel, dtype=torch.int64, device=seed.device).reshape(1, numel)
        tensor_id = torch.full((1, 1), n, dtype=torch.int64, device=seed.device)
        u = uniform(k, tensor_id, idx)                                    # (K, numel)
        params[name] = ((2 * u - 1) * bound).reshape(K, *shape)
    return params


def count_params(params: Params) -> int:
    """Parameters of one member."""
    return sum(p[0].numel() for p in params.values())


def forward(arch: str, params: Params, x: torch.Tensor, mask: torch.Tensor, tbptt: int = 0,
            return_states: bool = False) -> torch.Tensor:
    """Outputs `(K, B)` for right-aligned inputs `x` `(K, B, T)`.

    `mask` `(K, B, P)`: for the first P steps, False where a sequence has not started; there
    the state stays at its initial zero, so each sequence runs as if alone.
    `tbptt` > 0 stops gradients every `tbptt` steps, counted back from the answer.
    `return_states`: also return the last layer's states, a list of T tensors `(K, c, B)`.

    Every op works on one step's `(K, *, B)` slices, never on a reduction over time: a pack that
    pads to a longer T then only adds exact zeros (padded steps come first and are summed last
    in backward), so a point's gradients are bitwise those it gets alone, in any pack.
    """
    K, B, T = x.shape
    layers = sum(1 for n in params if n.startswith("w_hh."))
    c = params["w_hh.0"].shape[-1]
    masks = mask.permute(2, 0, 1).unsqueeze(2).unbind(0)               # P x (K, 1, B)
    inp = x.unsqueeze(1).unbind(3)           # T x (K, 1, B); unbind, not x[..., t]: indexing
    for i in range(layers):                  # zero-fills a full-size grad in backward each step
        w_ih, w_hh = params[f"w_ih.{i}"], params[f"w_hh.{i}"]
        b_ih, b_hh = params[f"b_ih.{i}"], params[f"b_hh.{i}"]
        bias = (b_ih if arch == "gru" else b_ih + b_hh)[:, :, None]      # GRU keeps b_hn apart
        h = x.new_zeros(K, c, B)
        cell = x.new_zeros(K, c, B) if arch == "lstm" else None
        outs = []
        for t in range(T):
            if tbptt and t > 0 and (T - t) % tbptt == 0:
                h = h.detach()
                cell = cell.detach() if cell is not None else None
            # input projection (K, G*c, B): in = 1 is a broadcast product
            xi = torch.addcmul(bias, w_ih, inp[t]) if i == 0 else torch.baddbmm(bias, w_ih, inp[t])
            if arch == "rnn":
                h_new = torch.tanh(torch.baddbmm(xi, w_hh, h))
                c_new = None
            elif arch == "lstm":
                gates = torch.baddbmm(xi, w_hh, h)
                ig, fg, gg, og = gates.chunk(4, dim=1)
                c_new = torch.sigmoid(fg) * cell + torch.sigmoid(ig) * torch.tanh(gg)
                h_new = torch.sigmoid(og) * torch.tanh(c_new)
            else:  # gru
                gh = torch.baddbmm(b_hh[:, :, None], w_hh, h)
                xr, xz, xn = xi.chunk(3, dim=1)
                hr, hz, hn = gh.chunk(3, dim=1)
                r = torch.sigmoid(xr + hr)
                z = torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h_new = n + z * (h - n)
                c_new = None
            if t < len(masks):
                h_new = torch.where(masks[t], h_new, h)
                if c_new is not None:
                    c_new = torch.where(masks[t], c_new, cell)
            h, cell = h_new, c_new
            outs.append(h)
        inp = outs
    if "w_out" in params:
        y = (params["w_out"][:, :, None] * h).sum(1) + params["b_out"][:, None]
    else:
        y = h.sum(1)                                                       # (K, c, B) -> (K, B)
    return (y, outs) if return_states else y

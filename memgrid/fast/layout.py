"""The fused weights of the paper's cells, RNN, LSTM and GRU: the one layout that the PyTorch
fast path (memgrid.fast.stack), the C kernel (csrc/cells.c) and the cost model share.

A layer's parameters, torch's ``w_ih`` `(K, G*c, m)`, ``w_hh`` `(K, G*c, c)`, ``b_ih``,
``b_hh`` `(K, G*c)` (G gates of c rows each, in torch's gate order), are fused into one matrix
per member, `(K, R, m + 1 + c)`:

    columns: [ x or the layer below's h (m) | 1 (the bias) | own h_{t-1} (c) ]
    rows:    the gates in FUSED[arch].rows, c rows each, R = len(rows) * c

=======  ====  ==================  ==================  ==================================
arch     code  torch's gates       fused rows          rows whose pre-activation feeds a
                                                       tanh (doubled in forward)
=======  ====  ==================  ==================  ==================================
rnn      0     h                   h                   h
lstm     1     i, f, g, o          i, f, o, g          g
gru      2     r, z, n             r, z, xn, hn        xn, hn
=======  ====  ==================  ==================  ==================================

The fused rows put the activations in contiguous runs (lstm: three sigmoids, then a tanh).
A fused row's bias is ``b_ih + b_hh``, except GRU's n gate, whose two halves stay apart:
``xn = W_in x + b_in`` (zero in the h columns) and ``hn = W_hn h + b_hn`` (zero in the input
columns), since ``n = tanh(xn + r * hn)``. A member's layers lie one after another, layer 0
with m = 1 (the input), the others with m = c.

tanh(a) = 2 sigmoid(2a) - 1 (torch's CPU tanh is 4-6x slower than its sigmoid): the rows that
feed a tanh are doubled in the weights forward uses (:func:`fwd_weights`), free inside the
matmul; GRU doubles both halves of n, so that xn + r * hn comes out doubled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Fused:
    code: int
    """the cell's number in the C kernel (csrc/cells.c: RNN, LSTM, GRU)"""
    torch_gates: tuple[str, ...]
    """torch.nn's gates, in its order"""
    rows: tuple[str, ...]
    """the fused rows' gates, c rows each, in their order"""
    tanh_from: str
    """the first of the rows whose pre-activation feeds a tanh; every row from it on does"""


FUSED = {
    "rnn": Fused(0, ("h",), ("h",), "h"),
    "lstm": Fused(1, ("i", "f", "g", "o"), ("i", "f", "o", "g"), "g"),
    "gru": Fused(2, ("r", "z", "n"), ("r", "z", "xn", "hn"), "xn"),
}
"""the layout of each paper cell's fused weights (see the table above)"""
ARCH = {arch: f.code for arch, f in FUSED.items()}
"""the C kernel's number of each cell"""


def fused_rows(arch: str, c: int) -> int:
    """R, the rows of a layer's fused weights: rnn c; lstm, gru 4c."""
    return len(FUSED[arch].rows) * c


def fuse(arch: str, w_ih, w_hh, b_ih, b_hh) -> torch.Tensor:
    """A layer's torch parameters `(K, ...)` as its fused weights `(K, R, m + 1 + c)`."""
    K, _, m = w_ih.shape
    c = w_hh.shape[-1]
    if arch == "gru":
        W = w_ih.new_zeros(K, 4 * c, m + 1 + c)
        W[:, :2 * c, :m] = w_ih[:, :2 * c]
        W[:, :2 * c, m] = b_ih[:, :2 * c] + b_hh[:, :2 * c]
        W[:, :2 * c, m + 1:] = w_hh[:, :2 * c]
        W[:, 2 * c:3 * c, :m] = w_ih[:, 2 * c:]
        W[:, 2 * c:3 * c, m] = b_ih[:, 2 * c:]
        W[:, 3 * c:, m] = b_hh[:, 2 * c:]
        W[:, 3 * c:, m + 1:] = w_hh[:, 2 * c:]
        return W
    W = torch.cat([w_ih, (b_ih + b_hh).unsqueeze(2), w_hh], 2)
    if arch == "lstm":  # i, f, g, o -> i, f, o, g
        W = torch.cat([W[:, :2 * c], W[:, 3 * c:], W[:, 2 * c:3 * c]], 1)
    return W


def unfuse_grad(arch: str, gW: torch.Tensor, m: int, c: int) -> list[torch.Tensor]:
    """Gradient of the fused weights -> new tensors for (w_ih, w_hh, b_ih, b_hh)."""
    if arch == "gru":
        rz, xn, hn = gW[:, :2 * c], gW[:, 2 * c:3 * c], gW[:, 3 * c:]
        return [torch.cat([rz[..., :m], xn[..., :m]], 1),
                torch.cat([rz[..., m + 1:], hn[..., m + 1:]], 1),
                torch.cat([rz[..., m], xn[..., m]], 1), torch.cat([rz[..., m], hn[..., m]], 1)]
    if arch == "lstm":  # i, f, o, g -> i, f, g, o
        gW = torch.cat([gW[:, :2 * c], gW[:, 3 * c:], gW[:, 2 * c:3 * c]], 1)
    f = torch.contiguous_format
    return [gW[..., :m].clone(memory_format=f), gW[..., m + 1:].clone(memory_format=f),
            gW[..., m].clone(memory_format=f), gW[..., m].clone(memory_format=f)]


def fwd_weights(arch: str, W: torch.Tensor, c: int) -> torch.Tensor:
    """The fused weights as forward uses them: the rows whose pre-activation goes into a tanh
    (FUSED[arch].tanh_from on) doubled."""
    if arch == "rnn":
        return W * 2
    W = W.clone()
    W[:, FUSED[arch].rows.index(FUSED[arch].tanh_from) * c:] *= 2
    return W

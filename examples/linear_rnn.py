"""A cell of your own: a linear RNN, h' = W_ih x + W_hh h + b, written for memgrid's packed layout.

Measure it with `memgrid run examples/linear_rnn.yaml`: the grid names it by path,
`arch: ["linear_rnn.py:LINEAR_RNN"]`.

memgrid's layout: a layer reads x `(K, m, B)` (K networks, m inputs, B sequences) and holds each
state as `(K, rows, B)`; a parameter of shape `(r, m)` arrives as `(K, r, m)`.
"""

import torch

from memgrid import Cell


def weights(m, c):
    """One layer's parameters and their shapes, for m inputs and c units."""
    return {"w_ih": (c, m), "w_hh": (c, c), "b": (c,)}


def step(w, x, state):
    """One time step of one layer: (out `(K, c, B)`, new state)."""
    (h,) = state
    h = torch.baddbmm(w["b"][:, :, None], w["w_ih"], x) + torch.bmm(w["w_hh"], h)
    return h, (h,)


LINEAR_RNN = Cell("linear_rnn", weights, step, label="linear RNN")

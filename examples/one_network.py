"""A cell written for one network, as plain PyTorch: a GRU-like unit with a single gate.

memgrid lifts `step` to K networks at once with torch.func.vmap (`single_network`), so it never
sees K: x is `(m, B)`, each state `(rows, B)`, a parameter of shape `(r, m)` is `(r, m)`.
"""

import torch

from memgrid.user_cells import single_network


def weights(m, c):
    return {"w_z": (c, m + c), "b_z": (c,), "w_h": (c, m + c), "b_h": (c,)}


def step(w, x, state):
    (h,) = state
    xh = torch.cat([x, h])                                     # (m + c, B)
    z = torch.sigmoid(w["w_z"] @ xh + w["b_z"][:, None])
    cand = torch.tanh(w["w_h"] @ xh + w["b_h"][:, None])
    h = (1 - z) * h + z * cand
    return h, (h,)


GATED = single_network("one_gate", weights, step, label="one-gate unit")

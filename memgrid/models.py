"""Packed recurrent networks: K independent networks computed as one.

Every cell is defined once in :mod:`memgrid.cells`; this module holds what every cell shares:
its parameters stacked over the pack (:func:`param_shapes`, :func:`init_params`), the
definition run under autograd (:func:`reference_forward`: how a cell without a fast path
trains, and what every fast path is tested against), and :func:`forward`, which runs the
paper's cells, RNN, LSTM and GRU, by their fast path (:mod:`memgrid.fast`: the C kernel on the
CPU, hand-written PyTorch ops elsewhere) and any other cell by its definition.
"""

from __future__ import annotations

import math

import torch

from .cells import CELLS
from .fast import diagonal, stack
from .task import INIT, key, uniform

Params = dict[str, torch.Tensor]


def param_shapes(arch: str, layers: int, cells: int, readout: str) -> dict[str, tuple[int, ...]]:
    """Per-member shapes, in a fixed order (the order is part of the init's counter): the
    cell's layers (``memgrid.cells``), then the linear readout's."""
    shapes = dict(CELLS[arch].layer_shapes(layers, cells))
    if readout == "linear":
        shapes["w_out"] = (cells,)
        shapes["b_out"] = ()
    return shapes


def init_params(arch: str, layers: int, cells: int, readout: str, seed: torch.Tensor) -> Params:
    """The cell's init (``memgrid.cells``; RNN, LSTM, GRU: torch's default, U(-1/sqrt(c),
    1/sqrt(c)) for every weight and bias), drawn from the counter-based generator: member k's
    weights depend on its seed alone, not on the pack. The readout takes U(-1/sqrt(c),
    1/sqrt(c))."""
    K = seed.shape[0]
    k = key(seed, INIT).reshape(K, 1)
    cell = CELLS[arch]
    params = {}
    for n, (name, shape) in enumerate(param_shapes(arch, layers, cells, readout).items()):
        tensor_id = torch.full((1, 1), n, dtype=torch.int64, device=seed.device)

        def draw(count: int, tensor_id=tensor_id) -> torch.Tensor:
            idx = torch.arange(count, dtype=torch.int64, device=seed.device).reshape(1, count)
            return uniform(k, tensor_id, idx)                             # (K, count)

        base, _, layer = name.partition(".")
        if layer:
            m = 1 if layer == "0" else cells
            drawn = {b: params[f"{b}.{layer}"].reshape(K, -1) for b in cell.weights(m, cells)
                     if f"{b}.{layer}" in params}
            values = cell.init(base, shape, m, cells, draw, drawn)
        else:
            values = (2 * draw(math.prod(shape)) - 1) * (1.0 / math.sqrt(cells))
        params[name] = values.reshape(K, *shape)
    return params


def count_params(params: Params) -> int:
    """Parameters of one member."""
    return sum(p[0].numel() for p in params.values())


def n_layers(params: Params) -> int:
    """Layers of a stack of parameters named ``<name>.<layer>``."""
    return 1 + max(int(n.rsplit(".", 1)[1]) for n in params if "." in n)


def layer_params(params: Params, i: int) -> Params:
    """Layer i's parameters by their names in the cell's definition."""
    suffix = f".{i}"
    return {n[:-len(suffix)]: v for n, v in params.items() if n.endswith(suffix)}


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

    A cell with a fast path (``Cell.fast``) runs it (memgrid.fast.stack.hidden: the C kernel on
    the CPU, elsewhere PyTorch ops with backward by hand); minGRU, minLSTM and the LRU run
    theirs on the CPU (memgrid.fast.diagonal); each computes what :func:`reference_forward` (the cell's
    definition under autograd, op by op) computes, to float rounding. Any other cell runs
    :func:`reference_forward`. Gradients of gradients
    are not supported (nothing in memgrid takes them).
    """
    if not CELLS[arch].fast:
        layers = [v for n, v in params.items() if "." in n]       # param_shapes' order
        lib = None if return_states else diagonal.usable(arch, x, *layers)
        if lib is None:
            return reference_forward(arch, params, x, mask, tbptt, return_states)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in layers)
        return _readout(params, diagonal.hidden(lib, arch, layers, x, mask, tbptt, grad))
    flat = cell_params(params)
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in flat))
    if return_states and grad:
        return reference_forward(arch, params, x, mask, tbptt, return_states)
    h, outs = stack.hidden(arch, flat, x, mask, tbptt, return_states, grad)
    y = _readout(params, h)
    return (y, outs) if return_states else y


def cell_params(params: Params) -> list[torch.Tensor]:
    """The parameters of a cell with a fast path (torch's four per layer), layer by layer:
    w_ih, w_hh, b_ih, b_hh of layer 0, 1, ..."""
    return [params[f"{n}.{i}"] for i in range(n_layers(params))
            for n in ("w_ih", "w_hh", "b_ih", "b_hh")]


@torch.no_grad()
def kernel_states(arch: str, params: Params, x: torch.Tensor) -> torch.Tensor | None:
    """Every layer's states h_t of every member, `(K, L, T, c, B)`, for inputs `x` `(K, B, T)`
    that all start at step 0 (no mask), by the C kernel in one forward
    (memgrid.fast.stack.stack_states); None where it cannot run (then :func:`forward` with
    ``return_states``, layer by layer). Bitwise the same for a member alone and in any pack."""
    if not CELLS[arch].fast:
        return None
    return stack.stack_states(arch, cell_params(params), x)


def reference_forward(arch: str, params: Params, x: torch.Tensor, mask: torch.Tensor,
                      tbptt: int = 0, return_states: bool = False) -> torch.Tensor:
    """The same function from the cell's definition (``memgrid.cells``) under torch autograd,
    op by op: what every fast path is checked against, and how a cell without one trains and
    evaluates. With `return_states`, the last layer's ``Cell.read`` of every step, a list of T
    `(K, units, B)`."""
    cell = CELLS[arch]
    K, B, T = x.shape
    rows, zero = cell.state_rows(cells_of(arch, params)), x.new_zeros(())
    masks = mask.permute(2, 0, 1).unsqueeze(2).unbind(0)               # P x (K, 1, B)
    inp = x.unsqueeze(1).unbind(3)           # T x (K, 1, B); unbind, not x[..., t]: indexing
    for i in range(n_layers(params)):        # zero-fills a full-size grad in backward each step
        w = layer_params(params, i)
        state = tuple(x.new_zeros(K, r, B) for r in rows)
        outs, reads = [], []
        # every step at once; unbind, not [:, t]: a slice's backward zero-fills the whole
        pre = [v.unbind(1) for v in cell.pre(w, torch.stack(inp, 1))] if cell.pre else None
        for t in range(T):
            if tbptt and t > 0 and (T - t) % tbptt == 0:
                state = tuple(s.detach() for s in state)
            if pre is None:
                out, new = cell.step(w, inp[t], state)
            else:
                out, new = cell.recur(w, tuple(v[t] for v in pre), state)
            if t < len(masks):               # before a sequence starts its state stays zero
                new = tuple(torch.where(masks[t], n, s) for n, s in zip(new, state))
                out = torch.where(masks[t], out, zero)
            state = new
            outs.append(out)
            if return_states:
                reads.append(cell.read(out, state))
        inp = outs
    y = _readout(params, outs[-1])
    return (y, reads) if return_states else y


def cells_of(arch: str, params: Params) -> int:
    """c, the units per layer, of a stack of `arch` (its first parameter's rows are a multiple
    of c, ``memgrid.cells``)."""
    one = CELLS[arch].weights(1, 1)
    first = next(iter(one))
    return params[f"{first}.0"].shape[1] // one[first][0]


def _readout(params: Params, h: torch.Tensor) -> torch.Tensor:
    """The outputs `(K, B)` from the last layer's last state `(K, c, B)`: the linear readout
    (`w_out`, `b_out`) where the network has one, else the sum over the units."""
    if "w_out" in params:
        return (params["w_out"][:, :, None] * h).sum(1) + params["b_out"][:, None]
    return h.sum(1)

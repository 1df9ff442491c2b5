"""The C kernel of the diagonal recurrences minGRU, minLSTM, the LRU (complex or real lambda) and
the selective SSM (real or complex), bare and in their published blocks (``csrc/diagonal.c``):
a layer's state evolves as h_t = a_t * h_{t-1} + b_t, elementwise (complex for the LRU's
complex lambda and the complex SSM), with a_t and b_t from the inputs alone (memgrid.cells
defines the cells). Built, cached and loaded as the paper cells' kernel
(:mod:`memgrid.fast.native`), with the same products, activations and optimizer
(``csrc/common.h``).

It computes what the cell's definition computes under autograd (memgrid.models.reference_forward)
to float rounding, bitwise the same for a member alone and in any pack, as the forward and
backward of :class:`_Diagonal` inside torch autograd, or as a whole training step of a pack in
one call (:func:`train_step`). ``benchmarks/throughput.py --cells`` measures it against the RNN's
kernel. Without a compiler, or with ``MEMGRID_KERNELS=0``, these cells run their definition.

Weights, per member: each layer's parameters in the cell's order, one after another: the
flattened parameters of memgrid.models.param_shapes' order.
"""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path

import torch

from ..cells import BLOCK_CONV, BLOCK_FF, CELLS, LRU_BLOCK_EPS, MAMBA_CONV, S6_STATE
from . import DIAGONAL as ARCH
from .native import load_once, load_so, on_cpu, train_step_call
from .native import pointer as _p
from .stack import BufferPool

SRC = Path(__file__).with_name("csrc") / "diagonal.c"
_VARIANTS = {torch.float32: ("float", "f32"), torch.float64: ("double", "f64")}


def _layers(arch: str, params: list[torch.Tensor]) -> int:
    """Layers of a stack given its layers' parameters (the cell's per layer, memgrid.cells)."""
    return len(params) // len(CELLS[arch].weights(1, 1))


def _cells(arch: str, params: list[torch.Tensor]) -> int:
    """c, from the first parameter's rows (a multiple of c, memgrid.cells)."""
    return params[0].shape[1] // next(iter(CELLS[arch].weights(1, 1).values()))[0]


def defines(dtype: torch.dtype) -> list[str]:
    """The C defines of the kernel for `dtype`: its real type, its symbols' suffix, the SSM's
    sizes and the blocks' (from memgrid.cells)."""
    real, suffix = _VARIANTS[dtype]
    return [f"-DREAL={real}", f"-DNAME(x)=x##_{suffix}", f"-DS6N={S6_STATE}",
            f"-DCONVW={MAMBA_CONV}", f"-DBCONV={BLOCK_CONV}", f"-DBFF={BLOCK_FF}",
            f"-DLNEPS={LRU_BLOCK_EPS!r}"]


def _build(dtype: torch.dtype) -> ctypes.CDLL:
    suffix = _VARIANTS[dtype][1]
    names = [f"memgrid_diag_{n}_{suffix}" for n in ("forward", "backward", "train_step",
                                                     "train_scratch", "aux_rows", "phi", "sincos")]
    lib = load_so(SRC, defines(dtype), f"diagonal_{suffix}", names)
    P, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    fwd, bwd, step, scratch, aux, phi, sincos = (getattr(lib, n) for n in names)
    fwd.argtypes, fwd.restype = [i32] * 8 + [P] * 5, i32
    bwd.argtypes, bwd.restype = [i32] * 8 + [P] * 7, i32
    step.argtypes, step.restype = [i32] * 9 + [P] * 11, i32
    scratch.argtypes, scratch.restype = [i32] * 5, i64
    aux.argtypes, aux.restype = [i32] * 2, i32       # rows forward keeps per layer and step
    phi.argtypes, phi.restype = [i64, P, P], i32     # the blocks' GELU's Phi, for tests
    sincos.argtypes, sincos.restype = [i64, P, P, P], i32    # the complex SSM's, for tests
    lib.fwd, lib.bwd, lib.step, lib.scratch, lib.aux = fwd, bwd, step, scratch, aux
    lib.phi, lib.sincos = phi, sincos
    return lib


def lib(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The kernel for `dtype` (float32 or float64), see :func:`memgrid.fast.native.load_once`."""
    if dtype not in _VARIANTS:
        return None
    return load_once(("diagonal", dtype), lambda: _build(dtype), "the C kernel of the diagonal cells")


def usable(arch: str, *tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The kernel, if this call can use it: a cell of :data:`ARCH`, CPU tensors of one float
    dtype."""
    return on_cpu(lib, *tensors) if arch in ARCH else None


def _check(status: int) -> None:
    if status:
        raise MemoryError("memgrid diagonal kernel: out of memory for its scratch")


_FWD, _INF = BufferPool(), BufferPool()       # training (kept for backward) and evaluation


class _Diagonal(torch.autograd.Function):
    """The stack of a diagonal cell by the C kernel: forward and backward through time in one
    call each; returns the last layer's last state `(K, c, B)`."""

    @staticmethod
    def forward(ctx, lib, arch, tbptt, x, mask, *params):
        K, B, T = x.shape
        L, c = _layers(arch, params), _cells(arch, params)
        W = torch.cat([p.detach().reshape(K, -1) for p in params], 1)
        xt = x.detach().permute(2, 0, 1).contiguous()                      # (T, K, B)
        key = (arch, xt.shape, L, c, xt.dtype)
        bufs = _FWD.take(key, lambda: (xt.new_empty(K, L, T + 1, c, B),
                                       xt.new_empty(K, L, T, lib.aux(ARCH[arch], c), B)))
        H, A = bufs
        _check(lib.fwd(ARCH[arch], K, L, T, mask.shape[0], B, c, T + 1, _p(W), _p(xt),
                       _p(mask), _p(H), _p(A)))
        ctx.stash = lib, arch, tbptt, W, xt, mask, bufs, [p.shape for p in params]
        weakref.finalize(ctx, _FWD.give, key, bufs)    # the graph is gone: reuse the buffers
        return H[:, L - 1, T].clone()

    @staticmethod
    def backward(ctx, g_out):
        lib, arch, tbptt, W, xt, mask, (H, A), shapes = ctx.stash
        T, K, B = xt.shape
        L, c = H.shape[1], H.shape[3]
        gW = torch.empty_like(W)
        g = g_out.contiguous()                          # alive through the call
        _check(lib.bwd(ARCH[arch], K, L, T, mask.shape[0], B, c, tbptt, _p(W), _p(xt), _p(mask),
                       _p(H), _p(A), _p(g), _p(gW)))
        grads, at = [], 0
        for s in shapes:
            n = s[1:].numel()
            grads.append(gW[:, at:at + n].reshape(s))
            at += n
        return (None, None, None, None, None, *grads)


@torch.no_grad()
def _infer(lib, arch: str, params: list[torch.Tensor], x: torch.Tensor, mask: torch.Tensor):
    K, B, T = x.shape
    L, c = _layers(arch, params), _cells(arch, params)
    W = torch.cat([p.reshape(K, -1) for p in params], 1)
    xt = x.permute(2, 0, 1).contiguous()
    key = (arch, xt.shape, L, c, xt.dtype)
    H = _INF.take(key, lambda: xt.new_empty(K, L, 2, c, B))
    _check(lib.fwd(ARCH[arch], K, L, T, mask.shape[0], B, c, 2, _p(W), _p(xt), _p(mask), _p(H),
                   None))
    h = H[:, L - 1, T % 2].clone()
    _INF.give(key, H)
    return h


def hidden(lib, arch: str, params: list[torch.Tensor], x: torch.Tensor, mask: torch.Tensor,
           tbptt: int, grad: bool) -> torch.Tensor:
    """The last layer's state after the last step `(K, c, B)` (`params`: the layers'
    parameters in memgrid.models.param_shapes' order, readout left out); `mask` `(K, B, P)` and
    `tbptt` as memgrid.models.forward takes them."""
    mk = mask.permute(2, 0, 1).contiguous()                     # (P, K, B) bool
    if grad:
        return _Diagonal.apply(lib, arch, tbptt, x, mk, *params)
    return _infer(lib, arch, params, x, mk)


def train_scratch(lib, arch: str, L: int, T: int, B: int, c: int) -> int:
    """Elements of :func:`train_step`'s workspace (the same for any K)."""
    return lib.scratch(ARCH[arch], L, T, B, c)


def train_step(lib, arch: str, tbptt: int, params: list[torch.Tensor], bufs: list[torch.Tensor],
               lr: torch.Tensor, mom: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
               y: torch.Tensor, ws: torch.Tensor, sqs: list[torch.Tensor] | None = None,
               adam: torch.Tensor | None = None) -> torch.Tensor:
    """One optimizer step of every member, in place, as memgrid.fast.kernels.train_step takes
    it (params and bufs in memgrid.models.param_shapes' order, `w_out`, `b_out` last for a
    linear readout; x `(T, K, B)`, mask `(P, K, B)`); returns the outputs `(K, B)`."""
    L = _layers(arch, params)
    return train_step_call(lib, ARCH[arch], L, _cells(arch, params),
                           len(params) > L * len(CELLS[arch].weights(1, 1)), tbptt, params, bufs,
                           lr, mom, x, mask, y, ws, sqs, adam)

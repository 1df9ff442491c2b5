"""The C kernel of the packed RNN, LSTM and GRU (``csrc/cells.c``): built on first use with the
machine's C compiler for its own CPU (:data:`memgrid.fast.native.FLAGS`), cached, loaded with
ctypes. Its weights are the fused weights of memgrid.fast.layout.

It computes what :class:`memgrid.fast.stack._Stack` computes, on the CPU, 1.6-2.9x faster
(``benchmarks/README.md``), and bitwise the same for a member alone and in any pack; and
:func:`train_step` runs a whole training step of a pack in one call (1.3-1.6x faster again
than the kernel inside torch autograd, and bitwise the same for the `sum` readout).
Without a compiler, or with ``MEMGRID_KERNELS=0``, memgrid uses the PyTorch path; the
results agree to float rounding.

How a C source is built, cached and loaded: :mod:`memgrid.fast.native`.
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import torch

from .layout import ARCH, fused_rows
from .native import load_once, load_so, on_cpu, train_step_call
from .native import pointer as _p

SRC = Path(__file__).with_name("csrc") / "cells.c"
_VARIANTS = {torch.float32: ("float", "f32"), torch.float64: ("double", "f64")}


def _build(dtype: torch.dtype, flags: list[str] | None = None) -> ctypes.CDLL:
    """The kernels for `dtype`, built with the compiler `flags` (default ``native.FLAGS``)."""
    real, suffix = _VARIANTS[dtype]
    names = [f"memgrid_{n}_{suffix}" for n in ("cell_forward", "cell_backward", "act",
                                                  "train_step", "train_scratch")]
    lib = load_so(SRC, [f"-DREAL={real}", f"-DNAME(x)=x##_{suffix}"], f"cells_{suffix}", names,
                  flags)
    P, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    fwd = getattr(lib, f"memgrid_cell_forward_{suffix}")
    fwd.argtypes, fwd.restype = [i32] * 8 + [P] * 6, i32
    bwd = getattr(lib, f"memgrid_cell_backward_{suffix}")
    bwd.argtypes, bwd.restype = [i32] * 8 + [P] * 9, i32
    act = getattr(lib, f"memgrid_act_{suffix}")
    act.argtypes, act.restype = [i32, P, P, i64], None
    step = getattr(lib, f"memgrid_train_step_{suffix}")
    step.argtypes, step.restype = [i32] * 9 + [P] * 11, i32
    scratch = getattr(lib, f"memgrid_train_scratch_{suffix}")
    scratch.argtypes, scratch.restype = [i32] * 5, i64
    lib.fwd, lib.bwd, lib.act, lib.step, lib.scratch = fwd, bwd, act, step, scratch
    return lib


def lib(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The kernels of the cells for `dtype` (float32 or float64), see :func:`load_once`."""
    if dtype not in _VARIANTS:
        return None
    return load_once(dtype, lambda: _build(dtype), "the C kernel of the cells")


def vector_width() -> str:
    """The widest vector instructions of this CPU that the kernel is built for (``-march=native``),
    on which its rounding depends: avx512, avx2, avx or sse2 on x86-64; sve or neon on Arm;
    else the machine's name."""
    from .native import cpu_flags

    flags = cpu_flags()
    for isa in ("avx512f", "avx2", "avx", "sve", "asimd"):
        if isa in flags:
            return {"avx512f": "avx512", "asimd": "neon"}.get(isa, isa)
    return "sse2" if platform.machine() in ("x86_64", "AMD64") else platform.machine().lower()


def usable(arch: str, *tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The kernels, if this call can use them: rnn, lstm or gru, CPU tensors of one float dtype."""
    return on_cpu(lib, *tensors) if arch in ARCH else None


def activation(a: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """The kernel's tanh, or sigmoid (for the tests)."""
    a = a.contiguous()
    out = torch.empty_like(a)
    lib(a.dtype).act(int(sigmoid), _p(a), _p(out), a.numel())
    return out


def buffers(arch: str, x: torch.Tensor, L: int, c: int, keep: bool) -> tuple:
    """Buffers for :func:`forward`: states `(K, L, S, c, B)` (S = T + 1 with `keep`, for
    backward: h_t at t + 1; else 2, evaluation: the last state at T % 2), lstm cells like them,
    and with `keep` the gates backward needs `(K, L, T, rows, B)` (None where not used)."""
    T, K, B = x.shape
    S = T + 1 if keep else 2
    H = x.new_empty(K, L, S, c, B)
    C = x.new_empty(K, L, S, c, B) if arch == "lstm" else None
    aux = fused_rows(arch, c) + (c if arch == "lstm" else 0)
    A = x.new_empty(K, L, T, aux, B) if keep and arch != "rnn" else None
    return H, C, A


def forward(lib, arch: str, W: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, bufs: tuple) -> None:
    """Fill `bufs` (from :func:`buffers`). W `(K, sum of layers)` and x `(T, K, B)` contiguous in
    one dtype, mask `(P, K, B)` contiguous bool."""
    T, K, B = x.shape
    H, C, A = bufs
    _, L, S, c, _ = H.shape
    if lib.fwd(ARCH[arch], K, L, T, mask.shape[0], B, c, S, _p(W), _p(x), _p(mask), _p(H), _p(C), _p(A)):
        raise MemoryError("memgrid cell kernel: out of memory for its scratch")


def backward(lib, arch: str, W, x, mask, bufs: tuple, g_out, tbptt: int, need_x: bool):
    """(gW like W, gx like x or None), from forward's `bufs` (kept)."""
    H, C, A = bufs
    K, L, S, c, B = H.shape
    gW = torch.empty_like(W)
    gx = torch.empty_like(x) if need_x else None
    if lib.bwd(ARCH[arch], K, L, S - 1, mask.shape[0], B, c, tbptt, _p(W), _p(x), _p(mask), _p(H),
               _p(C), _p(A), _p(g_out), _p(gW), _p(gx)):
        raise MemoryError("memgrid cell kernel: out of memory for its scratch")
    return gW, gx


def train_scratch(lib, arch: str, L: int, T: int, B: int, c: int) -> int:
    """Elements of :func:`train_step`'s workspace (the same for any K)."""
    return lib.scratch(ARCH[arch], L, T, B, c)


def train_step(lib, arch: str, tbptt: int, params: list[torch.Tensor], bufs: list[torch.Tensor],
               lr: torch.Tensor, mom: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
               y: torch.Tensor, ws: torch.Tensor, sqs: list[torch.Tensor] | None = None,
               adam: torch.Tensor | None = None) -> torch.Tensor:
    """One optimizer step of every member, in place on `params` and their momentum `bufs` (lists
    in memgrid.models.param_shapes' order, each `(K, ...)` contiguous; with `w_out`, `b_out`
    last for a linear readout): forward, the mean absolute error's gradient, backward, then SGD
    with momentum, or Adam where `sqs` (its second moments, laid out as `bufs`) and `adam` (its
    coefficients, memgrid.train.PackTrainer._adam_coefficients) are given. x `(T, K, B)`, mask
    `(P, K, B)` bool, y `(K, B)`, lr and mom `(K,)`, all contiguous in one dtype; ws:
    :func:`train_scratch` elements. Returns the outputs `(K, B)` (the loss is theirs to take)."""
    return train_step_call(lib, ARCH[arch], len(params) // 4, params[1].shape[-1],
                           len(params) % 4 == 2, tbptt, params, bufs, lr, mom, x, mask, y, ws,
                           sqs, adam)

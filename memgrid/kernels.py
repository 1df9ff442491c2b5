"""The C kernel of the packed tanh RNN (``csrc/rnn.c``): built on first use with the
machine's C compiler for its own CPU (``-O3 -march=native``), cached, loaded with ctypes.

It computes what :class:`memgrid.models._Stack` computes for ``arch: rnn`` on the CPU, 2-4x
faster (``benchmarks/README.md``), and bitwise the same for a member alone and in any pack.
Without a compiler, or with ``MEMGRID_KERNELS=0``, memgrid uses the PyTorch path; the
results agree to float rounding.

The shared objects go to ``$MEMGRID_KERNEL_CACHE`` (default ``~/.cache/memgrid``), named by a
hash of the source, the compiler and the CPU, so that nodes of a cluster with other CPUs, or a
new version of the source, build their own. Concurrent workers may build at once: each writes
its own temporary file and renames it into place.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SRC = Path(__file__).with_name("csrc") / "rnn.c"
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
_VARIANTS = {torch.float32: ("float", "f32"), torch.float64: ("double", "f64")}
_lock = threading.Lock()
_libs: dict[torch.dtype, ctypes.CDLL | None] = {}


def enabled() -> bool:
    return os.environ.get("MEMGRID_KERNELS", "1") != "0"


def _cpu_tag() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _build(dtype: torch.dtype) -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    real, suffix = _VARIANTS[dtype]
    src = SRC.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    tag = hashlib.sha256(src + (version + _cpu_tag() + " ".join(FLAGS)).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("MEMGRID_KERNEL_CACHE") or Path.home() / ".cache" / "memgrid")
    so = cache / f"rnn_{suffix}_{tag}.so"
    if not so.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            cmd = [cc, *FLAGS, f"-DREAL={real}", f"-DNAME(x)=x##_{suffix}", "-o", tmp, str(SRC)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:500]}")
            os.replace(tmp, so)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(so))
    P, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    fwd = getattr(lib, f"memgrid_rnn_forward_{suffix}")
    fwd.argtypes, fwd.restype = [i32] * 7 + [P] * 4, ctypes.c_int
    bwd = getattr(lib, f"memgrid_rnn_backward_{suffix}")
    bwd.argtypes, bwd.restype = [i32] * 7 + [P] * 7, ctypes.c_int
    th = getattr(lib, f"memgrid_tanh_{suffix}")
    th.argtypes, th.restype = [P, P, i64], None
    lib.fwd, lib.bwd, lib.tanh = fwd, bwd, th
    return lib


def lib(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The kernels for `dtype` (float32 or float64), built once per process; None where they
    cannot be used (disabled, another dtype, no compiler: then a warning, once)."""
    if not enabled() or dtype not in _VARIANTS:
        return None
    if dtype not in _libs:
        with _lock:
            if dtype not in _libs:
                try:
                    _libs[dtype] = _build(dtype)
                except (OSError, RuntimeError) as e:
                    warnings.warn(f"memgrid: the C kernel of the rnn is not available, using "
                                  f"PyTorch ops instead ({e})", RuntimeWarning, stacklevel=2)
                    _libs[dtype] = None
    return _libs[dtype]


def usable(arch: str, *tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The kernels, if this call can use them: rnn, CPU tensors of one float dtype."""
    if arch != "rnn" or any(t.device.type != "cpu" for t in tensors):
        return None
    dtype = tensors[0].dtype
    if any(t.dtype != dtype for t in tensors):
        return None
    return lib(dtype)


def _p(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def tanh(a: torch.Tensor) -> torch.Tensor:
    """The kernel's tanh (for the tests)."""
    a = a.contiguous()
    out = torch.empty_like(a)
    lib(a.dtype).tanh(_p(a), _p(out), a.numel())
    return out


def states(x: torch.Tensor, L: int, c: int, keep: bool) -> torch.Tensor:
    """A buffer for the states of :func:`rnn_forward`, `(K, L, S, c, B)`: S = T + 1 with `keep`
    (h_t at t + 1, for backward), else 2 (evaluation: the last state at T % 2)."""
    K, T, B = x.shape
    return x.new_empty(K, L, T + 1 if keep else 2, c, B)


def rnn_forward(lib, W: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, H: torch.Tensor) -> None:
    """Fill the states H (from :func:`states`). W `(K, sum of layers)`, x `(K, T, B)`, mask
    `(K, P, B)`: contiguous, one dtype."""
    K, T, B = x.shape
    _, L, S, c, _ = H.shape
    if lib.fwd(K, L, T, mask.shape[1], B, c, S, _p(W), _p(x), _p(mask), _p(H)):
        raise MemoryError("memgrid rnn kernel: out of memory for its scratch")


def rnn_backward(lib, W, x, mask, H, g_out, tbptt: int, need_x: bool):
    """(gW like W, gx `(K, T, B)` or None)."""
    K, L, S, c, B = H.shape
    gW = torch.empty_like(W)
    gx = torch.empty_like(x) if need_x else None
    if lib.bwd(K, L, S - 1, mask.shape[1], B, c, tbptt, _p(W), _p(x), _p(mask), _p(H),
               _p(g_out), _p(gW), _p(gx)):
        raise MemoryError("memgrid rnn kernel: out of memory for its scratch")
    return gW, gx

"""The random memorization task (paper, Definitions 1 and 2), generated for a whole pack at once.

A sequence has a length ``q`` uniform on ``{q_lo..q_hi}`` and i.i.d. elements uniform on [0, 1);
the target is the p-th-from-last element. Sequences are *right-aligned*: every sequence ends at
the last time step ``T - 1`` and the steps before it starts are padding, marked by ``mask``
(``False``: the network's state must stay untouched there, as if the sequence ran alone).
Right alignment puts the target of every sequence at the same step ``T - p``.

Randomness is counter-based: each number is a hash of ``(seed, stream, step, sequence, distance
from the end)``. So a point's data are a pure function of the point, whatever pack it lands in,
whatever ``T`` the pack pads to, on any device, and a resumed run continues the very same stream
without storing a generator state. The hash is Wellons' `lowbias32` (integer ops only, exact on
CPU and GPU).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import torch

from .fast.native import load_once, load_so

_M32 = 0xFFFFFFFF
# stream ids: independent sub-streams of one seed
TRAIN, EVAL, INIT, LENGTH = 0x1B873593, 0x68E31DA4, 0x3C6EF372, 0x7F4A7C15


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2^32). Products wrap mod 2^64, and the
    mask keeps the low 32 bits, which wrapping leaves exact."""
    x = x & _M32  # a fresh tensor: the rest works in place (2.6x faster at pack sizes)
    x.bitwise_xor_(x >> 16)
    x.mul_(0x7FEB352D).bitwise_and_(_M32)
    x.bitwise_xor_(x >> 15)
    x.mul_(0x846CA68B).bitwise_and_(_M32)
    return x.bitwise_xor_(x >> 16)


def key(seed: torch.Tensor, stream: int) -> torch.Tensor:
    """Per-member 32-bit key of one stream. `seed`: int64 `(K,)`."""
    return hash32(hash32(seed.to(torch.int64) ^ stream) + 0x9E3779B9)


def to_unit(h: torch.Tensor) -> torch.Tensor:
    """32-bit hash -> float32 uniform on [0, 1) (24 bits, exactly representable)."""
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def uniform(k: torch.Tensor, *counters: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers, a pure function of key and counters (broadcast together)."""
    h = k
    for c in counters:
        h = hash32(h ^ hash32(c.to(torch.int64) + 0x85EBCA6B))
    return to_unit(h)


@dataclass
class Batch:
    """A batch for a pack of K members, B sequences each, padded to T steps.

    x:      `(K, B, T)` float32, the sequences, right-aligned, zeros before each starts
    mask:   `(K, B, P)` bool, True where the sequence has started, for the first P = T - min(q)
            steps only (after them every sequence has started)
    y:      `(K, B)` float32, the targets x[k, b, T - p_k]
    length: `(K, B)` int64, each sequence's q
    """

    x: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    length: torch.Tensor


@dataclass
class TaskSpec:
    """The pack's task, as per-member tensors `(K,)`: seeds, positions and length ranges."""

    seed: torch.Tensor
    position: torch.Tensor
    q_lo: torch.Tensor
    q_hi: torch.Tensor

    @classmethod
    def of(cls, points, device="cpu") -> TaskSpec:
        t = lambda vals: torch.tensor(vals, dtype=torch.int64, device=device)  # noqa: E731
        return cls(t([p.seed for p in points]), t([p.position for p in points]),
                   t([p.q_lo for p in points]), t([p.q_hi for p in points]))

    @property
    def T(self) -> int:
        """Padded length: the longest sequence any member can draw."""
        return self._q_hi_max

    def select(self, idx: torch.Tensor) -> TaskSpec:
        return TaskSpec(self.seed[idx], self.position[idx], self.q_lo[idx], self.q_hi[idx])

    # host-side values, computed once: reading a device tensor's value is a sync on a GPU
    @cached_property
    def _q_hi_max(self) -> int:
        return int(self.q_hi.max())

    @cached_property
    def _q_lo_min(self) -> int:
        return int(self.q_lo.min())

    @cached_property
    def _position_range(self) -> tuple[int, int]:
        return int(self.position.min()), int(self.position.max())

    @cached_property
    def _c_spec(self) -> torch.Tensor:
        """The C kernel's `spec`: contiguous int64 `(4, K)`, rows seed, position, q_lo, q_hi."""
        rows = [self.seed, self.position, self.q_lo, self.q_hi]
        return torch.stack([r.to(torch.int64) for r in rows]).contiguous()

    def _key(self, stream: int) -> torch.Tensor:
        """`key(seed, stream)`, computed once per stream."""
        keys = self.__dict__.setdefault("_keys", {})
        if stream not in keys:
            keys[stream] = key(self.seed, stream)
        return keys[stream]


@lru_cache(maxsize=64)
def _counters(n: int, device: str, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Counters 0..n-1 (or n-1..0) and their hashes as `uniform` mixes them in; the same for
    every batch, so computed once (read-only)."""
    c = torch.arange(n, device=device, dtype=torch.int64)
    c = c.flip(0) if reverse else c
    return c, hash32(c + 0x85EBCA6B)


def _hash32_i32(x: torch.Tensor) -> torch.Tensor:
    """`hash32` on int32 tensors, in place: the same 32 bits in two's complement. Products wrap
    mod 2^32 (as they do on CPU and GPU); right shifts are arithmetic, so each is masked to
    act as the logical shift lowbias32 needs. Half the bytes of the int64 form: ~3x faster on
    the pack's full `(T, K, B)` tensor, where data generation was a quarter of a step."""
    x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))
    x.mul_(0x7FEB352D)
    x.bitwise_xor_((x >> 15).bitwise_and_(0x1FFFF))
    x.mul_(0x846CA68B - (1 << 32))
    return x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))


def _as_i32(h: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2^32) -> int32 holding the same 32 bits."""
    return (h - ((h >> 31) << 32)).to(torch.int32)


_SRC = Path(__file__).parent / "fast" / "csrc" / "task.c"


def _build() -> ctypes.CDLL:
    lib = load_so(_SRC, [], "task", ["memgrid_make_batch"])
    i64, u32, P = ctypes.c_int64, ctypes.c_uint32, ctypes.c_void_p
    lib.memgrid_make_batch.argtypes = [i64] * 4 + [P, u32, u32, i64] + [P] * 4
    lib.memgrid_make_batch.restype = None
    return lib


def _lib() -> ctypes.CDLL | None:
    """The C batch generator (``fast/csrc/task.c``), built once per process; None where it cannot be
    used (MEMGRID_KERNELS=0; no compiler: then a warning, once)."""
    return load_once("task", _build, "the C batch generator")


def make_batch(spec: TaskSpec, stream: int, step: torch.Tensor | int, batch_size: int,
               T: int | None = None) -> Batch:
    """Sequences `step` of `stream` (TRAIN: one batch per training step; EVAL: step 0 is the fixed
    evaluation set) for every member. `T` pads further than the members need (never changes a
    member's data).

    The tensors are computed time-major, `(T, K, B)` in memory, and `x`/`mask` are that memory
    seen as `(K, B, T)`/`(K, B, P)` (same values; not contiguous): the packed cells read one
    step `(K, B)` at a time, and there a step is one contiguous block.

    On the CPU with an int `step`, the C generator (``fast/csrc/task.c``) computes the same bits;
    else, or outside its domain (int64 step, 0 <= P <= T, positions in 1..T),
    :func:`_make_batch_torch`."""
    if spec.seed.device.type == "cpu" and isinstance(step, int) and (lib := _lib()) is not None:
        T = spec.T if T is None else T
        K, B, P = spec.seed.shape[0], batch_size, T - spec._q_lo_min
        p_min, p_max = spec._position_range
        if -2**63 <= step < 2**63 and 0 <= P <= T and 1 <= p_min and p_max <= T and B >= 0:
            x = torch.empty(T, K, B, dtype=torch.float32)
            started = torch.empty(P, K, B, dtype=torch.bool)
            y = torch.empty(K, B, dtype=torch.float32)
            length = torch.empty(K, B, dtype=torch.int64)
            lib.memgrid_make_batch(K, B, T, P, spec._c_spec.data_ptr(), stream & _M32,
                                   (stream ^ LENGTH) & _M32, step, x.data_ptr(),
                                   started.data_ptr(), y.data_ptr(), length.data_ptr())
            return Batch(x=x.permute(1, 2, 0), mask=started.permute(1, 2, 0), y=y, length=length)
    return _make_batch_torch(spec, stream, step, batch_size, T)


def _make_batch_torch(spec: TaskSpec, stream: int, step: torch.Tensor | int, batch_size: int,
                      T: int | None = None) -> Batch:
    """:func:`make_batch` in PyTorch ops: the reference of the C generator, and the GPU path."""
    device = spec.seed.device
    T = spec.T if T is None else T
    K, B = spec.seed.shape[0], batch_size
    if isinstance(step, torch.Tensor):
        step_t = step.to(device=device, dtype=torch.int64).reshape(-1)
    else:                                  # a fill, not a host-to-device copy (a sync on a GPU)
        step_t = torch.full((1,), step, dtype=torch.int64, device=device)
    step_t = step_t.expand(K).reshape(1, K, 1)
    # distance from the end: d = 0 is the last element; step t holds d = T - 1 - t
    d, hd = _counters(T, str(device), reverse=True)                       # (T,), hash32(d + C)
    b, hb = _counters(B, str(device))                                      # (B,), hash32(b + C)

    # uniform(k, step, b) and uniform(k, step, b, d) (see `uniform`), written out so that the
    # counters' hashes are computed once, and the one full-size hash works in int32
    hs = hash32(step_t + 0x85EBCA6B)                                       # (1, K, 1)
    k_len = spec._key(stream ^ LENGTH).reshape(1, K, 1)
    u_len = to_unit(hash32(hash32(k_len ^ hs) ^ hb.reshape(1, 1, B)))      # (1, K, B)
    span = (spec.q_hi - spec.q_lo + 1).reshape(1, K, 1)
    length = spec.q_lo.reshape(1, K, 1) + (u_len * span).to(torch.int64).clamp(max=span - 1)
    # from step P on, every sequence of every member has started
    P = T - spec._q_lo_min
    started = d[:P].reshape(P, 1, 1) < length                              # (P, K, B)
    k_data = spec._key(stream).reshape(1, K, 1)
    h = hash32(hash32(k_data ^ hs) ^ hb.reshape(1, 1, B))                  # (1, K, B)
    h = _hash32_i32(_as_i32(h) ^ _as_i32(hd).reshape(T, 1, 1))             # (T, K, B)
    x = (h >> 8).bitwise_and_(0xFFFFFF).to(torch.float32).mul_(1.0 / (1 << 24))    # to_unit
    x[:P].mul_(started)                                                    # zeros before the start
    pos = spec.position.reshape(1, K, 1)
    y = torch.gather(x, 0, (T - pos).expand(1, K, B)).squeeze(0)           # (K, B)
    return Batch(x=x.permute(1, 2, 0), mask=started.permute(1, 2, 0), y=y,
                 length=length.squeeze(0))


def make_eval_set(spec: TaskSpec, size: int, T: int | None = None) -> Batch:
    """Each member's fixed held-out set: its own stream, independent of the training stream."""
    return make_batch(spec, EVAL, 0, size, T)

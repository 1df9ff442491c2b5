"""The random memorization task: exact instances, lengths, masks, purity of the stream."""

import pytest
import torch

from memgrid import task
from memgrid.fast import native
from memgrid.config import Point
from memgrid.task import EVAL, TRAIN, TaskSpec, hash32, make_batch, make_eval_set


def lowbias32(x: int) -> int:
    """Reference in plain Python integers (Wellons' hash-prospector)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def test_hash_matches_plain_integer_reference():
    xs = [0, 1, 2, 12345, 0xDEADBEEF, 0xFFFFFFFF, 2**31, 2**31 - 1]
    got = hash32(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert got == [lowbias32(x) for x in xs]


def test_instances_are_the_paper_definition():
    """Target = x_{q+1-p} (1-based) of each unpadded sequence; zeros and mask before its start."""
    pts = [Point("rnn", 1, 5, p, s) for p in (1, 4, 10) for s in (0, 7)]
    spec = TaskSpec.of(pts)
    b = make_batch(spec, TRAIN, 3, 64)
    K, B, T = b.x.shape
    assert (K, B, T) == (6, 64, 15)
    for k, pt in enumerate(pts):
        for j in range(B):
            q = int(b.length[k, j])
            assert 10 <= q <= 15
            seq = b.x[k, j, T - q:]
            assert torch.all(b.x[k, j, : T - q] == 0)
            assert torch.all((seq >= 0) & (seq < 1)) and torch.all(seq > 0)
            assert b.y[k, j] == seq[q + 1 - pt.position - 1]          # x_{q+1-p}, 1-based
            P = b.mask.shape[2]
            assert b.mask[k, j].tolist() == [t >= T - q for t in range(P)]
    assert b.mask.shape[2] == T - 10


def test_lengths_cover_the_range_uniformly():
    spec = TaskSpec.of([Point("rnn", 1, 5, 1, 0)])
    q = make_batch(spec, TRAIN, 0, 60000).length.flatten()
    counts = torch.bincount(q, minlength=16)[10:16].float() / q.numel()
    assert torch.all((counts - 1 / 6).abs() < 0.01)
    x = make_batch(spec, TRAIN, 1, 20000).x
    vals = x[x > 0]
    assert abs(vals.mean().item() - 0.5) < 0.01 and abs(vals.var().item() - 1 / 12) < 0.003


def test_fixed_length_and_shift_rule():
    fixed = TaskSpec.of([Point("rnn", 1, 5, 10, 0, q_min=10, q_max=10)])
    b = make_batch(fixed, TRAIN, 0, 256)
    assert torch.all(b.length == 10) and b.mask.shape[2] == 0
    # p = 12 > q_min = 10: the range moves up by 2, keeping its random width
    p = Point("rnn", 1, 5, 12, 0)
    assert (p.q_lo, p.q_hi) == (12, 17)
    b = make_batch(TaskSpec.of([p]), TRAIN, 0, 4096)
    assert int(b.length.min()) == 12 and int(b.length.max()) == 17
    T = b.x.shape[2]
    assert torch.equal(b.y[0], b.x[0, :, T - 12])
    assert torch.all(b.y[0] > 0)                               # inside every sequence


def test_stream_is_a_pure_function_of_the_point():
    a = Point("rnn", 1, 5, 3, 11)
    alone = make_batch(TaskSpec.of([a]), TRAIN, 42, 32)
    other = [Point("rnn", 1, 5, 20, 5), a, Point("rnn", 1, 5, 1, 99)]
    packed = make_batch(TaskSpec.of(other), TRAIN, 42, 32)
    T = alone.x.shape[2]
    assert torch.equal(packed.x[1, :, -T:], alone.x[0])
    assert torch.all(packed.x[1, :, :-T] == 0)
    assert torch.equal(packed.y[1], alone.y[0])
    # different steps, seeds and streams differ
    spec = TaskSpec.of([a])
    assert not torch.equal(make_batch(spec, TRAIN, 43, 32).x, alone.x)
    assert not torch.equal(make_batch(spec, EVAL, 42, 32).x, alone.x)
    assert not torch.equal(make_batch(TaskSpec.of([Point("rnn", 1, 5, 3, 12)]), TRAIN, 42, 32).x, alone.x)
    ev1, ev2 = make_eval_set(spec, 100), make_eval_set(spec, 100)
    assert torch.equal(ev1.x, ev2.x)


# -- the C generator (memgrid/csrc/task.c) ------------------------------------------------------

needs_c = pytest.mark.skipif(task._lib() is None, reason="no C compiler")


def _spec_mixed(K: int, seed: int) -> TaskSpec:
    """Members with their own positions, q ranges (q_lo 1..10, q_hi up to 40) and seeds."""
    g = torch.Generator().manual_seed(seed)
    q_lo = torch.randint(1, 11, (K,), generator=g)
    q_hi = q_lo + torch.randint(0, 31, (K,), generator=g)
    position = (torch.rand(K, generator=g) * q_lo).to(torch.int64) + 1
    seeds = torch.randint(0, 2**31 + 1, (K,), generator=g)
    seeds[0] = 2**31
    return TaskSpec(seeds, position, q_lo, q_hi)


def _assert_same(a, b):
    for f in ("x", "mask", "y", "length"):
        u, v = getattr(a, f), getattr(b, f)
        assert (u.dtype, u.shape, u.stride()) == (v.dtype, v.shape, v.stride()), f
        assert torch.equal(u, v), f


@needs_c
@pytest.mark.parametrize("K,B,T,seed", [(7, 37, None, 0), (12, 128, 45, 1), (1, 300, None, 2),
                                        (20, 16, 41, 3)])
def test_c_generator_is_the_torch_path_bitwise(K, B, T, seed):
    """x, mask, y and length: the same bits, dtypes, shapes and (time-major) strides."""
    spec = _spec_mixed(K, seed)
    for stream in (TRAIN, EVAL):
        for step in (0, 1, 123456789):
            c = make_batch(spec, stream, step, B, T)
            _assert_same(c, task._make_batch_torch(spec, stream, step, B, T))
            assert c.x.permute(2, 0, 1).is_contiguous() and c.mask.permute(2, 0, 1).is_contiguous()


@needs_c
def test_c_generator_lengths_and_masks_cover_the_range():
    """Many sequences: every q of each member's range drawn, and the same as the torch path."""
    spec = _spec_mixed(5, 4)
    c = make_batch(spec, TRAIN, 7, 4000)
    _assert_same(c, task._make_batch_torch(spec, TRAIN, 7, 4000))
    for k in range(5):
        assert set(c.length[k].tolist()) == set(range(int(spec.q_lo[k]), int(spec.q_hi[k]) + 1))


def test_kernels_off_uses_the_torch_path(monkeypatch):
    spec = _spec_mixed(6, 5)
    default = make_batch(spec, TRAIN, 123456789, 37, 42)
    monkeypatch.setenv("MEMGRID_KERNELS", "0")
    assert task._lib() is None
    _assert_same(make_batch(spec, TRAIN, 123456789, 37, 42), default)


def test_without_a_compiler_the_generator_falls_back_to_torch(monkeypatch, tmp_path):
    spec = _spec_mixed(3, 6)
    default = make_batch(spec, EVAL, 0, 37)
    monkeypatch.setattr(native, "_libs", {})
    monkeypatch.setenv("MEMGRID_KERNELS", "1")
    monkeypatch.setenv("MEMGRID_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.warns(RuntimeWarning, match="not available"):
        _assert_same(make_batch(spec, EVAL, 0, 37), default)
    assert native._libs == {"task": None}

"""The C kernel of the cells (memgrid/fast/kernels.py): its tanh and sigmoid, the same function and
gradients as the PyTorch path, its whole training step bitwise the step through autograd,
bitwise pack invariance, and the fallback when it cannot be built."""

import math
import platform
import subprocess
import warnings

import pytest
import torch

from memgrid import task, train
from memgrid.fast import diagonal, kernels, native
from memgrid.config import Point
from memgrid.models import forward, init_params, kernel_states
from memgrid.task import TRAIN, TaskSpec, make_batch

# skipped only where there is no compiler: where there is one, the kernels must build (a build
# that fails falls back to PyTorch ops in a run, with a warning, and here is a failure)
pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")


def test_the_kernels_build_on_this_machine():
    """Both dtypes' kernels of the cells and the task's generator build and load here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert kernels.lib(torch.float32) is not None and kernels.lib(torch.float64) is not None
        assert task._lib() is not None


# x86-64 microarchitecture levels, the CPU flags each needs (a build for a level this CPU lacks
# compiles here but is not run)
LEVELS = {"x86-64": ["sse2"], "x86-64-v2": ["sse4_2", "popcnt"], "x86-64-v3": ["avx2", "fma", "bmi2"],
          "x86-64-v4": ["avx512f", "avx512bw", "avx512vl", "avx512dq"]}


def _flags_for(march: str) -> list[str]:
    """memgrid's own build flags with the instructions of `march` in place of this CPU's."""
    return [f"-march={march}" if f == "-march=native" else f for f in native.FLAGS]


def _check_flags_for(march: str) -> list[str]:
    """:func:`_flags_for` at -O1: the same code for the same instructions, a tenth of the
    optimiser's time (the -O3 build is this machine's, tested above)."""
    return ["-O1" if f == "-O3" else f for f in _flags_for(march)]


def _cc_knows(march: str) -> bool:
    done = subprocess.run([native.compiler(), f"-march={march}", "-E", "-x", "c", "/dev/null"],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 levels")
@pytest.mark.parametrize("march", list(LEVELS))
def test_the_c_sources_build_for_every_x86_64_level(march, tmp_path):
    """cells.c and diagonal.c (both dtypes) and task.c compile for every x86-64 level, whatever
    this CPU is: a laptop without AVX-512 gets the kernels too (the register hint of the 64-byte
    vectors once failed to compile there). At -O1; the five builds run side by side."""
    if not _cc_knows(march):
        pytest.skip(f"{native.compiler()} does not know -march={march}")
    flags = _check_flags_for(march)
    builds = [(kernels.SRC, ["-DREAL=float", "-DNAME(x)=x##_f32"]),
              (kernels.SRC, ["-DREAL=double", "-DNAME(x)=x##_f64"]), (task._SRC, []),
              *((diagonal.SRC, diagonal.defines(dtype)) for dtype in (torch.float32, torch.float64))]
    running = [subprocess.Popen([native.compiler(), *flags, *defines, "-o", str(tmp_path / f"{i}.so"),
                                 str(src)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
               for i, (src, defines) in enumerate(builds)]
    for (src, defines), build in zip(builds, running):
        _, err = build.communicate()
        assert build.returncode == 0, (src.name, defines, err[-2000:])


def _pack_run(points, lib, monkeypatch, epochs=40):
    """A pack trained with the kernels `lib`: its weights and curves; and two networks' states
    on a stream (one sequence each: the kernels' scalar columns)."""
    monkeypatch.setattr(native, "_libs", {**native._libs, torch.float32: lib})
    tr = train.PackTrainer(points)
    for _ in range(epochs):
        if tr.done:
            break
        tr.run_epoch()
    assert tr._ws is not None                              # the kernel's own step
    p = points[0]
    params = init_params(p.arch, p.layers, p.cells, "sum", torch.tensor([3, 4]))
    u = torch.linspace(-1, 1, 300).reshape(1, 1, 300).expand(2, 1, 300).contiguous()
    states = kernel_states(p.arch, params, u)
    return {k: v.clone() for k, v in tr.params.items()}, [m.curve for m in tr.members], states


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 levels")
@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_a_build_for_avx2_trains_to_the_bits_of_this_machines_own(arch, monkeypatch):
    """The kernels built for x86-64-v3 (AVX2 and FMA: most laptops; there each 64-byte vector
    is held as its two halves, by hand) train a pack, and run a stream, to the same bits as
    those built for this CPU (on an AVX-512 machine, the other vector width) and as the same
    build with the 64-byte vectors left to the compiler (``-DMEMGRID_NO_HALVES``, a training
    step 2.4-7.8x slower there): a vector is 16 floats however many registers hold it, so shipped results retrain
    bit for bit on either kind of CPU."""
    if not all(f in native._cpu_tag().split() for f in LEVELS["x86-64-v3"]) or not _cc_knows("x86-64-v3"):
        pytest.skip("this CPU or compiler has no x86-64-v3")
    v3 = kernels._build(torch.float32, _flags_for("x86-64-v3"))
    v3_wide = kernels._build(torch.float32, _flags_for("x86-64-v3") + ["-DMEMGRID_NO_HALVES"])
    pts = [Point(arch, 2, 9, p, s, max_epochs=40, eval_every=10, eval_size=37, batch_size=40)
           for p, s in [(1, 0), (3, 1), (5, 2)]]
    ours, *others = (_pack_run(pts, lib, monkeypatch) for lib in (kernels.lib(torch.float32), v3, v3_wide))
    for other in others:
        for name in ours[0]:
            assert torch.equal(ours[0][name], other[0][name]), name
        assert repr(ours[1]) == repr(other[1])
        assert torch.equal(ours[2], other[2]) and ours[2].abs().max() > 0


@pytest.mark.parametrize("sigmoid", [False, True])
def test_kernel_activations_match_torch(sigmoid):
    ref = torch.sigmoid if sigmoid else torch.tanh
    for dtype, tol in [(torch.float32, 2.5e-7), (torch.float64, 1e-15)]:
        a = torch.cat([torch.linspace(-60, 60, 200_001, dtype=dtype),
                       torch.tensor([0.0, 1e-30, -1e-30, math.inf, -math.inf], dtype=dtype)])
        out = kernels.activation(a, sigmoid)
        assert (out - ref(a)).abs().max() <= tol
        assert out[-2] == 1 and out[-5] == ref(a[-5])
        assert out[-1] == -1 if not sigmoid else 0 <= out[-1] < 1e-34
        assert torch.isnan(kernels.activation(torch.tensor([math.nan], dtype=dtype), sigmoid)).all()


def _grads(arch, params, x, mask, tbptt, kernel, monkeypatch):
    monkeypatch.setenv("MEMGRID_KERNELS", "1" if kernel else "0")
    ps = {n: v.detach().clone().requires_grad_() for n, v in params.items()}
    xr = x.detach().clone().requires_grad_()
    y = forward(arch, ps, xr, mask, tbptt=tbptt)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
    with torch.no_grad():
        y_eval = forward(arch, ps, xr, mask)
    return [y.detach(), y_eval, xr.grad] + [ps[n].grad for n in sorted(ps)]


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers,cells,batch,tbptt", [(1, 5, 32, 0), (3, 4, 37, 0), (2, 9, 64, 3)])
def test_kernel_is_the_pytorch_path(arch, layers, cells, batch, tbptt, monkeypatch):
    """Outputs (with and without a graph), and gradients on every parameter and the input, agree
    with the PyTorch path (float64), also for batches that are no multiple of the vector width
    and with truncated backpropagation."""
    pts = [Point(arch, layers, cells, p, s, readout="linear") for p, s in [(2, 3), (5, 4), (12, 9)]]
    spec = TaskSpec.of(pts)
    params = {n: v.double() for n, v in init_params(arch, layers, cells, "linear", spec.seed).items()}
    b = make_batch(spec, TRAIN, 0, batch)
    ours = _grads(arch, params, b.x.double(), b.mask, tbptt, True, monkeypatch)
    ref = _grads(arch, params, b.x.double(), b.mask, tbptt, False, monkeypatch)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)
        assert r.abs().max() > 0


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_kernel_pack_invariance_is_bitwise(arch):
    """A point alone and inside a pack with longer sequences: the same bits, output and
    gradients (float32, the training dtype)."""
    alone = Point(arch, 2, 10, 3, 1, q_min=4, q_max=6)              # shorter: T = 6, not 15
    others = [Point(arch, 2, 10, p, s, q_min=10, q_max=15) for p, s in [(7, 2), (1, 0)]]
    out = []
    for group in ([alone, *others], [alone]):
        spec = TaskSpec.of(group)
        params = {n: v.requires_grad_() for n, v in init_params(arch, 2, 10, "sum", spec.seed).items()}
        b = make_batch(spec, TRAIN, 7, 128)
        y = forward(arch, params, b.x, b.mask)
        (y - b.y).abs().mean(1).sum().backward()
        out.append(([y[0].detach()] + [params[n].grad[0] for n in sorted(params)], b))
    (packed, bp), (single, bs) = out
    assert bp.x.shape[2] > bs.x.shape[2]
    assert torch.equal(bp.x[0, :, -bs.x.shape[2]:], bs.x[0])     # the same data, right-aligned
    for a, s in zip(packed, single):
        assert torch.equal(a, s)


def _trained(points, fused, monkeypatch, epochs=60, dtype=torch.float32):
    monkeypatch.setattr(train, "FUSED_STEP", fused)
    tr = train.PackTrainer(points, dtype=dtype)
    for _ in range(epochs):
        if tr.done:
            break
        tr.run_epoch()
    assert (tr._ws is not None) == fused                   # the step it was meant to take
    return tr


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("tbptt,optimizer,schedule", [(0, "sgd", "constant"), (3, "sgd", "cosine"),
                                                     (0, "adam", "cosine")])
def test_kernel_step_is_the_autograd_step(arch, tbptt, optimizer, schedule, monkeypatch):
    """The C kernel's whole step (forward, loss gradient, backward, SGD with momentum or Adam,
    a constant or cosine-decayed rate)
    gives the same bits as the kernel's forward and backward inside torch autograd with the
    torch ops of PackTrainer's update, for the paper's `sum` readout: weights, moments and every
    curve point, also after a member diverged and left the pack."""
    pts = [Point(arch, 2, 5, p, s, lr=lr, momentum=mom, tbptt=tbptt, max_epochs=100,
                 eval_every=10, eval_size=64, q_min=3, q_max=9, optimizer=optimizer,
                 lr_schedule=schedule)
           for p, s, lr, mom in [(1, 0, 0.05, 0.9), (4, 1, 0.02, 0.8), (2, 2, math.inf, 0.9),
                                 (6, 3, 0.1, 0.9)]]
    fused, ref = (_trained(pts, f, monkeypatch) for f in (True, False))
    assert fused.active == ref.active and 1 in ref.active and 2 not in ref.active  # lr inf diverged
    for name in ref.params:
        assert torch.equal(fused.params[name], ref.params[name]), name
        assert torch.equal(fused.bufs[name], ref.bufs[name]), name
        if optimizer == "adam":
            assert torch.equal(fused.sq[name], ref.sq[name]), name
    assert repr([m.curve for m in fused.members]) == repr([m.curve for m in ref.members])  # nan too
    assert ref.params["w_hh.1"].abs().max() > 0


@pytest.mark.parametrize("arch,optimizer", [("rnn", "sgd"), ("lstm", "sgd"), ("gru", "sgd"),
                                            ("gru", "adam")])
def test_kernel_step_with_a_linear_readout(arch, optimizer, monkeypatch):
    """With a learned readout the step sums the readout's gradient over the batch in its own
    order: the same training to float rounding (float64)."""
    pts = [Point(arch, 2, 4, p, s, readout="linear", lr=0.05, max_epochs=30, eval_every=10,
                 eval_size=64, q_min=3, q_max=6, optimizer=optimizer) for p, s in [(1, 0), (3, 1)]]
    fused, ref = (_trained(pts, f, monkeypatch, dtype=torch.float64) for f in (True, False))
    for name in ref.params:
        torch.testing.assert_close(fused.params[name], ref.params[name], atol=1e-12, rtol=1e-10)
    assert not torch.equal(fused.params["w_out"], train.PackTrainer(pts, dtype=torch.float64).params["w_out"])


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_kernel_step_pack_invariance_is_bitwise(arch, monkeypatch):
    """Training a point alone or in a pack with longer sequences and other learning rates:
    the same weights and curve, bit for bit."""
    alone = Point(arch, 2, 6, 1, 5, lr=0.03, max_epochs=100, eval_every=10, eval_size=64, q_min=3, q_max=5)
    others = [Point(arch, 2, 6, p, s, lr=lr, max_epochs=100, eval_every=10, eval_size=64, q_min=3, q_max=5)
              for p, s, lr in [(9, 1, 0.1), (4, 2, 0.01)]]
    packed, single = (_trained(g, True, monkeypatch, epochs=40) for g in ([*others, alone], [alone]))
    assert packed.T > single.T
    for name in single.params:
        assert torch.equal(packed.params[name][2], single.params[name][0]), name
    assert packed.members[2].curve == single.members[0].curve


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_stream_states_by_the_kernel(arch, monkeypatch):
    """Jaeger's MC reads every layer's states on a stream from the kernel: the PyTorch path's
    states (float64, both reads), and a network's MC bitwise the same alone or beside others."""
    from memgrid.stream_mc import input_stream, network_states, trained_memory_capacity
    seed = torch.arange(12)              # the PyTorch path's MKL differs at K = 12 and K = 1
    params = init_params(arch, 3, 4, "sum", seed)
    u = input_stream(seed, 300, 0.0, 1.0)
    p64 = {n: v.double() for n, v in params.items()}
    for read in ("all", "last"):
        ours = network_states(arch, p64, u, read)
        monkeypatch.setenv("MEMGRID_KERNELS", "0")
        ref = network_states(arch, p64, u, read)
        monkeypatch.delenv("MEMGRID_KERNELS")
        assert ours.shape == ref.shape == (12, 300, 12 if read == "all" else 4)
        torch.testing.assert_close(ours, ref, atol=1e-13, rtol=0)
    mc, _ = trained_memory_capacity(arch, params, seed, length=1000)
    alone = torch.cat([trained_memory_capacity(arch, {n: v[i:i + 1] for n, v in params.items()}, seed[i:i + 1],
                                               length=1000)[0] for i in range(12)])
    assert torch.equal(mc, alone) and (mc > 0.5).all()


def test_without_a_compiler_memgrid_falls_back_to_pytorch(monkeypatch, tmp_path):
    """No compiler: one warning per library, nothing written, and the same batch and (to float
    rounding) the same outputs as with the kernels."""
    pts = [Point("rnn", 1, 4, 2, 0)]
    spec = TaskSpec.of(pts)
    params = init_params("rnn", 1, 4, "sum", spec.seed)
    b_c = make_batch(spec, TRAIN, 0, 16)
    y_c = forward("rnn", params, b_c.x, b_c.mask)
    monkeypatch.setattr(native, "_libs", {})              # restored after: later tests build
    monkeypatch.setenv("MEMGRID_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.warns(RuntimeWarning, match="C batch generator is not available"):
        b = make_batch(spec, TRAIN, 0, 16)
    with pytest.warns(RuntimeWarning, match="C kernel of the cells is not available"):
        y = forward("rnn", params, b.x, b.mask)
    assert native._libs == {"task": None, torch.float32: None}
    assert list(tmp_path.iterdir()) == []
    assert torch.equal(b.x, b_c.x) and torch.equal(b.mask, b_c.mask)
    torch.testing.assert_close(y, y_c, atol=1e-6, rtol=0)


def test_a_points_stream_mc_is_its_own_whatever_finished_beside_it():
    """stored_rows gives each network the MC it gets alone, bit for bit: which points finish
    at the same evaluation depends on the clock, and three networks of N = 95 fitted in one
    batch round differently (by ~1e-14) from each fitted alone."""
    from memgrid.rows import stored_rows

    torch.set_num_threads(1)              # as in a trial
    cfg = Point("rnn", 5, 19, 1, 0, mc_length=4000)
    seeds = [3, 4, 5]
    params = init_params("rnn", 5, 19, "sum", torch.tensor(seeds))
    weights = [{n: v[i] for n, v in params.items()} for i in range(3)]
    finished = [({"seed": s, "stop_reason": "max_epochs"}, [], w) for s, w in zip(seeds, weights)]
    rows, _ = stored_rows(cfg, finished, "cpu")
    for i, s in enumerate(seeds):
        alone, _ = stored_rows(cfg, finished[i:i + 1], "cpu")
        assert rows[i]["mc_stream"] == alone[0]["mc_stream"] and 0 < alone[0]["mc_stream"] <= 95

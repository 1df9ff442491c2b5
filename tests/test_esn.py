"""Echo state networks and Jaeger's memory capacity: theory checks, a plain numpy reference,
seed purity and pack invariance of the ESN fit, the trained-network path, the Tune branch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from memgrid.results import POINT_SCHEMA, part_names, read_curves, read_points, write_points
from memgrid.rows import point_settings
from memgrid.analysis import plot_mc_vs_units
from memgrid.stream_mc import (input_stream, network_states, ridge_fit,
                              stream_memory_capacity, trained_memory_capacity)
from memgrid.config import Point
from memgrid.esn import (Reservoirs, fit_esn_pack, init_reservoirs, reservoir_memory_capacity,
                         reservoir_states)
from memgrid.models import forward, init_params


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Step-by-step loops over tiny tensors: threads only add overhead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def orthogonal_reservoirs(K: int, N: int, radius: float, seed: int = 0) -> Reservoirs:
    """Dense reservoirs W = radius * Q, Q orthogonal (QR of a Gaussian matrix)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(K, N, N, generator=g, dtype=torch.float64))
    res = init_reservoirs(torch.arange(K), N, connectivity=1.0)
    return Reservoirs(radius * q, res.w_in, res.leak_rate)


def esn_point(**kw) -> Point:
    return Point(**{"arch": "esn", "layers": 1, "cells": 10, "position": 1, "seed": 0, **kw})


# ---------------------------------------------------------------------------------------------
# Jaeger's MC: a plain numpy reference, written from the definition, independent of stream_mc.py.


def reference_mc(w, w_in, u, k_max, washout, test_frac=0.5, linear=False):
    """MC_k, k = 1..k_max: run the reservoir in numpy, least squares with a bias column per delay
    (np.linalg.lstsq) on the first part, Pearson r^2 (np.corrcoef) on the held-out rest."""
    T, N = len(u), len(w_in)
    h, states = np.zeros(N), np.empty((T, N))
    for t in range(T):
        h = w @ h + w_in * u[t]
        h = h if linear else np.tanh(h)
        states[t] = h
    n = T - washout
    n_fit = n - round(n * test_frac)
    x = np.c_[states[washout:], np.ones(n)]
    y = np.stack([u[washout - k:T - k] for k in range(1, k_max + 1)], 1)   # column k-1: u(t-k)
    coef = np.linalg.lstsq(x[:n_fit], y[:n_fit], rcond=None)[0]          # one fit per column
    pred = x[n_fit:] @ coef
    return np.array([np.corrcoef(pred[:, j], y[n_fit:, j])[0, 1] ** 2 for j in range(k_max)])


@pytest.mark.parametrize("N,linear,radius,connectivity", [
    (10, False, 0.9, 0.3), (20, False, 0.9, 0.2), (20, True, 0.9, 1.0), (50, False, 0.95, 0.1)])
def test_mc_matches_numpy_reference(N, linear, radius, connectivity):
    seeds = torch.arange(2)
    res = init_reservoirs(seeds, N, spectral_radius=radius, connectivity=connectivity)
    k_max, length = 2 * N, 4000
    mc, mc_k = reservoir_memory_capacity(res, seeds, k_max=k_max, length=length, ridge=0.0,
                                         linear=linear, low=-0.8, high=0.8)
    u = input_stream(seeds, length, -0.8, 0.8).numpy()
    for k in range(2):
        ref = reference_mc(res.w[k].numpy(), res.w_in[k].numpy(), u[k], k_max, 100, linear=linear)
        np.testing.assert_allclose(mc_k[k].numpy(), ref, atol=1e-6)
        assert abs(mc[k].item() - ref.sum()) < 1e-5


# ---------------------------------------------------------------------------------------------
# Theory.


@pytest.mark.parametrize("N", [10, 20])
def test_linear_orthogonal_reservoir_reaches_N(N):
    """Linear, W = 0.95 Q: sum over every delay k >= 0 is N (Jaeger); the classical k >= 1 sum
    misses only MC_0 of it."""
    res = orthogonal_reservoirs(3, N, 0.95)
    seeds = torch.arange(3)
    mc0, mc_k = reservoir_memory_capacity(res, seeds, k_max=4 * N, length=20_000, k_min=0,
                                          linear=True, low=-0.8, high=0.8)
    assert mc_k.shape == (3, 4 * N + 1)
    assert ((mc0 - N).abs() < 0.05 * N).all(), mc0
    mc1 = mc_k[:, 1:].sum(1)
    assert ((mc1 > 0.88 * N) & (mc1 < N)).all(), mc1


def test_k_min_only_adds_the_current_input():
    res = orthogonal_reservoirs(2, 6, 0.9)
    _, mc_k0 = reservoir_memory_capacity(res, torch.arange(2), k_max=12, length=3000, k_min=0)
    mc, mc_k = reservoir_memory_capacity(res, torch.arange(2), k_max=12, length=3000)
    assert mc_k.shape == (2, 12)                         # default k_min = 1: delays 1..k_max
    torch.testing.assert_close(mc_k, mc_k0[:, 1:])
    torch.testing.assert_close(mc, mc_k.sum(1))


def test_every_mc_at_most_N_and_mc_k_in_unit_interval():
    seeds = torch.arange(3)
    for N in (3, 8, 20):
        for radius in (0.5, 0.9, 1.3):
            for linear in (False, True):
                if linear and radius > 1:
                    continue                              # a linear reservoir past 1 explodes
                res = init_reservoirs(seeds, N, spectral_radius=radius, connectivity=0.5,
                                      leak_rate=0.7 if radius == 0.9 else 1.0)
                mc, mc_k = reservoir_memory_capacity(res, seeds, length=4000, linear=linear)
                assert ((mc_k >= 0) & (mc_k <= 1)).all()
                torch.testing.assert_close(mc, mc_k.sum(1))
                assert (mc <= N).all(), (N, radius, linear, mc)
                assert (mc > 0).all()


def test_delay_line_states_hand_computed():
    """States that are the last 5 inputs: MC_k = 1 for k = 0..4, 0 beyond (up to chance)."""
    u = input_stream(torch.tensor([3]), 6000)
    states = torch.stack([torch.roll(u, j, 1) for j in range(5)], 2)    # h(t)_j = u(t - j)
    mc, mc_k = stream_memory_capacity(states, u, 10, k_min=0, ridge=0.0)
    torch.testing.assert_close(mc_k[0, :5], torch.ones(5, dtype=torch.float64))
    assert mc_k[0, 5:].max() < 5e-3
    mc1, _ = stream_memory_capacity(states, u, 10, ridge=0.0)
    assert abs(mc1.item() - 4) < 0.01                    # classical: delays 1..4


def test_unrelated_states_have_no_memory():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(2, 6000, 10, generator=g, dtype=torch.float64)
    mc, mc_k = stream_memory_capacity(states, input_stream(torch.arange(2), 6000), 20)
    assert (mc < 0.05).all() and (mc_k >= 0).all()


def test_ridge_fit_against_lstsq():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 200, 6, generator=g, dtype=torch.float64)
    y = x @ torch.randn(2, 6, 3, generator=g, dtype=torch.float64) + 0.5
    y = y + 0.1 * torch.randn(2, 200, 3, generator=g, dtype=torch.float64)
    w, b = ridge_fit(x, y, 0.0)
    for k in range(2):
        a = np.c_[x[k].numpy(), np.ones(200)]
        ref = np.linalg.lstsq(a, y[k].numpy(), rcond=None)[0]
        np.testing.assert_allclose(w[k].numpy(), ref[:6], atol=1e-10)
        np.testing.assert_allclose(b[k, 0].numpy(), ref[6], atol=1e-10)
    w_r, _ = ridge_fit(x, y, 1e3)                       # shrinks, bias unpenalised
    assert (w_r.norm(dim=1) < w.norm(dim=1)).all()


# ---------------------------------------------------------------------------------------------
# Reservoirs: settings and seeds.


def test_reservoir_is_a_pure_function_of_seed_and_settings():
    a = init_reservoirs(torch.tensor([3, 7, 11]), 100, spectral_radius=0.8, input_scaling=0.5,
                        connectivity=0.1)
    b = init_reservoirs(torch.tensor([7]), 100, spectral_radius=0.8, input_scaling=0.5,
                        connectivity=0.1)
    assert torch.equal(a.w[1], b.w[0]) and torch.equal(a.w_in[1], b.w_in[0])
    assert not torch.equal(a.w[0], a.w[1])
    radius = torch.linalg.eigvals(a.w).abs().amax(-1)
    torch.testing.assert_close(radius, torch.full((3,), 0.8, dtype=torch.float64))
    density = (a.w != 0).double().mean((1, 2))
    assert ((density > 0.08) & (density < 0.12)).all(), density
    assert a.w_in.abs().max() <= 0.5 and a.w_in.abs().max() > 0.45
    pts = [esn_point(cells=100, seed=s, spectral_radius=0.8, input_scaling=0.5) for s in (3, 7, 11)]
    assert torch.equal(Reservoirs.of(pts).w, a.w)


def test_masked_padding_leaves_the_state_untouched():
    res = init_reservoirs(torch.arange(2), 6, connectivity=0.5, leak_rate=0.6)
    x = input_stream(torch.arange(2), 7).float().reshape(2, 1, 7)
    from memgrid.esn import run_reservoirs
    alone = run_reservoirs(res, x)
    padded = torch.cat([torch.full((2, 1, 4), 0.3), x], 2)          # junk where masked
    mask = torch.arange(11).reshape(1, 1, 11)[..., :4] >= 4           # first 4 steps: not started
    torch.testing.assert_close(run_reservoirs(res, padded, mask.expand(2, 1, 4)), alone,
                               rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# The task fit.


def test_esn_fit_rows(tmp_path):
    pts = [esn_point(position=p, seed=s) for p in (1, 2, 12) for s in (0, 1)]
    pts += [esn_point(position=p, q_min=10, q_max=10) for p in (1, 10)]       # fixed length
    rows, curves = [], []
    for pack in (pts[:6], pts[6:]):
        r, c = fit_esn_pack(pack, grid_name="esn-test", pack_id="pack-x", train_size=4096)
        rows += r
        curves += c
    by = {(r["position"], r["seed"], r["q_max"]): r for r in rows}
    for s in (0, 1):
        assert by[1, s, 15]["loss"] < 0.01 and by[1, s, 15]["r2"] > 0.99
        assert by[1, s, 15]["stop_reason"] == "solved"
        assert by[12, s, 15]["loss"] > 0.15 and by[12, s, 15]["stop_reason"] == "fitted"
    assert by[1, 0, 10]["loss"] < 0.01
    for r in rows:
        assert r["epochs"] == 0 and r["units"] == 10 and r["params"] == 11
        assert r["best_loss"] == r["loss"] and 0 <= r["r2"] <= 1 and 0 < r["mc_stream"] < 10
    assert by[1, 0, 15]["mc_stream"] == by[12, 0, 15]["mc_stream"]       # one reservoir per seed
    assert [c["epoch"] for c in curves] == [0] * len(pts)
    pa.Table.from_pylist(rows, schema=POINT_SCHEMA)                 # the schema holds them
    write_points(str(tmp_path), "pack-x-0000", rows, curves)
    back = read_points(str(tmp_path)).to_pandas()
    assert len(back) == len(pts) and set(back["stop_reason"]) == {"solved", "fitted"}


def test_esn_fit_is_pack_invariant():
    """A point fitted alone or in a pack that pads further (p = 12 shifts q to 12..17) and mixes
    seeds and positions: the same numbers up to float rounding."""
    target = esn_point(cells=8, position=3, seed=5)
    pack = [esn_point(cells=8, position=p, seed=s) for s in (4, 5) for p in (1, 3, 12)]
    alone, _ = fit_esn_pack([target], train_size=2048)
    packed, _ = fit_esn_pack(pack, train_size=2048)
    row = next(r for r in packed if r["point_id"] == target.point_id)
    for k in ("loss", "r2", "mc_stream"):
        assert row[k] == pytest.approx(alone[0][k], rel=1e-9, abs=1e-12), k
    again, _ = fit_esn_pack(pack, train_size=2048)
    assert [r["loss"] for r in again] == [r["loss"] for r in packed]


# ---------------------------------------------------------------------------------------------
# Trained networks.


def test_trained_rnn_with_reservoir_weights_has_the_reservoir_mc():
    """An rnn cell with W_hh = W, W_ih = w_in and no bias is a leak-free ESN: same states and MC
    through memgrid.models.forward as through memgrid.esn."""
    seeds = torch.tensor([2, 9])
    res = init_reservoirs(seeds, 8, connectivity=0.5)
    params = {"w_ih.0": res.w_in[:, :, None].clone(), "w_hh.0": res.w.clone(),
              "b_ih.0": torch.zeros(2, 8, dtype=torch.float64),
              "b_hh.0": torch.zeros(2, 8, dtype=torch.float64)}
    u = input_stream(seeds, 300)
    torch.testing.assert_close(network_states("rnn", params, u), reservoir_states(res, u))
    mc_rnn, mck_rnn = trained_memory_capacity("rnn", params, seeds, length=3000)
    mc_esn, mck_esn = reservoir_memory_capacity(res, seeds, length=3000)
    torch.testing.assert_close(mck_rnn, mck_esn)


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_trained_mc_reads_every_layer(arch):
    seeds = torch.arange(3)
    params = init_params(arch, 2, 4, "sum", seeds)
    u = input_stream(seeds, 200)
    states = network_states(arch, params, u)                              # (K, T, 8)
    _, last = forward(arch, params, u.float().reshape(3, 1, 200), torch.ones(3, 1, 0, dtype=torch.bool),
                      return_states=True)
    torch.testing.assert_close(states[:, :, 4:], torch.stack(last, 1)[..., 0])
    torch.testing.assert_close(network_states(arch, params, u, read="last"), states[:, :, 4:])
    mc, mc_k = trained_memory_capacity(arch, params, seeds, length=3000)
    assert mc_k.shape == (3, 16) and ((mc_k >= 0) & (mc_k <= 1)).all()
    assert ((mc > 0) & (mc <= 8)).all(), mc


# ---------------------------------------------------------------------------------------------
# Integration: the figure and the Tune trial's esn branch.


def test_plot_mc_vs_units(tmp_path):
    pts = [esn_point(cells=c, position=p, seed=s) for c in (4, 8) for p in (1, 2, 3) for s in (0, 1)]
    rows = []
    for c in (4, 8):
        rows += fit_esn_pack([p for p in pts if p.cells == c], train_size=1024)[0]
    for l, c in ((1, 4), (2, 4)):                                         # stand-in trained rows
        for p in (1, 2, 3):
            rows.append({**point_settings(Point("rnn", l, c, p, 0), "g"), "units": c * l,
                         "r2": 0.9 if p <= c else 0.1, "mc_stream": 0.8 * c * l - l, "loss": 0.01})
    import pandas as pd
    fig = plot_mc_vs_units(pd.DataFrame(rows))
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == [1, 8]       # the bound N, from N = l = 1 up
    legends = [*fig.legends, *filter(None, [a.get_legend() for a in fig.axes])]
    assert any("l = 2" in t.get_text() for lg in legends for t in lg.get_texts())
    fig.savefig(tmp_path / "mc.png")
    assert (tmp_path / "mc.png").stat().st_size > 10_000


def test_pack_trial_fits_esn_packs(tmp_path, monkeypatch):
    tune = pytest.importorskip("ray.tune")
    from memgrid.packs import pack_id, pack_spec
    from memgrid.run.trial import pack_trial
    reports = []
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: reports.append(metrics))
    pts = [esn_point(cells=6, position=p, seed=0, eval_size=256) for p in (1, 2, 14)]
    pid = pack_id(pts)
    config = {"pack": pack_spec(pts), "out": str(tmp_path), "grid": "mixed", "cpus": 1, "gpus": 0}
    pack_trial(config)
    got = read_points(str(tmp_path)).to_pandas()
    assert sorted(got["position"]) == [1, 2, 14] and set(got["grid"]) == {"mixed"}
    assert (got["epochs"] == 0).all() and got["mc_stream"].notna().all()
    assert len(read_curves(str(tmp_path))) == 3
    assert reports[-1]["points_done"] == 3 and reports[-1]["active"] == 0
    assert sum(v for k, v in reports[-1].items() if k.startswith("stop_")) == 3
    pack_trial(config)                                                    # a retry: same part
    assert len(read_points(str(tmp_path))) == 3
    assert part_names(str(tmp_path), pid) == [f"{pid}-0000"]

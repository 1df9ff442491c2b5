"""Training: learning happens, the stopping rule, pack invariance, exact resume."""

import collections
import math

import pytest
import torch

from memgrid.config import Point
from memgrid.stopping import stop_check
from memgrid.task import TRAIN, make_batch
from memgrid.train import PackTrainer, train_points


def curves_by_point(curves):
    out = collections.defaultdict(list)
    for c in curves:
        out[c["point_id"]].append((c["epoch"], c["train_loss"], c["eval_loss"]))
    return out


def test_rnn_learns_p1():
    """The last element: a small RNN gets below 0.05 MAE (0.25 is the constant guess)."""
    p = Point("rnn", 1, 5, 1, 0, max_epochs=1000, eval_every=50, eval_size=512)
    rows, curves = train_points([p])
    (row,) = rows
    assert row["loss"] < 0.05 and row["r2"] > 0.9
    first = curves_by_point(curves)[p.point_id][0]
    assert first[0] == 0 and first[2] > 0.2                  # it started untrained


def test_a_pack_says_where_its_time_went():
    """PackTrainer.seconds: its phases (start, steps, evaluations, rows and stream MC) are each
    measured, each into its own phase, and, timed apart, add up to at most the wall time. Each
    training step and each evaluation is made to take 10 ms more (a sleep, never shorter under
    load): their phases hold at least that, so time booked to the wrong phase shows."""
    import time

    t0 = time.perf_counter()
    tr = PackTrainer([Point("rnn", 2, 4, p, 0, max_epochs=200, eval_every=20, eval_size=128,
                            mc_length=2000) for p in (1, 2)])
    calls = collections.Counter()

    def slowed(name, f):
        def g(*a, **kw):
            calls[name] += 1
            time.sleep(0.01)
            return f(*a, **kw)
        return g

    tr._step, tr.evaluate = slowed("train", tr._step), slowed("evaluate", tr.evaluate)
    tr.run()
    tr.pop_finished()
    wall = time.perf_counter() - t0
    s = tr.seconds
    assert set(s) == {"start", "train", "evaluate", "mc"} and min(s.values()) > 0
    assert calls["train"] >= 20 and calls["evaluate"] >= 1
    assert s["train"] >= 0.01 * calls["train"] and s["evaluate"] >= 0.01 * calls["evaluate"]
    assert sum(s.values()) <= wall


# -- the stopping rule on synthetic curves ------------------------------------------------------

def run_rule(p, losses):
    """Feed a synthetic evaluation curve (one loss per eval_every epochs) to the rule."""
    best, best_epoch = math.inf, 0
    for i, loss in enumerate(losses):
        epoch = i * p.eval_every
        reason, best, best_epoch = stop_check(p, epoch, loss, loss, best, best_epoch)
        if reason:
            return reason, epoch
    return None, None


RULE = Point("rnn", 1, 5, 1, 0, max_epochs=5000, eval_every=100, patience=1000, solved_loss=0.01)


def test_rule_solved():
    assert run_rule(RULE, [0.3, 0.2, 0.05, 0.02, 0.009, 0.001]) == ("solved", 400)


def test_rule_plateau_after_patience_without_improvement():
    curve = [0.5, 0.26] + [0.25] * 60
    # best 0.25 set at epoch 200; no improvement by 1e-3 after that; stop 1000 epochs later
    assert run_rule(RULE, curve) == ("plateau", 1200)


def test_rule_no_plateau_below_the_level_or_while_improving():
    assert run_rule(RULE, [0.5] + [0.2] * 60) == ("max_epochs", 5000)          # 0.2 < 0.24
    slow = [0.25 - 0.0015 * i for i in range(10)] + [0.236] * 60               # improving, then below
    assert run_rule(RULE, slow) == ("max_epochs", 5000)
    p = Point("rnn", 1, 5, 1, 0, max_epochs=5000, eval_every=100, patience=1000, plateau=False)
    assert run_rule(p, [0.25] * 60) == ("max_epochs", 5000)


def test_rule_late_takeoff_is_not_cut_when_patience_allows():
    curve = [0.25] * 9 + [0.1, 0.005]                    # 900 epochs flat, then learns
    assert run_rule(RULE, curve) == ("solved", 1000)
    short = Point("rnn", 1, 5, 1, 0, max_epochs=5000, eval_every=100, patience=500)
    assert run_rule(short, curve) == ("plateau", 500)


def test_rule_diverged():
    assert run_rule(RULE, [0.3, 0.2, float("nan")]) == ("diverged", 200)
    assert run_rule(RULE, [0.3, float("inf")]) == ("diverged", 100)


# -- packs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,optimizer", [("rnn", "sgd"), ("lstm", "sgd"), ("gru", "sgd"),
                                            ("lstm", "adam")])
def test_pack_invariance(arch, optimizer):
    """A point's losses are the same alone or in a mixed pack (other p, seeds, lr, longer T)."""
    pts = [Point(arch, 2, 4, p, s, max_epochs=120, eval_every=20, lr=lr, q_min=5, q_max=8,
                 batch_size=32, eval_size=128, optimizer=optimizer, momentum=mom)
           for p, s, lr, mom in [(1, 0, 0.01, 0.9), (3, 1, 0.05, 0.9), (7, 0, 0.05, 0.5),
                                 (2, 2, 0.03, 0.9)]]
    _, curves = train_points(pts)
    packed = curves_by_point(curves)
    for p in pts:
        _, alone = train_points([p])
        a, b = curves_by_point(alone)[p.point_id], packed[p.point_id]
        assert len(a) == len(b) == 7
        assert max(abs(x[2] - y[2]) for x, y in zip(a, b)) <= 1e-6
        assert max(abs(x[1] - y[1]) for x, y in zip(a, b)) <= 1e-6


def test_stopped_members_leave_the_pack_and_others_continue():
    easy = Point("rnn", 1, 5, 1, 0, max_epochs=600, eval_every=50, eval_size=256)
    boom = Point("rnn", 1, 5, 1, 1, max_epochs=600, eval_every=50, eval_size=256, lr=1e38)  # overflows to inf - inf
    hard = Point("rnn", 1, 5, 9, 0, max_epochs=600, eval_every=50, eval_size=256)
    rows, curves = train_points([easy, boom, hard])
    by = {r["point_id"]: r for r in rows}
    assert by[boom.point_id]["stop_reason"] == "diverged"
    assert by[hard.point_id]["stop_reason"] == "max_epochs" and by[hard.point_id]["epochs"] == 600
    _, alone = train_points([hard])
    a, b = curves_by_point(alone)[hard.point_id], curves_by_point(curves)[hard.point_id]
    assert [x[0] for x in a] == [y[0] for y in b]                  # the same evaluations
    assert max(max(abs(x[1] - y[1]), abs(x[2] - y[2])) for x, y in zip(a, b)) <= 1e-6
    # to float rounding on the PyTorch path (MKL may take another kernel for one matrix than
    # for a batch); bitwise with the C kernel (tests/test_kernels.py)


def test_a_pack_mixing_stop_settings_stops_each_member_as_alone():
    """Stop settings may differ inside a pack (an axis `patience: [...]`): each member stops by
    its own point's rule, as it does trained alone."""
    kw = dict(q_min=6, q_max=6, max_epochs=800, eval_every=20, eval_size=128, batch_size=32,
              mc_length=0, plateau_tol=0.05)
    pack = [Point("rnn", 1, 2, 5, 0, patience=100, **kw), Point("rnn", 1, 2, 5, 0, patience=300, **kw),
            Point("rnn", 1, 2, 1, 1, solved_loss=0.1, **kw), Point("rnn", 1, 2, 1, 1, solved_loss=0.03, **kw)]
    assert len({p.pack_key for p in pack}) == 1
    rows, _ = train_points(pack)
    by = {r["point_id"]: r for r in rows}
    for p in pack:
        (alone,), _ = train_points([p])
        got = by[p.point_id]
        assert (got["stop_reason"], got["epochs"]) == (alone["stop_reason"], alone["epochs"]), p
        assert got["loss"] == pytest.approx(alone["loss"], abs=1e-6)
    stops = [(by[p.point_id]["stop_reason"], by[p.point_id]["epochs"]) for p in pack]
    assert stops[0][0] == stops[1][0] == "plateau" and stops[0][1] < stops[1][1]   # patience
    assert stops[2][0] == stops[3][0] == "solved" and stops[2][1] < stops[3][1]     # solved_loss


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_from_state_is_exact(optimizer):
    pts = [Point("gru", 1, 3, p, 0, max_epochs=200, eval_every=20, eval_size=128, q_min=4, q_max=6,
                 optimizer=optimizer) for p in (1, 2, 3)]
    full = PackTrainer(pts)
    full.run()
    ref = curves_by_point(full.pop_finished()[1])

    first = PackTrainer(pts)
    while first.epoch < 100:
        first.run_epoch()
    state = first.state_dict()
    done_early = first.pop_finished()[0]
    second = PackTrainer(pts)
    second.load_state_dict(state)
    second.drop({r["point_id"] for r in done_early})
    second.run()
    rows, curves = second.pop_finished()
    got = curves_by_point(curves)
    for pid, c in got.items():
        assert c == ref[pid]
    assert len(rows) + len(done_early) == 3


def test_state_dict_loads_without_pickle(tmp_path):
    t = PackTrainer([Point("lstm", 1, 2, 1, 0, max_epochs=40, eval_every=20, eval_size=64)])
    t.run_epoch()
    torch.save(t.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert state["epoch"] == 1


def test_replaying_the_stop_rule_equals_training_with_it():
    """A run with the plateau stop is the no-stop run cut short (determinism), so
    analysis.replay_stopping predicts it exactly from the no-stop curves."""
    import pandas as pd

    from memgrid.analysis import replay_stopping

    base = dict(max_epochs=400, eval_every=20, eval_size=128, batch_size=32, q_min=6, q_max=9)
    free = [Point("rnn", 1, 2, p, s, plateau=False, **base) for p in (1, 5, 6) for s in (0, 1)]
    rows, curves = train_points(free)
    replayed = replay_stopping(pd.DataFrame(rows), pd.DataFrame(curves), plateau=True, patience=100)
    stopped = [Point("rnn", 1, 2, p, s, plateau=True, patience=100, **base) for p in (1, 5, 6) for s in (0, 1)]
    real = pd.DataFrame(train_points(stopped)[0])
    key = ["position", "seed"]
    m = replayed.merge(real, on=key, suffixes=("_replay", "_real"))
    assert len(m) == 6 and (m.stop_reason_real == "plateau").any()
    assert (m.stop_reason_replay == m.stop_reason_real).all()
    assert (m.epochs_replay == m.epochs_real).all()
    assert (m.loss_replay - m.loss_real).abs().max() < 1e-6


@pytest.mark.parametrize("arch,optimizer,schedule", [("rnn", "adam", "constant"),
                                                     ("lstm", "adam", "cosine"),
                                                     ("gru", "adam", "constant"),
                                                     ("gru", "sgd", "cosine")])
def test_training_is_torch_optim(arch, optimizer, schedule):
    """Every member of a pack follows torch.optim.Adam (or torch.optim.SGD with momentum) on a
    torch.nn module holding its initial weights, fed the same batches (fixed length, so the
    module sees them whole), with the member's own lr and beta1 (`momentum`), in float64; under
    `cosine`, with torch's CosineAnnealingLR over the budget stepped after every step."""
    from .test_models import torch_module_like

    kw = dict(q_min=6, q_max=6, max_epochs=30, eval_every=10, eval_size=64, batch_size=16,
              optimizer=optimizer, lr_schedule=schedule, mc_length=0, solved_loss=0.0,
              plateau=False)
    pts = [Point(arch, 2, 3, 2, 0, lr=0.01, momentum=0.9, **kw),
           Point(arch, 2, 3, 4, 1, lr=0.05, momentum=0.5, **kw)]
    trainer = PackTrainer(pts, dtype=torch.float64)
    init = {n: v.detach().clone() for n, v in trainer.params.items()}
    refs = [torch_module_like(arch, trainer.params, k, 2, 3) for k in range(len(pts))]
    if optimizer == "adam":
        opts = [torch.optim.Adam(m.parameters(), lr=p.lr, betas=(p.momentum, 0.999))
                for m, p in zip(refs, pts)]
    else:
        opts = [torch.optim.SGD(m.parameters(), lr=p.lr, momentum=p.momentum)
                for m, p in zip(refs, pts)]
    decay = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=30) if schedule == "cosine"
             else None for o in opts]
    batches = [make_batch(trainer.spec, TRAIN, step, 16, trainer.T) for step in range(30)]
    trainer.run()
    for k, (m, opt) in enumerate(zip(refs, opts)):
        for b in batches:
            h, _ = m(b.x[k].double().unsqueeze(-1))            # (B, T, c): every sequence whole
            loss = (h[:, -1].sum(1) - b.y[k].double()).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if decay[k] is not None:
                decay[k].step()
        final = trainer.finished[k][2]                         # the member's trained weights
        assert torch.allclose(final["w_hh.1"], m.weight_hh_l1.detach(), atol=1e-9, rtol=0)
        assert torch.allclose(final["b_ih.0"], m.bias_ih_l0.detach(), atol=1e-9, rtol=0)
        assert (final["w_hh.1"] - init["w_hh.1"][k]).abs().max() > 1e-3      # it trained

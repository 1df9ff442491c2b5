"""Packs: which points train together, how large a pack may be, and what it costs. The one
cost model of memory and CPU seconds, per pack member and per point, Ray-free and torch-free:
the driver plans with it (``memgrid.run``), `memgrid run --dry-run` shows its plan, the checks
before a run refuse with it a point no machine trains (``memgrid.run.preflight``), and the
benchmarks check it.
"""

from __future__ import annotations

import hashlib
import json
import math

from .cells import CELLS, GATES
from .config import MC_BYTES_PER_STEP, PACK_FREE, Point
from .fast import DIAGONAL

K_CAP = {"cpu": 256, "cuda": 4096}
"""largest pack: throughput stops growing past K ~ 128-1024 on CPU"""
CACHE_BYTES = 12e6
"""CPU: a pack's forward activations should stay about this size. Past it a step streams from
memory and throughput per point falls (measured on 2 cores, 2 MB L2 each: the best K keeps
6-25 MB of activations, e.g. rnn 1,5: K ~ 128; 3,10: ~32; 5,20: ~8-16). The C kernel's step
keeps one member's states at a time: its throughput per point is flat past this K."""
MEMBER_BYTES_PER_S = 1.6e9
"""CPU cost model: one point-epoch takes about (forward activation bytes) / this many seconds
at the best K (within 20% for rnn/lstm/gru, l = 1..5, c = 1..20, measured)"""
OP_S = 5e-6
"""CPU cost model: fixed cost of one op (dispatch), whatever K"""
WEIGHT_COPIES = 8
"""float32 copies of a network's weights while it trains: weights, gradients, the optimizer's
moments or momentum, the best weights kept and the buffers of a step"""
FLOPS_PER_S = 1e10
"""multiply-adds per second of one core at best (a fast AVX-512 core on a large matrix): the
time bound of :func:`point_seconds` refuses only what no machine trains in time"""


def _layer_rows(p: Point) -> list[int]:
    """Rows of each layer's fused input column [x; 1; h] (``memgrid.models``)."""
    return [(1 if i == 0 else p.cells) + 1 + p.cells for i in range(p.layers)]


def _autograd_rows(p: Point) -> tuple[int, int]:
    """A cell without a fast path (``Cell.fast``), trained by autograd on its definition:
    (rows its weight matrices compute per step and layer, rows of its state)."""
    cell = CELLS[p.arch]
    shapes = cell.weights(p.cells, p.cells)
    return sum(s[0] for s in shapes.values() if len(s) == 2), sum(cell.state_rows(p.cells))


def _activation_bytes(p: Point) -> int:
    """Forward buffers kept for backward, per member and step (``memgrid.fast.stack._Stack``;
    a diagonal cell's C kernel: about a row per row its weights compute and per state row; any
    other cell: autograd's saved tensors, about three per row computed)."""
    if p.arch in DIAGONAL:
        return 4 * p.batch_size * (p.q_hi + 1) * p.layers * sum(_autograd_rows(p))
    if p.arch in CELLS and not CELLS[p.arch].fast:
        rows, states = _autograd_rows(p)
        return 4 * p.batch_size * p.q_hi * p.layers * (3 * rows + 2 * states)
    g, c, T, B = GATES.get(p.arch, 1), p.cells, p.q_hi, p.batch_size
    per_layer = [(T + 1) * r + (T if g > 1 else 1) * g * c + (3 * T + 2) * c * (p.arch == "lstm")
                 for r in _layer_rows(p)]
    return 4 * B * sum(per_layer)


def member_bytes(p: Point) -> int:
    """Peak memory of one pack member while training, an upper bound: its buffers
    (:func:`_buffer_bytes`) and its weights' WEIGHT_COPIES float32 copies. A pack of K members
    needs K times this, and one stream MC at a time (:func:`stream_mc_bytes`); plan_packs never
    puts more members in a pack than its memory allows."""
    return _buffer_bytes(p) + 4 * WEIGHT_COPIES * p.params


def _buffer_bytes(p: Point) -> int:
    """A member's buffers while it trains (measured RSS per member: 70-90 % of this on the
    PyTorch path, rnn/lstm/gru, l = 1..5, c = 1..20; 14-35 % with the C kernel's step, which
    keeps one member's states at a time; benchmarks/README.md): forward buffers kept for
    backward, backward buffers, data generation, the evaluation set and its forward."""
    if p.arch == "esn":   # states and ridge fit in float64 (memgrid.esn.fit_task, which also
        return 32 * max(8192, p.eval_size) * (p.cells + p.q_hi)    # caps them per chunk)
    T, B, E = p.q_hi, p.batch_size, p.eval_size
    if not CELLS[p.arch].fast:
        rows, states = _autograd_rows(p)
        eval_fwd = 4 * E * 2 * (rows + states) * p.layers
        return int(1.3 * (2 * _activation_bytes(p) + 4 * B * T * 6 + E * (5 * T + 12) + eval_fwd))
    g, c = GATES[p.arch], p.cells
    rows = _layer_rows(p)
    backward = 4 * B * (T * (sum(rows) - 2) + g * c + 8 * c)
    data = 4 * B * T * 6
    eval_set = E * (4 * T + T + 12)
    eval_fwd = 4 * E * (sum(2 * r for r in rows) + g * c + 3 * c * (p.arch == "lstm") + 4)
    return int(1.3 * (_activation_bytes(p) + backward + data + eval_set + eval_fwd))


def stream_mc_bytes(p: Point) -> int:
    """Memory of the stream MC of one trained point (measured once it has finished, one point
    of a pack at a time): MC_BYTES_PER_STEP per step of its stream and unit; 0 where
    mc_length is 0."""
    return MC_BYTES_PER_STEP * p.mc_length * p.units


def point_bytes(p: Point) -> int:
    """Memory of one point training alone, about: :func:`member_bytes` and its stream MC."""
    return member_bytes(p) + stream_mc_bytes(p)


def pack_seconds(p: Point, k: int) -> float:
    """Rough CPU seconds to train a pack of k members like `p` to max_epochs (cost model, for
    balancing packs across slots; relative values matter)."""
    if p.arch == "esn":
        return k * _buffer_bytes(p) / MEMBER_BYTES_PER_S
    if CELLS[p.arch].fast:
        per_step = {"rnn": 10, "gru": 22, "lstm": 24}[p.arch]
    elif p.arch in DIAGONAL:        # a C kernel's step, as the RNN's: its rows are its cost
        per_step = 10
    else:           # autograd: about 8 ops forward and backward per weight matrix, 8 more
        per_step = 8 * sum(len(s) == 2 for s in CELLS[p.arch].weights(p.cells, p.cells).values()) + 8
    n_ops = per_step * p.q_hi * p.layers + 80
    per_epoch = p.steps_per_epoch * (n_ops * OP_S + k * _activation_bytes(p) / MEMBER_BYTES_PER_S)
    return p.max_epochs * per_epoch


def point_seconds(p: Point) -> float:
    """Seconds one point trains at the least, to max_epochs: :func:`pack_seconds` of a pack of
    one (the ops and activations) plus its weights' multiply-adds (forward and backward, 3 per
    weight and step) at FLOPS_PER_S. pack_seconds is fitted on measured packs of small
    networks, whose multiply-adds it holds; past a few hundred units they dominate, and this
    bound says so (a point is never cut across trials)."""
    if p.arch == "esn":
        return pack_seconds(p, 1)
    steps = p.max_epochs * p.steps_per_epoch
    return pack_seconds(p, 1) + 3 * p.params * p.batch_size * p.q_hi * steps / FLOPS_PER_S


def best_k(p: Point, device: str = "cpu") -> int:
    """Pack size at which throughput per point peaks: on CPU, activations of about
    CACHE_BYTES; on a GPU, as large as K_CAP (memory caps it separately)."""
    if device != "cpu":
        return K_CAP.get(device, 4096)
    return int(min(K_CAP["cpu"], max(8, CACHE_BYTES // max(_activation_bytes(p), 1))))


def _deal(members: list[Point], n: int) -> list[list[Point]]:
    """n packs of one group. Members of one length range are dealt round-robin, so that the
    packs last alike; with several (positions past q_min shift it), members are cut in runs
    of rising q_hi instead: a pack pads to its longest member, and runs keep that padding
    small (p = 11..20 in one pack of p = 1..20 would cost up to 1.7x on the PyTorch path, the
    GPU's; the C kernel skips a member's padding, and loses nothing either way)."""
    if len({p.q_hi for p in members}) == 1:
        return [members[i::n] for i in range(n)]
    ordered = sorted(members, key=lambda p: p.q_hi)
    size, extra = divmod(len(ordered), n)
    out, i = [], 0
    for j in range(n):
        k = size + (j < extra)
        out.append(ordered[i:i + k])
        i += k
    return out


def pack_id(points: list[Point]) -> str:
    """Names the pack's part files: the same points give the same id on every run."""
    blob = ",".join(sorted(p.point_id for p in points))
    return "pack-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def pack_spec(points: list[Point]) -> str:
    """A pack as its trial's config holds it (:func:`spec_points` reads it back): JSON of its
    pack_id, the settings its points share (all but PACK_FREE: one pack_key) and one list per
    PACK_FREE setting: in the driver and in every snapshot of Tune's experiment state, 7x
    smaller than every point's settings (fig6_rnn.yaml: 0.7 MB of JSON, not 5.5 MB)."""
    shared = {k: v for k, v in points[0].to_dict().items() if k not in PACK_FREE}
    members = {k: [getattr(p, k) for p in points] for k in PACK_FREE}
    return json.dumps({"pack_id": pack_id(points), "shared": shared, "members": members})


def spec_pack_id(spec: str) -> str:
    """The pack_id of a :func:`pack_spec` (no Point made: the progress line's lookup)."""
    return json.loads(spec)["pack_id"]


def spec_points(spec: str) -> tuple[str, list[Point]]:
    """(pack_id, points) of a :func:`pack_spec`: the same points, bit for bit (JSON gives floats
    back exactly), so the same point_ids."""
    d = json.loads(spec)
    cols = d["members"]
    n = len(cols["position"])
    return d["pack_id"], [Point(**d["shared"], **{k: v[i] for k, v in cols.items()})
                          for i in range(n)]


def plan_packs(points: list[Point], pack: int | str, slots: int, *, device: str = "cpu",
               mem_per_slot: float = 4e9) -> list[list[Point]]:
    """Cut points into packs of points that may share one (same `pack_key`), longest first.

    `pack`: an int caps the pack size (1 = one trial per point); `auto` sizes packs from the
    networks: as large as `mem_per_slot` (bytes a trial may use: K member_bytes and one
    stream_mc_bytes) and K_CAP
    allow and, on CPU, near the size where throughput per point peaks (best_k); then cuts
    groups into more packs while that ends the grid sooner on `slots` concurrent trials (cost
    model pack_seconds). Whatever `pack`, no pack needs more than `mem_per_slot`. Packs come
    longest first: Tune starts trials in this order, which balances the slots.
    """
    dev = device.split(":")[0]
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault(p.pack_key, []).append(p)
    members = list(groups.values())
    n_packs = []
    for ms in members:     # members differ in memory by their length range only (position)
        longest = {p.q_hi: p for p in ms}.values()
        k_mem = max(1, int((mem_per_slot - stream_mc_bytes(ms[0]))
                           // max(member_bytes(p) for p in longest)))
        k = min(K_CAP.get(dev, 256), k_mem, best_k(ms[0], dev)) if pack == "auto" else min(int(pack), k_mem)
        n_packs.append(math.ceil(len(ms) / k))

    def group_costs(g: int, n: int) -> list[float]:
        return [pack_cost(pk) for pk in _deal(members[g], n)]

    if pack == "auto" and slots > 1:       # more packs per group while the grid ends sooner
        costs = [group_costs(g, n) for g, n in enumerate(n_packs)]
        while True:
            flat = [c for cs in costs for c in cs]
            before = max(max(flat), sum(flat) / slots)
            g = max((g for g in range(len(members)) if n_packs[g] < len(members[g])),
                    key=lambda g: max(costs[g]), default=None)
            if g is None:
                break
            size = math.ceil(len(members[g]) / n_packs[g])   # the next n with smaller packs
            n = math.ceil(len(members[g]) / (size - 1))
            trial = group_costs(g, n)
            rest = [c for h, cs in enumerate(costs) if h != g for c in cs]
            after = max(max(rest + trial), (sum(rest) + sum(trial)) / slots)
            if after >= 0.99 * before:
                break
            n_packs[g] = n
            costs[g] = trial
    packs = [pk for ms, n in zip(members, n_packs) for pk in _deal(ms, n)]
    packs.sort(key=pack_cost, reverse=True)
    return packs


def pack_cost(pk: list[Point]) -> float:
    """Cost-model seconds of one pack: :func:`pack_seconds` of its longest member."""
    return pack_seconds(max(pk, key=lambda q: q.q_hi), len(pk))


def makespan_s(packs: list[list[Point]], slots: int) -> float:
    """Cost-model seconds until the last pack ends, packs started longest first (as Tune starts
    them) each on the slot that frees first."""
    ends = [0.0] * max(1, slots)
    for c in sorted((pack_cost(pk) for pk in packs), reverse=True):
        i = ends.index(min(ends))
        ends[i] += c
    return max(ends)


def point_epoch_flops(p: Point, T: int | None = None) -> float:
    """Matmul FLOPs of one point-epoch: training, 3x the forward's (forward, and the two
    products of backward), plus its share of the evaluation (a forward of the evaluation set
    every `eval_every` epochs); W_ih and W_hh of every layer, over the T steps of a batch."""
    T = T or p.q_hi
    g = GATES[p.arch]
    fwd = sum(2 * g * p.cells * ((1 if i == 0 else p.cells) + p.cells) for i in range(p.layers))
    return fwd * T * (3.0 * p.batch_size * p.steps_per_epoch + p.eval_size / p.eval_every)

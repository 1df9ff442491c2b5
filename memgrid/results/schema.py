"""The tables of a results folder: their pyarrow schemas and versions.

`POINT_SCHEMA`: one row per finished point, its settings and what its run measured (the rows
are built by :mod:`memgrid.rows`); `CURVE_SCHEMA`: one row per point per evaluation. Every part
file records the version it was written with (`SCHEMA_VERSION`); a later memgrid reads every
earlier one.
"""

from __future__ import annotations

import pyarrow as pa

_POINT_SETTINGS = [
    ("point_id", pa.string()),
    ("grid", pa.string()),
    ("arch", pa.string()),
    ("layers", pa.int32()),
    ("cells", pa.int32()),
    ("position", pa.int32()),
    ("seed", pa.int32()),
    ("q_min", pa.int32()),          # configured length range
    ("q_max", pa.int32()),
    ("q_lo", pa.int32()),           # range this point trained on (after the `shift` rule)
    ("q_hi", pa.int32()),
    ("long_positions", pa.string()),
    ("readout", pa.string()),
    ("lr", pa.float64()),
    ("momentum", pa.float64()),
    ("optimizer", pa.string()),     # sgd | adam (null in parts written before it existed: sgd)
    ("lr_schedule", pa.string()),   # constant | cosine (null before it existed: constant)
    ("batch_size", pa.int32()),
    ("steps_per_epoch", pa.int32()),
    ("max_epochs", pa.int32()),
    ("tbptt", pa.int32()),
    ("eval_size", pa.int32()),
    ("eval_every", pa.int32()),
    ("solved_loss", pa.float64()),
    ("plateau", pa.bool_()),
    ("plateau_loss", pa.float64()),
    ("plateau_tol", pa.float64()),
    ("patience", pa.int32()),
    # esn settings: null for trained archs
    ("spectral_radius", pa.float64()),
    ("input_scaling", pa.float64()),
    ("connectivity", pa.float64()),
    ("leak_rate", pa.float64()),
    ("ridge", pa.float64()),
    ("mc_length", pa.int32()),      # Jaeger's MC on a stream: its length (0 = not measured)
    ("mc_low", pa.float64()),       # and its input range
    ("mc_high", pa.float64()),
]
_POINT_RESULTS = [
    ("units", pa.int32()),          # N = c * l
    ("params", pa.int64()),         # trainable parameters
    ("epochs", pa.int32()),         # epochs trained (0 for a fitted esn)
    ("stop_reason", pa.string()),   # solved | plateau | diverged | max_epochs | fitted
    ("loss", pa.float64()),         # final evaluation MAE
    ("best_loss", pa.float64()),    # lowest evaluation MAE seen
    ("r2", pa.float64()),           # squared corr(output, target) on the evaluation set: MC_p
    ("mc_stream", pa.float64()),    # Jaeger's MC on a stationary stream (null if not measured)
    ("wall_s", pa.float64()),       # seconds of the pack's wall time this point was in it
    ("pack_id", pa.string()),
    ("lr_source", pa.string()),     # how lr was chosen: `grid`, or `tuned: ...` (memgrid.lr_tuning)
    ("device", pa.string()),
    ("kernel", pa.string()),        # the code path that trained it (KERNELS; null before version 3)
    ("cell_source", pa.string()),   # a user's cell: its file or module, NAME and the file's
                                    # SHA-256 (memgrid.user_cells); null for a built-in one
    ("memgrid_version", pa.string()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
]
SCHEMA_VERSION = 4
"""The tables' version, in every part file's metadata (``memgrid.schema``). 1: parts without
it (`optimizer` and `lr_schedule` may be missing there and read as `sgd` and `constant`);
2: `lr_schedule` and the version itself; 3: `kernel`; 4: `cell_source`. A later memgrid reads every earlier
version: a column a version adds reads as null in older parts, or as the value every older
point had (config.ID_OMITTED_AT); a column is never renamed or given another meaning, so that
a shipped dataset stays readable."""
ADDED_IN = {"points": {"optimizer": 2, "lr_schedule": 2, "kernel": 3, "cell_source": 4},
            "curves": {}}
"""{table: {column: the SCHEMA_VERSION from which a part must have it}}: a part of an earlier
version may lack the column; every other column every part must have. A part lacking a
column its version must have is damaged (:func:`lacking`)."""
KERNELS = ("c-<vector instructions>", "torch", "cuda")
"""what `kernel` holds: memgrid's C kernel (memgrid.fast.kernels) built for the CPU's widest vector
instructions (`c-avx512`, `c-avx2`, ...: its rounding depends on them), PyTorch ops on the
CPU, or PyTorch ops on a GPU. The paths agree per step to float rounding but not over a
whole training run, so a row says which trained it."""
_VERSION_KEY = b"memgrid.schema"
_META = {_VERSION_KEY: str(SCHEMA_VERSION).encode()}
POINT_SCHEMA = pa.schema(_POINT_SETTINGS + _POINT_RESULTS, metadata=_META)
CURVE_SCHEMA = pa.schema([
    ("point_id", pa.string()),
    ("epoch", pa.int32()),
    ("train_loss", pa.float32()),   # mean training MAE over the epochs since the last evaluation
    ("eval_loss", pa.float32()),    # evaluation MAE
], metadata=_META)


def schema_version(schema: pa.Schema) -> int:
    """The SCHEMA_VERSION a part file was written with (1: none recorded)."""
    return int((schema.metadata or {}).get(_VERSION_KEY, b"1"))



TABLES = {"points": POINT_SCHEMA, "curves": CURVE_SCHEMA}


def lacking(schema: pa.Schema, table_name: str) -> list[str]:
    """The columns of `table_name` that a part file of `schema` lacks though its schema
    version must have them (ADDED_IN): such a part is damaged. ValueError where the version
    recorded is not a number."""
    version, added, names = schema_version(schema), ADDED_IN[table_name], set(schema.names)
    return [f.name for f in TABLES[table_name]
            if f.name not in names and added.get(f.name, 1) <= version]

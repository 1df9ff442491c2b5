"""Results on Parquet: the single source of truth for analysis.

A results folder (:mod:`.layout` says what it holds) is written and read through this package
alone: its tables' schemas (:mod:`.schema`), reading and writing their parts (:mod:`.io`), the
packs saved mid-training (:mod:`.saved`), repair and compaction (:mod:`.repair`) and the lock
that keeps one writer per folder (:mod:`.lock`). The names below are its public API.
"""

from .io import damaged_parts as damaged_parts
from .io import done_ids as done_ids
from .io import part_names as part_names
from .io import read_curves as read_curves
from .io import read_points as read_points
from .io import stop_counts as stop_counts
from .io import stops_of as stops_of
from .io import write_part as write_part
from .io import write_points as write_points
from .layout import COMPACTING as COMPACTING
from .layout import DAMAGED as DAMAGED
from .layout import FOLDERS as FOLDERS
from .layout import PACKS as PACKS
from .layout import READ_ERRORS as READ_ERRORS
from .layout import TUNING as TUNING
from .layout import check_folder as check_folder
from .layout import check_results as check_results
from .layout import first_line as first_line
from .layout import read_grid_identity as read_grid_identity
from .layout import resolve as resolve
from .layout import write_grid_identity as write_grid_identity
from .lock import FolderBusy as FolderBusy
from .lock import FolderLock as FolderLock
from .upkeep import COMPACT_ROWS as COMPACT_ROWS
from .upkeep import MERGE_FIRST_PARTS as MERGE_FIRST_PARTS
from .upkeep import compact as compact
from .upkeep import repair as repair
from .upkeep import set_pack_aside as set_pack_aside
from .saved import drop_pack_state as drop_pack_state
from .saved import read_pack_state as read_pack_state
from .saved import saved_packs as saved_packs
from .saved import write_pack_state as write_pack_state
from .schema import ADDED_IN as ADDED_IN
from .schema import CURVE_SCHEMA as CURVE_SCHEMA
from .schema import KERNELS as KERNELS
from .schema import POINT_SCHEMA as POINT_SCHEMA
from .schema import SCHEMA_VERSION as SCHEMA_VERSION
from .schema import TABLES as TABLES
from .schema import schema_version as schema_version

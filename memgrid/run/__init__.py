"""Running a grid on Ray: the one package that imports Ray.

`memgrid run` and `memgrid launch` reach Ray through here alone: the checks before Ray starts
(:mod:`.preflight`), the dry-run plan (:mod:`.plan`), the driver (:mod:`.driver`: Ray started or
joined, one Tune trial per pack, rounds after a lost worker), the trainable that runs in a Ray
worker (:mod:`.trial`), the progress line (:mod:`.progress`), the checks of a Ray address
(:mod:`.address`), a run's timeline (:mod:`.timing`) and `memgrid launch` (:mod:`.launch`).
Ray and torch are imported where they are used: `memgrid run` prints its first line, and
`--dry-run` plans a grid, without paying for either.
"""

import os

# Tune's legacy output with verbose=0 prints nothing: memgrid shows its own progress line
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# memgrid ends a run on Ctrl-C itself (Interrupted): Tune's own handler would print its
# `Tuner.restore(...)` advice, which does not apply (the same command again resumes)
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
# packs checkpoint with every write of finished points; Tune's notice about frequent
# experiment snapshots is expected here and says nothing to act on
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

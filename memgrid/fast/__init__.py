"""The fast paths of the paper's cells, RNN, LSTM and GRU.

One layout of their fused weights (:mod:`.layout`), the stack over layers and steps with
backward through time by hand in PyTorch ops (:mod:`.stack`), the C kernel of the same
(:mod:`.kernels`, ``csrc/cells.c``) and how memgrid's C sources are built and loaded
(:mod:`.native`, which also builds the task's generator, ``csrc/task.c``). Every fast path
computes what the cell's definition (memgrid.cells, run by memgrid.models.reference_forward)
computes, to float rounding.
"""

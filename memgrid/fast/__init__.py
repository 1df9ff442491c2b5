"""The fast paths: of the paper's cells, RNN, LSTM and GRU, and of the diagonal recurrences
(minGRU, minLSTM, the LRU, the selective SSM, and their blocks).

One layout of their fused weights (:mod:`.layout`), the stack over layers and steps with
backward through time by hand in PyTorch ops (:mod:`.stack`), the C kernel of the same
(:mod:`.kernels`, ``csrc/cells.c``) and how memgrid's C sources are built and loaded
(:mod:`.native`, which also builds the task's generator, ``csrc/task.c``). Every fast path
computes what the cell's definition (memgrid.cells, run by memgrid.models.reference_forward)
computes, to float rounding.

The diagonal recurrences have their own C kernel (:mod:`.diagonal`, ``csrc/diagonal.c``),
with the paper cells' products, activations and optimizer (``csrc/common.h``).
"""

DIAGONAL = {"mingru": 0, "minlstm": 1, "lru": 2, "lru_ring": 2, "mamba": 3, "s6_bare": 4,
            "lru_real": 5, "mamba_lin": 3, "s6_bare_lin": 4, "mingru_block": 6, "minlstm_block": 7,
            "lru_block": 8, "mamba_complex": 9}
"""the cells of the diagonal recurrences' C kernel, by their number in csrc/diagonal.c (lru_ring,
mamba_lin, s6_bare_lin: another cell's computation, another init); here, torch-free, for the
cost model (memgrid.packs)"""


def kernel_of(arch: str):
    """The module of the C kernel that runs `arch` (:mod:`.kernels`: rnn, lstm, gru;
    :mod:`.diagonal`: mingru, minlstm, the LRUs, the selective SSMs, real and complex, and the
    blocks), or None. Both give ``usable``, ``train_scratch`` and ``train_step`` alike."""
    from . import diagonal, kernels
    from .layout import ARCH

    return kernels if arch in ARCH else diagonal if arch in diagonal.ARCH else None


def path_name(arch: str, device, dtype=None) -> str:
    """Which code path trains a pack of `arch` on `device` (a row's `kernel`,
    memgrid.results.schema.KERNELS): ``c-<vector width>`` where a C kernel computes it,
    ``torch`` for PyTorch ops on the CPU (MEMGRID_KERNELS=0, no compiler, a cell without a
    kernel), ``cuda`` on a GPU. `dtype`: float32 unless given."""
    import torch

    from . import kernels

    device = torch.device(device)
    if device.type != "cpu":
        return device.type
    mod = kernel_of(arch)
    if mod is not None and mod.lib(dtype or torch.float32) is not None:
        return f"c-{kernels.vector_width()}"
    return "torch"


def prepare() -> bool:
    """Build every C kernel (the paper cells', the diagonal cells', the task's) or load it from
    the cache, in this process, so that the workers started after it load them instead of each
    building them at once. True where they are available."""
    import torch

    from .. import task
    from . import diagonal, kernels

    return (kernels.lib(torch.float32) is not None and diagonal.lib(torch.float32) is not None
            and task._lib() is not None)

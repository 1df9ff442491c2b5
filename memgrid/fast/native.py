"""Building and loading memgrid's C sources (``csrc/``): with the machine's C compiler for its
own CPU's instructions (``-O3 -march=native``; on x86-64 one tuning for every CPU,
``-mtune=znver3``, so that x86-64 CPUs round alike with one compiler), cached, loaded with
ctypes, once per process.

The shared objects go to ``$MEMGRID_KERNEL_CACHE`` (default ``~/.cache/memgrid``), named by a
hash of the source, the compiler and the CPU, so that nodes of a cluster with other CPUs, or a
new version of the source, build their own. Concurrent workers may build at once: each writes
its own temporary file and renames it into place. ``MEMGRID_KERNELS=0`` turns every C source
off (memgrid then takes PyTorch ops, which agree to float rounding).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
if platform.machine() in ("x86_64", "AMD64"):
    # the instructions are the CPU's own, the tuning one for every x86-64 CPU: gcc's tuning
    # decides which multiply-adds it fuses (it splits chains of them on AMD CPUs, by vector
    # width and generation), so with each CPU's own tuning a Zen 1 and a Zen 4 rounded the same
    # kernel apart. Zen 3's is the tuning that trained the shipped results (gcc 12 tunes a
    # Zen 4 for it)
    FLAGS.append("-mtune=znver3")
_lock = threading.Lock()
_libs: dict[object, ctypes.CDLL | None] = {}     # by dtype (the cells) or name (the task)


def enabled() -> bool:
    return os.environ.get("MEMGRID_KERNELS", "1") != "0"


def _cpu_flags_line() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln for ln in f if ln.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    line = _cpu_flags_line()
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def _cpu_tag() -> str:
    return platform.machine() + _cpu_flags_line()


def compiler() -> str | None:
    """The C compiler memgrid builds with: ``$CC``, else cc or gcc on PATH; None where none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cc() -> str:
    cc = compiler()
    if not cc:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    return cc


def compile_so(src: Path, defines: list[str], stem: str, flags: list[str] | None = None) -> Path:
    """The shared object of C file `src` built with `defines`, from the cache or built now
    (`flags`, default ``FLAGS``). Raises RuntimeError (no compiler, a failed build) or OSError."""
    flags = FLAGS if flags is None else flags
    cc = _cc()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    headers = b"".join(h.read_bytes() for h in sorted(src.parent.glob("*.h")))   # it includes
    tag = hashlib.sha256(src.read_bytes() + headers +
                         (version + _cpu_tag() + " ".join(flags + defines)).encode())
    cache = Path(os.environ.get("MEMGRID_KERNEL_CACHE") or Path.home() / ".cache" / "memgrid")
    so = cache / f"{stem}_{tag.hexdigest()[:16]}.so"
    if not so.exists():
        tmp = _build(src, defines, flags, cache)
        try:
            os.replace(tmp, so)
        finally:
            if tmp.exists():
                tmp.unlink()
    return so


def _build(src: Path, defines: list[str], flags: list[str], cache: Path) -> Path:
    """Build `src` into a new file of the folder `cache` (a name no other build has); its path."""
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        cmd = [_cc(), *flags, *defines, "-o", tmp, str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:500]}")
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _open(so: Path, symbols: list[str]) -> tuple[ctypes.CDLL | None, str]:
    """(the loaded object, "") where `so` loads and has every one of `symbols`, else (None, why)."""
    try:
        lib = ctypes.CDLL(str(so))
    except OSError as e:
        return None, str(e)
    missing = [name for name in symbols if not hasattr(lib, name)]
    return (None, f"no symbol {missing[0]}") if missing else (lib, "")


def load_so(src: Path, defines: list[str], stem: str, symbols: list[str],
            flags: list[str] | None = None) -> ctypes.CDLL:
    """:func:`compile_so`, loaded, with every one of `symbols`. A cached object that does not
    load or lacks one (a garbage file, another build under the name) is built again: under a
    fresh name, loaded from there (a process that loaded a file keeps it under its name),
    then put in the cache's place. RuntimeError where even that fails."""
    so = compile_so(src, defines, stem, flags)
    lib, why = _open(so, symbols)
    if lib is not None:
        return lib
    tmp = _build(src, defines, FLAGS if flags is None else flags, so.parent)
    try:
        lib, again = _open(tmp, symbols)
        if lib is None:
            raise RuntimeError(f"{so}: {why}; built again: {again}")
        os.replace(tmp, so)
    finally:
        if tmp.exists():
            tmp.unlink()
    return lib


def load_once(key, build, what: str) -> ctypes.CDLL | None:
    """`build()` once per process for `key`; None where kernels are off (MEMGRID_KERNELS=0) or
    the build fails (then a warning, once, naming `what`)."""
    if not enabled():
        return None
    if key not in _libs:
        with _lock:
            if key not in _libs:
                try:
                    _libs[key] = build()
                except (OSError, RuntimeError) as e:
                    warnings.warn(f"memgrid: {what} is not available, using PyTorch ops instead ({e})",
                                  RuntimeWarning, stacklevel=3)
                    _libs[key] = None
    return _libs[key]


def cpu_text(cpuinfo: str | None = None) -> str:
    """The CPU as a benchmark's header names it: model name, and for AMD the core generation
    from its family (a virtual machine's model name is often only "AMD EPYC"), with its widest
    vectors: `AMD EPYC (Zen 5: cpu family 26, model 2; AVX-512)`."""
    if cpuinfo is None:
        if not os.path.exists("/proc/cpuinfo"):
            return "unknown CPU"
        cpuinfo = open("/proc/cpuinfo").read()
    first = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    name = first.get("model name", "unknown CPU")
    flags = set(first.get("flags", "").split())
    vectors = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    family, model = first.get("cpu family"), first.get("model")
    if first.get("vendor_id") == "AuthenticAMD" and family and family.isdigit():
        # AMD's families: 23 Zen 1 and 2, 25 Zen 3 and (with AVX-512) Zen 4, 26 Zen 5
        gen = {23: "Zen 1/Zen 2", 25: "Zen 4" if "avx512f" in flags else "Zen 3",
               26: "Zen 5"}.get(int(family), "AMD")
        return f"{name} ({gen}: cpu family {family}, model {model}; {vectors})"
    return f"{name} (cpu family {family}, model {model}; {vectors})" if family else name


def pointer(t):
    """A tensor's data as a ctypes pointer for a kernel (None: NULL). The tensor must outlive
    the call."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def on_cpu(lib, *tensors):
    """`lib(dtype)` where `tensors` are CPU tensors of one dtype (what a C kernel takes), else
    None."""
    if any(t.device.type != "cpu" for t in tensors):
        return None
    dtype = tensors[0].dtype
    if any(t.dtype != dtype for t in tensors):
        return None
    return lib(dtype)


def train_step_call(lib, code: int, layers: int, cells: int, linear: bool, tbptt: int, params,
                    bufs, lr, mom, x, mask, y, ws, sqs=None, adam=None):
    """One call of a kernel's whole training step (``memgrid_train_step`` and
    ``memgrid_diag_train_step`` take the same arguments: see memgrid.fast.kernels.train_step),
    for the cell numbered `code` in its source; the outputs `(K, B)`."""
    T, K, B = x.shape
    yhat = y.new_empty(K, B)

    def pointers(ts):
        return (ctypes.c_void_p * len(ts))(*(t.data_ptr() for t in ts))

    if lib.step(code, K, layers, T, mask.shape[0], B, cells, tbptt, int(linear),
                pointers(params), pointers(bufs), pointer(lr), pointer(mom),
                pointers(sqs) if sqs else None, pointer(adam) if sqs else None, pointer(x),
                pointer(mask), pointer(y), pointer(yhat), pointer(ws)):
        raise MemoryError("memgrid kernel: out of memory for its scratch")
    return yhat

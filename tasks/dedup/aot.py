"""The dedup kernels without numba's start-up cost: `kernels.py`'s loops compiled ahead of time.

Loading numba JIT code costs every process about 0.5 s (importing numba and its typing
registries, even from its on-disk cache), which is a quarter of deduplicating 100k records
on two workers. So the entry points (`sketch`, `band_keys`) are compiled
once with `numba.pycc` into an extension module for this machine (its CPU, Python and
numba), kept under `tasks/dedup/__pycache__/`, and imported in a millisecond, without numba.

`make install` builds it (`aot.main()`); otherwise the first process that needs
it does (about 10 s, under a file lock so parallel workers build it once). Where it cannot be
built (no C compiler, a read-only checkout, a numba without pycc), `load()` logs why and
returns the JIT functions of `kernels.py`: the same code, slower to start.
`TUNELINE_DEDUP_KERNELS=jit` forces the JIT functions.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("kernels.py")
CACHE_DIR = Path(__file__).with_name("__pycache__")
_loaded: ModuleType | None = None


def _cpu() -> bytes:
    """What identifies this CPU's instruction set without loading LLVM: the model and feature
    flags from /proc/cpuinfo where there is one."""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))})).encode()
    return f"{platform.machine()} {platform.processor()}".encode()


@functools.lru_cache(maxsize=1)
def module_name() -> str:
    """The extension's name: a hash of what the compiled code depends on (the kernels' source,
    numba, Python, the CPU)."""
    from importlib.metadata import version

    parts = [SOURCE.read_bytes(), version("numba").encode(), sys.version.encode(), _cpu()]
    return "dedup_kernels_" + hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _signatures() -> dict:
    from numba import types

    def array(dtype, ndim=1, readonly=True):
        return types.Array(dtype, ndim, "C", readonly=readonly)

    u8, i64, u32, u64 = types.uint8, types.int64, types.uint32, types.uint64
    return {
        "sketch": i64(array(u8), array(i64), array(u8), array(u8), array(i64), i64, array(u32), array(u32), i64, i64,
                      array(u8, readonly=False), array(i64, readonly=False), array(i64, readonly=False),
                      array(u32, readonly=False), array(u32, 2, readonly=False), array(u64, 2, readonly=False),
                      array(i64, readonly=False), array(u32, readonly=False), array(u32, readonly=False)),
        "band_keys": array(u64, 2, readonly=False)(array(u32, 2), i64, i64),
        "jaccard_pairs_hashed": array(types.float64, readonly=False)(
            array(u32), array(i64), array(i64), array(i64), array(u32, readonly=False), array(i64, readonly=False)),
        "repeated_keys": array(types.boolean, readonly=False)(
            array(u64), array(u64, readonly=False), array(types.uint8, readonly=False)),
    }


def build(directory: Path = CACHE_DIR) -> Path:
    """Compile the kernels into `directory` (atomically, once per machine); return the path."""
    name = module_name()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    final = directory / f"{name}{suffix}"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f".{name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel worker builds it once; the others wait
        if final.exists():
            return final
        import llvmlite.binding as llvm

        from tasks.dedup import kernels

        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=directory))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pycc's pending-deprecation notice (README: known limitations)
                from numba.pycc import CC

                cc = CC(name)
                cc.output_dir = str(staging)
                cc.target_cpu = llvm.get_host_cpu_name()  # this machine's vector units, as the JIT uses
                for export, signature in _signatures().items():
                    cc.export(export, signature)(getattr(kernels, export).py_func)
                cc.compile()
            os.replace(staging / final.name, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load() -> ModuleType:
    """The kernels: the ahead-of-time module (built if missing), else `kernels.py` under JIT."""
    global _loaded
    if _loaded is None:
        if os.environ.get("TUNELINE_DEDUP_KERNELS") == "jit":
            from tasks.dedup import kernels as _loaded
        else:
            try:
                _loaded = _import(build())
            except Exception as exc:  # noqa: BLE001  any failure: the JIT kernels compute the same
                from tasks.step import logger

                logger().warning(f"dedup kernels: no ahead-of-time build ({type(exc).__name__}: {exc}); "
                                 f"using numba JIT, about 0.5 s more per process")
                from tasks.dedup import kernels as _loaded
    return _loaded


def main() -> None:
    """`make install`: build the kernels now; say so, without failing, when they cannot be."""
    try:
        print(f"dedup kernels: {build()}")
    except Exception as exc:  # noqa: BLE001  the pipeline falls back to JIT
        print(f"dedup kernels: no ahead-of-time build ({type(exc).__name__}: {exc}); the JIT kernels will be used")

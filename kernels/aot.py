"""The specialised student step compiled ahead of time, so the serving process never loads numba or LLVM.

In the daemon, importing numba costs about 64 MB of resident memory and loading even cached kernels
starts LLVM's JIT, another 62 MB: with them the daemon sat at 175-198 MB. ``numba.pycc`` compiles the
generated step of ``kernels.specialise`` (the same Python source, through the same numba and LLVM,
inlining the same feature and softmax kernels) into a CPython extension whose only run-time dependency
is NumPy. Its results equal the JIT kernel's bit for bit (``tests/test_aot.py``).

The build runs in a child process (``python -m kernels.aot NAME SOURCE``) so the caller never imports
numba; it takes a few seconds and needs a C compiler and the Python headers (pycc compiles a small C
wrapper). Built modules are cached beside the generated sources, named after a hash of the source (which
embeds ``KERNELS_HASH``) and the numba, llvmlite and NumPy versions, so a change to any of them builds anew.
``numba.pycc`` is deprecated but is numba's only ahead-of-time compiler in the pinned 0.68; where a build
fails, ``daemon.core.model`` falls back to the JIT kernel and says why.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from kernels.specialise import SIGNATURE, cache_dir, generate_source, import_source, write_source

BUILD_TIMEOUT_S = 600.0
_ROOT = Path(__file__).resolve().parent.parent  # the directory that holds the kernels package


class AotUnavailable(Exception):
    """The ahead-of-time kernel could not be built or loaded; the message says why."""


def module_name(model: np.ndarray) -> str:
    """The extension's module name: a hash of the generated source and of the versions it was built with."""
    versions = " ".join(f"{p}={importlib.metadata.version(p)}" for p in ("numba", "llvmlite", "numpy"))
    digest = hashlib.sha256((generate_source(model) + versions).encode()).hexdigest()[:16]
    return f"kdsignal_aot_{digest}"


def _extension_path(name: str) -> Path:
    return cache_dir() / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}"


def aot_step(model: np.ndarray):
    """The ahead-of-time compiled ``student_step_fixed`` for this model's architecture, built if need be.

    Same arguments, results and contract as ``kernels.specialise.specialised_step``'s entry point: pass
    only C-contiguous float64 vectors and floats. Raises ``AotUnavailable`` when it cannot be had.
    """
    name = module_name(model)
    path = _extension_path(name)
    if name not in sys.modules and not path.exists():
        _build_in_child(model, name)
    if name not in sys.modules:
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        try:
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
        except ImportError as e:
            raise AotUnavailable(f"cannot load {path}: {e}") from e
        sys.modules[name] = module
    return sys.modules[name].student_step_fixed


def _build_in_child(model: np.ndarray, name: str) -> None:
    try:
        source_name, source_path = write_source(model)
    except OSError as e:
        raise AotUnavailable(f"cannot write to {cache_dir()}: {e.strerror or e}") from e
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(_ROOT), env.get("PYTHONPATH"))))
    cmd = [sys.executable, "-m", "kernels.aot", name, source_name, str(source_path)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AotUnavailable(f"build did not finish: {e}") from e
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise AotUnavailable(f"build failed (exit {done.returncode}): {tail}")


def build(name: str, source_name: str, source_path: Path) -> Path:
    """Compile the generated module's ``student_step_fixed`` into the extension ``name`` (imports numba)."""
    import warnings

    from numba.core.errors import NumbaPendingDeprecationWarning

    warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)  # numba.pycc's, see the module docstring
    from numba.pycc import CC

    import kernels.jit  # noqa: F401 - the numba cache configuration, for the kernels the step inlines

    step = import_source(source_name, source_path).student_step_fixed
    final = _extension_path(name)
    # Built in a private directory and moved into place whole: concurrent builders (template instances,
    # test processes) never see or load a half-written module.
    work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=final.parent))
    try:
        cc = CC(name)
        cc.output_dir = str(work)
        cc.verbose = False
        cc.export("student_step_fixed", SIGNATURE)(step)
        cc.compile()
        os.replace(work / final.name, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def main(argv: list[str]) -> int:
    name, source_name, source_path = argv
    print(build(name, source_name, Path(source_path)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

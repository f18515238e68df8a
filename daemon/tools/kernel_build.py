"""``kdsignal build-kernel``: compile an artifact's student step ahead of time, once, outside the daemon.

The step is ``kernels.specialise.make_student_step`` for the artifact's architecture (beside it, the live
scorecard's ``kernels.scorecard_step.scorecard_step``, so serving needs no numba for that either), compiled by
``numba.pycc`` into a CPython extension whose only run-time dependency is NumPy, so the serving process
never imports numba or starts LLVM. It is written into the kernel directory (``daemon.core.kernel_store``)
with an identity record beside it; the daemon checks both before importing it. Who runs it: ``.ci/setup``
(for ``models/default.npz``), ``kdsignal train`` after writing an artifact, the systemd units'
``ExecStartPre=``, and the test suite's session fixture. When a verified module is already there it
returns at once without importing numba.

Building needs a C compiler and the Python headers (pycc compiles a small C wrapper and links with the
platform's compiler; ``$CC`` picks it). ``numba.pycc`` is deprecated but is numba's only ahead-of-time
compiler in the pinned version.

Atomicity: the module is compiled in a private directory, then moved into place under a name that
includes its sha256 (never overwriting different bytes), and only then is the record (which names that
file) moved into place: a reader sees the old record, or the new record with its complete module.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from daemon.core import kernel_store
from daemon.core.exitcodes import EXIT_CONFIG

__all__ = ["BuildError", "add_arguments", "build_kernel", "run_cli"]


class BuildError(Exception):
    """The step could not be compiled or written; the message says why."""


def build_kernel(vector, directory: Path, *, force: bool = False) -> tuple[Path, bool]:
    """Compile the step for this model vector into ``directory``: (module path, whether it was built now).

    Skips the build when a module that passes the daemon's checks is already there (unless ``force``).
    """
    directory = Path(directory)
    if not force:
        try:
            return kernel_store.check(vector, directory)[1], False
        except (OSError, ValueError):
            pass
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as e:
        raise BuildError(f"cannot create {directory}: {e.strerror or e}") from None
    why = kernel_store.unsafe(directory, directory=True)
    if why is not None:
        raise BuildError(f"{why}: the daemon would refuse to load from it")
    ident = kernel_store.identity(vector)
    name = kernel_store.module_name(ident)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=directory))
    except OSError as e:
        raise BuildError(f"cannot write to {directory}: {e.strerror or e}") from None
    try:
        built = _compile(vector, name, work)
        digest = kernel_store.file_sha256(built)
        final = directory / f"{name}-{digest[:16]}{kernel_store.EXTENSION_SUFFIX}"
        os.chmod(built, 0o755)
        os.replace(built, final)
        record = {"module": name, "file": final.name, "sha256": digest, "identity": ident,
                  "built_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        tmp_record = work / "record.json"
        tmp_record.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp_record, 0o644)
        os.replace(tmp_record, kernel_store.record_path(directory, name))
        for stale in directory.glob(f"{name}-*{kernel_store.EXTENSION_SUFFIX}"):
            if stale != final:  # an earlier build of this identity, which the record no longer names
                stale.unlink(missing_ok=True)
    except OSError as e:
        raise BuildError(f"cannot write the module into {directory}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final, True


def _compile(vector, name: str, work: Path) -> Path:
    """Compile ``make_student_step(vector)`` with numba.pycc into ``work``; return the extension's path."""
    import warnings

    from numba.core.errors import NumbaPendingDeprecationWarning

    from kernels.scorecard_step import SIGNATURE as SCORECARD_SIGNATURE
    from kernels.scorecard_step import scorecard_step
    from kernels.specialise import SIGNATURE, make_student_step

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)  # numba.pycc's, see the module docstring
        from numba.pycc import CC

        try:
            cc = CC(name)  # looks for the C compiler already
            cc.output_dir = str(work)
            cc.verbose = False
            cc.export("student_step", SIGNATURE)(make_student_step(vector))
            cc.export("scorecard_step", SCORECARD_SIGNATURE)(scorecard_step.py_func)
            cc.compile()
        except Exception as e:  # noqa: BLE001 - distutils, gcc and numba raise many types; all mean "no module"
            first = (str(e).strip().splitlines() or [""])[0]
            raise BuildError(f"compiling {name} failed ({type(e).__name__}: {first}); "
                             "building needs a C compiler ($CC) and the Python headers") from None
    built = work / f"{name}{kernel_store.EXTENSION_SUFFIX}"
    if not built.is_file():
        raise BuildError(f"compiling {name} produced no {built.name}")
    return built


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdsignal build-kernel``."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="FILE",
                     help="daemon configuration: its [model] artifact and kernel_dir (default config.toml)")
    src.add_argument("--artifact", metavar="PATH", help="student artifact (.npz) to build the step for")
    parser.add_argument("--kernel-dir", metavar="DIR", default=None,
                        help="where to write it (default: [model] kernel_dir, else $KDSIGNAL_KERNEL_DIR, else "
                             "$NUMBA_CACHE_DIR/kdsignal, else ~/.cache/kdsignal)")
    parser.add_argument("--force", action="store_true", help="build even when a verified module is already there")


def run_cli(args: argparse.Namespace) -> int:
    """Build the step for the configured or named artifact; exit 78 when that cannot be done."""
    from daemon.core.artifact import ArtifactError, load_artifact
    from daemon.core.config import ConfigError, load_config
    from daemon.core.model import student_vector

    try:
        if args.artifact:
            artifact, configured_dir = args.artifact, None
        else:
            cfg = load_config(args.config or "config.toml")
            artifact, configured_dir = cfg.model.artifact, cfg.model.kernel_dir
            if cfg.model.kernel == "jit":
                print(f'kdsignal build-kernel: nothing to build, {cfg.source} serves [model] kernel = "jit"')
                return 0
        directory = kernel_store.kernel_dir(args.kernel_dir or configured_dir)
        art = load_artifact(artifact)
        path, built = build_kernel(student_vector(art), directory, force=args.force)
    except (ConfigError, ArtifactError, BuildError, OSError, ValueError) as e:
        print(f"kdsignal build-kernel: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"kdsignal build-kernel: {'built' if built else 'up to date:'} {path} (model {art.model_id})")
    return 0


"""Where compiled student steps live, what identifies one, and the checks made before one is imported.

``kdsignal build-kernel`` (``daemon.tools.kernel_build``) compiles the architecture-specialised step
(``kernels.specialise``) ahead of time into a CPython extension; the daemon imports it and so never loads
numba or LLVM. This module is the one place both sides agree on:

- the directory: ``[model] kernel_dir`` when configured, else ``$KDSIGNAL_KERNEL_DIR``, else
  ``$NUMBA_CACHE_DIR/kdsignal``, else ``~/.cache/kdsignal`` (``kernel_dir``);
- the identity of a step: the architecture it freezes, the hash of the kernel sources and the numba,
  llvmlite and NumPy versions that compiled it, and the Python ABI (``identity``); its hash names the
  module (``module_name``);
- the record beside each module (``<module>.json``): that identity plus the module's file name and sha256.

The module also carries the live scorecard's per-bar update (``scorecard_step``, ``kernels.scorecard_step``),
so it is part of the same identity and the same checks. Before importing, ``load_module`` checks that the
directory, the record and the module are owned by this user or root and writable by nobody else, that the
record describes this artifact's identity, and that the module's sha256 is the recorded one. Anything
missing, different or unsafe raises ``KernelUnavailable`` with the command that builds it. The module is
hashed, then imported by path: between the two only this user or root could swap it, and they could as
well have replaced the code itself. Nothing here compiles; nothing here imports numba.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np

from daemon.core.artifact import ArtifactError
from kernels import KERNELS_HASH
from kernels.layout import architecture, router_size

KERNEL_DIR_ENV = "KDSIGNAL_KERNEL_DIR"
EXTENSION_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
_RECORD_LIMIT_BYTES = 64 * 1024  # a record is a few hundred bytes; anything larger is not one of ours


class KernelUnavailable(ArtifactError):
    """The artifact cannot be served: its compiled step is missing, stale or unsafe; the message names the fix."""


def kernel_dir(configured: str | os.PathLike | None = None) -> Path:
    """The directory compiled steps are built into and loaded from (see the module docstring)."""
    if configured:
        return Path(configured)
    if os.environ.get(KERNEL_DIR_ENV):
        return Path(os.environ[KERNEL_DIR_ENV])
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "kdsignal"
    return Path.home() / ".cache" / "kdsignal"


def identity(vector: np.ndarray) -> dict:
    """What a compiled step for this model vector must have been built from (JSON-ready)."""
    f, sizes, acts, head = architecture(vector)
    arch = {"features": f, "sizes": list(sizes), "activations": list(acts), "head": head}
    if router_size(vector):  # a router's step is another program over the same student architecture
        arch["router"] = router_size(vector)
    return {
        "architecture": arch,
        "kernels_hash": KERNELS_HASH,
        **{p: importlib.metadata.version(p) for p in ("numba", "llvmlite", "numpy")},
        "extension_suffix": EXTENSION_SUFFIX,
    }


def module_name(ident: dict) -> str:
    """The extension's module name: a hash of its identity, so any change builds (and loads) a new one."""
    return "kdsignal_step_" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def record_path(directory: Path, name: str) -> Path:
    """Where the identity record of module ``name`` lives."""
    return directory / f"{name}.json"


def build_command(artifact: str | os.PathLike | None, directory: Path) -> str:
    """The command line that builds the step an artifact needs into ``directory``."""
    where = "" if directory == kernel_dir() else f" --kernel-dir {directory}"
    return f"kdsignal build-kernel --artifact {artifact or 'ARTIFACT'}{where}"


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unsafe(path: Path, *, directory: bool = False) -> str | None:
    """Why ``path`` must not be trusted (wrong owner, writable by others, wrong kind), or None when it may."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        return f"{path} is not a {'directory' if directory else 'regular file'}"
    if st.st_uid not in (os.getuid(), 0):
        return f"{path} is owned by uid {st.st_uid}, not by this user ({os.getuid()}) or root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def read_record(directory: Path, name: str) -> dict:
    """The identity record of module ``name``; raises ``ValueError`` naming what is wrong with it."""
    path = record_path(directory, name)
    with open(path, "rb") as f:
        raw = f.read(_RECORD_LIMIT_BYTES + 1)
    if len(raw) > _RECORD_LIMIT_BYTES:
        raise ValueError(f"{path} is larger than {_RECORD_LIMIT_BYTES} bytes")
    try:
        record = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("file", "sha256")):
        raise ValueError(f"{path} lacks the module's file name or sha256")
    if Path(record["file"]).name != record["file"]:
        raise ValueError(f"{path} names a module outside its directory: {record['file']!r}")
    return record


def check(vector: np.ndarray, directory: Path) -> tuple[str, Path]:
    """(module name, verified module path) of this vector's step in ``directory``; ``ValueError`` says why not."""
    ident = identity(vector)
    name = module_name(ident)
    why = unsafe(directory, directory=True)
    if why is not None:
        raise ValueError(why)
    record_file = record_path(directory, name)
    if not record_file.exists():
        arch = ident["architecture"]
        raise ValueError(f"no compiled step for sizes {arch['sizes']} in {directory} (expected {record_file.name})")
    why = unsafe(record_file)
    if why is not None:
        raise ValueError(why)
    record = read_record(directory, name)
    if record.get("identity") != ident:
        raise ValueError(f"{record_file} was built for another identity: {record.get('identity')} (need {ident})")
    module = directory / record["file"]
    why = unsafe(module)
    if why is not None:
        raise ValueError(why)
    digest = file_sha256(module)
    if digest != record["sha256"]:
        raise ValueError(f"{module} has sha256 {digest[:16]}..., its record says {record['sha256'][:16]}...")
    return name, module


def load_module(vector: np.ndarray, directory: Path, artifact: str | os.PathLike | None = None):
    """The verified, imported compiled module for this model vector; raises ``KernelUnavailable`` naming the command.

    It exports ``student_step`` and ``scorecard_step`` (``kernels.scorecard_step``), with the same arguments,
    results and contracts as their JIT forms: pass only C-contiguous float64 vectors and floats.
    """
    try:
        name, path = check(vector, directory)
    except (OSError, ValueError) as e:
        raise KernelUnavailable(f"no usable compiled student step: {e}; build it with "
                                f"`{build_command(artifact, directory)}` (or set [model] kernel = \"jit\")") from None
    if name not in sys.modules:
        # The identity was checked above; a module of this name already imported has the same identity.
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        try:
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
        except ImportError as e:
            raise KernelUnavailable(f"cannot import {path}: {e}; rebuild it with "
                                    f"`{build_command(artifact, directory)}`") from None
        sys.modules[name] = module
    return sys.modules[name]


def load_step(vector: np.ndarray, directory: Path, artifact: str | os.PathLike | None = None):
    """The verified, imported ``student_step`` for this model vector; raises ``KernelUnavailable`` naming the command.

    Same arguments, results and contract as ``kernels.specialise.specialised_step``'s entry point: pass only
    C-contiguous float64 vectors and floats.
    """
    return load_module(vector, directory, artifact).student_step

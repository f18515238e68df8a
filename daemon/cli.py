"""The ``kdsignal`` command line: a thin dispatcher over subcommand modules.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run_cli(args) -> int``.
Modules are imported only when their command runs, so ``kdsignal run`` never imports the training code
(lightgbm, matplotlib) and start-up stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("daemon.aio.service", "run the live signal daemon against a Bybit v5 feed"),
    "build-kernel": ("daemon.tools.kernel_build", "compile an artifact's student step ahead of time for the daemon"),
    "replay": ("daemon.tools.replay", "drive the live pipeline from a recorded kline CSV"),
    "fake-bybit": ("daemon.tools.fake_bybit", "serve a loopback Bybit v5 WebSocket + REST stand-in from CSV files"),
    "tail": ("daemon.ops.tail", "follow a signal log and print it as a readable table"),
    "bench": ("daemon.bench", "measure per-bar latency and throughput"),
    "fetch": ("daemon.training.fetch", "download closed klines from Bybit's REST API into a CSV"),
    "train": ("daemon.training.train", "train teacher and student, evaluate, write the artifact and report"),
    "retrain": ("daemon.training.retrain", "fetch new bars, re-distil on a rolling window, promote through the gate"),
    "models": ("daemon.tools.store:models", "list the model store: gate scores and which model is live"),
    "rollback": ("daemon.tools.store", "make an earlier model of the store current and tell the daemon"),
    "promote": ("daemon.tools.store:promote", "add an artifact to the model store and make it current (no gate)"),
}


def version() -> str:
    """The installed distribution's version (pyproject.toml), or the package's own when not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("kdsignal")
    except PackageNotFoundError:
        from daemon import __version__

        return __version__


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdsignal",
        description="Knowledge-distilled trading signals from Bybit v5 klines (python -m daemon works too)."
    )
    parser.add_argument("--version", action="version", version=f"kdsignal {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the module of the chosen command is imported; the others appear in --help by name alone.
    chosen = next((a for a in (argv or []) if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            # "module:suffix" names add_arguments_<suffix> / run_cli_<suffix> (several commands, one module)
            module_name, _, suffix = module_name.partition(":")
            module = importlib.import_module(module_name)
            tail = f"_{suffix}" if suffix else ""
            getattr(module, f"add_arguments{tail}")(p)
            p.set_defaults(_run=getattr(module, f"run_cli{tail}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # before the service's heavy imports: an early SIGHUP must not end the process
        from daemon.ops import early_signals

        early_signals.install()
    args = build_parser(argv).parse_args(argv)
    return int(args._run(args) or 0)

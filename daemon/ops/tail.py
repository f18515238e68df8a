"""``kdsignal tail [FILE]``: follow the JSON signal log and print it as a readable table, for people without jq.

It follows like ``tail -F``: by name, across logrotate's rename (the old file is drained until the daemon,
told by SIGHUP, starts writing the new one, so no line is missed or shown twice) and across truncation
(copytruncate). Only complete lines are shown. Signal events (from the log file or the stdout stream: any
JSON object with ``symbol``, ``start``, ``signal`` and ``probs``, or an alpha model's ``position`` and
``alpha_bp`` in place of ``probs``) become table rows (an alpha row shows ``alpha_bp`` and ``sd_bp`` across the
probability columns); with ``--events`` the
other log events (reconnects, gaps, latency summaries) are shown too, dimmed. Colour is used on a terminal
(unless ``NO_COLOR`` is set) or when asked for with ``--color``.

Without FILE the log named by ``[log].file`` in the configuration is used: ``--config`` if given, else
``./config.toml``, else ``/etc/kdsignal/kdsignal.toml``. FILE ``-`` reads standard input until it ends, a
row as each line arrives, so ``kdsignal replay ... | kdsignal tail -`` and ``kdsignal run ... | kdsignal
tail -`` work (with ``-n N``, only the last N rows, printed at the end of the input).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

__all__ = ["LogFollower", "add_arguments", "format_event", "format_signal", "header", "parse_line", "run_cli"]

DEFAULT_CONFIGS = ("config.toml", "/etc/kdsignal/kdsignal.toml")

_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
_DIM = "\x1b[2m"
_SIGNAL_COLOUR = {"buy": "\x1b[1;32m", "sell": "\x1b[1;31m", "hold": "\x1b[33m"}
_LEVEL_COLOUR = {"warning": "\x1b[33m", "error": "\x1b[31m", "critical": "\x1b[1;31m"}

# (title, width); probabilities are printed in class order sell, hold, buy like everywhere else.
_COLUMNS = (("BAR (UTC)", 16), ("SYMBOL", 12), ("SIGNAL", 6), ("P(SELL)", 7), ("P(HOLD)", 7), ("P(BUY)", 7),
            ("LATENCY", 10))


def parse_line(line: str) -> dict | None:
    """Decode one log line into a dict; None for blank, partial or non-object lines."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def is_signal(record: dict) -> bool:
    """True for a signal event (log file ``signal_emitted`` or a stdout signal line)."""
    if not all(k in record for k in ("symbol", "start", "signal")):
        return False
    return isinstance(record.get("probs"), dict) or ("position" in record and "alpha_bp" in record)


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color and code else text


def header(color: bool = False) -> str:
    """The table header line."""
    text = "  ".join(f"{title:<{width}}" for title, width in _COLUMNS).rstrip()
    return _paint(text, _BOLD, color)


def _bar_time(start_ms: object) -> str:
    try:
        return datetime.fromtimestamp(int(start_ms) / 1e3, UTC).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(start_ms)


def _prob(probs: dict, cls: str) -> str:
    p = probs.get(cls)
    return f"{p:.3f}" if isinstance(p, (int, float)) and not isinstance(p, bool) else "-"


def _bp(v: object) -> str:
    return f"{v:+.2f}bp" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _alpha_cells(record: dict) -> str:
    """An alpha line's read-out, spanning the three probability columns: ``alpha +12.34bp sd 5.67bp``."""
    text = f"alpha {_bp(record.get('alpha_bp'))}"
    if "sd_bp" in record:
        text += f" sd {_bp(record['sd_bp']).lstrip('+')}"
    return text


def format_signal(record: dict, color: bool = False) -> str:
    """One table row for a signal record: bar time (UTC), symbol, signal, probabilities, latency (an alpha
    model's line: its ``alpha_bp`` [and ``sd_bp``] in place of the probabilities)."""
    signal = str(record["signal"])
    us = record.get("inference_us")
    latency = f"{us:.2f} us" if isinstance(us, (int, float)) and not isinstance(us, bool) else "-"
    if not isinstance(record.get("probs"), dict):
        widths = [w for _, w in _COLUMNS]
        span = sum(widths[3:6]) + 2 * 2  # the three probability columns and the two gaps between them
        padded = [f"{c:<{w}}" for c, w in zip((_bar_time(record["start"]), str(record["symbol"]), signal,
                                               _alpha_cells(record), latency),
                                              (*widths[:3], span, widths[6]), strict=True)]
        padded[2] = _paint(padded[2], _SIGNAL_COLOUR.get(signal, ""), color)
        row = "  ".join(padded).rstrip()
        if record.get("backfill") is True:
            row += "  " + _paint("backfill", _DIM, color)
        return row
    probs = record["probs"]
    cells = [_bar_time(record["start"]), str(record["symbol"]), signal,
             _prob(probs, "sell"), _prob(probs, "hold"), _prob(probs, "buy"), latency]
    widths = [w for _, w in _COLUMNS]
    padded = [f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)]
    padded[2] = _paint(padded[2], _SIGNAL_COLOUR.get(signal, ""), color)
    # Highlight the winning probability so the eye finds it without reading numbers.
    numeric = {cls: probs.get(cls) for cls in ("sell", "hold", "buy")}
    numeric = {k: v for k, v in numeric.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        best = max(numeric, key=numeric.__getitem__)
        i = 3 + ("sell", "hold", "buy").index(best)
        padded[i] = _paint(padded[i], _BOLD, color)
    row = "  ".join(padded).rstrip()
    if record.get("backfill") is True:
        row += "  " + _paint("backfill", _DIM, color)
    return row


def format_event(record: dict, color: bool = False) -> str:
    """A one-line summary of a non-signal log event: time, level, event name, then key=value pairs."""
    skip = {"timestamp", "level", "event"}
    ts = str(record.get("timestamp", ""))[:19].replace("T", " ")
    level = str(record.get("level", ""))
    rest = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in record.items() if k not in skip)
    text = f"{ts:<16}  {level:<7} {record.get('event', '?')} {rest}".rstrip()
    return _paint(text, _LEVEL_COLOUR.get(level, _DIM), color)


class LogFollower:
    """Read complete new lines from a file by name, surviving rename-and-recreate and truncation.

    :meth:`poll` never blocks: it returns the complete lines that appeared since the last call. After a
    rename the old file stays open and is drained until the new file receives data (the writer reopened
    it on SIGHUP), so lines written between the rotation and the reopen are not lost.
    """

    def __init__(self, path: str | os.PathLike, offset: int = 0) -> None:
        self.path = os.fspath(path)
        self._offset = offset  # where to start in the first file we open
        self._cur: _Open | None = None
        self._old: _Open | None = None  # the renamed file, drained until the writer moves on

    def poll(self) -> list[str]:
        """Return the complete lines (without newline) written since the last call."""
        lines: list[str] = []
        if self._cur is None:
            self._cur = _Open.at(self.path, self._offset)
            if self._cur is not None:
                self._offset = 0
        try:
            st = os.stat(self.path)
            ident = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            ident = None
        if self._cur is not None and ident is not None and ident != self._cur.ident:
            # Renamed away and replaced: keep draining the old handle, read the new file from its start.
            if self._old is not None:
                lines += self._old.read_lines()
                self._old.close()
            self._old, self._cur = self._cur, _Open.at(self.path, 0)
        if self._old is not None:
            lines += self._old.read_lines()
            if self._cur is not None and self._cur.size() > 0:
                # The writer is on the new file now; whatever reached the old one is in ``lines`` already.
                lines += self._old.read_lines(final=True)
                self._old.close()
                self._old = None
        if self._cur is not None:
            lines += self._cur.read_lines()
        return lines

    def close(self) -> None:
        """Close the open files."""
        for f in (self._old, self._cur):
            if f is not None:
                f.close()
        self._old = self._cur = None


class _Open:
    """One open file: position, identity and a buffer for a line not finished yet."""

    def __init__(self, f, ident: tuple[int, int]) -> None:
        self.f = f
        self.ident = ident
        self.buf = b""

    @classmethod
    def at(cls, path: str, offset: int) -> _Open | None:
        try:
            f = open(path, "rb")  # noqa: SIM115 - kept open across polls
        except FileNotFoundError:
            return None
        st = os.fstat(f.fileno())
        f.seek(min(offset, st.st_size))
        return cls(f, (st.st_dev, st.st_ino))

    def size(self) -> int:
        return os.fstat(self.f.fileno()).st_size

    def read_lines(self, final: bool = False) -> list[str]:
        if self.size() < self.f.tell():
            # Truncated in place (copytruncate): start over; a half line from before is gone with the data.
            self.f.seek(0)
            self.buf = b""
        data = self.buf + self.f.read()
        *complete, self.buf = data.split(b"\n")
        if final and self.buf:
            complete.append(self.buf)  # an unterminated last line of a file nobody writes any more
            self.buf = b""
        return [line.decode("utf-8", "replace") for line in complete]

    def close(self) -> None:
        self.f.close()


def start_offset(path: str | os.PathLike, n: int | None, keep: Callable[[str], bool], block: int = 65536) -> int:
    """Byte offset where the last ``n`` complete lines passing ``keep`` begin (0 for all, or when fewer exist).

    Reads backwards in growing blocks, so showing the last rows of a large log does not read all of it.
    """
    if n is None:
        return 0
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return 0
    with f:
        end = pos = os.fstat(f.fileno()).st_size
        if n <= 0:
            return end
        while pos > 0:
            pos = max(0, pos - block)
            block *= 2
            f.seek(pos)
            pieces = f.read(end - pos).split(b"\n")
            # pieces[0] may be the tail of a line that began before pos; pieces[-1] is an unfinished line.
            offset = end - len(pieces[-1])
            kept = 0
            for line in reversed(pieces[(0 if pos == 0 else 1):-1]):
                offset -= len(line) + 1
                if keep(line.decode("utf-8", "replace")):
                    kept += 1
                    if kept == n:
                        return offset
        return 0


def default_log_file(config: str | None) -> str:
    """The ``[log].file`` of the given or default configuration; raises SystemExit with a reason if none."""
    from daemon.core.config import ConfigError, load_config  # only when no FILE was given

    candidates = [config] if config else [c for c in DEFAULT_CONFIGS if Path(c).is_file()]
    if not candidates:
        raise SystemExit(f"kdsignal tail: no FILE given and no configuration found ({', '.join(DEFAULT_CONFIGS)})")
    try:
        cfg = load_config(candidates[0])
    except ConfigError as exc:
        raise SystemExit(f"kdsignal tail: {exc}") from None
    if not cfg.log.file:
        raise SystemExit(f"kdsignal tail: {candidates[0]} sets no [log].file (logs go to stderr); give FILE")
    return cfg.log.file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdsignal tail``."""
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="signal log, or - for standard input (default: [log].file of the config)")
    parser.add_argument("--config", help="configuration whose [log].file to follow "
                        f"(default: the first of {', '.join(DEFAULT_CONFIGS)} that exists)")
    parser.add_argument("-n", "--lines", type=int, default=None,
                        help="show the last N rows first (default: 10 when following, all with --no-follow)")
    parser.add_argument("--no-follow", action="store_true", help="print what is there and exit")
    parser.add_argument("--events", action="store_true", help="also show non-signal log events")
    parser.add_argument("--color", nargs="?", const="always", default="auto", choices=("auto", "always", "never"),
                        help="colour the output: on a terminal (auto, default), always, or never")
    parser.add_argument("--no-color", dest="color", action="store_const", const="never", help="same as --color never")
    parser.add_argument("--poll-s", type=float, default=0.2, help=argparse.SUPPRESS)


def _use_color(mode: str, stream: TextIO) -> bool:
    if mode == "always":
        return True
    if mode == "never":
        return False
    return stream.isatty() and not os.environ.get("NO_COLOR")


def _render(line: str, color: bool, events: bool) -> str | None:
    record = parse_line(line)
    if record is None:
        return line if events and line.strip() else None
    if is_signal(record):
        return format_signal(record, color)
    return format_event(record, color) if events else None


def _from_stream(lines: Iterable[str], out: TextIO, color: bool, events: bool, n: int | None) -> None:
    out.write(header(color) + "\n")
    out.flush()
    last: deque[str] | None = deque(maxlen=n) if n is not None and n >= 0 else None
    for line in lines:
        row = _render(line.rstrip("\r\n"), color, events)
        if row is None:
            continue
        if last is not None:
            last.append(row)
        else:
            out.write(row + "\n")
            out.flush()  # a row per line as it arrives, even through a pipe
    if last:
        out.write("\n".join(last) + "\n")


def _closed_pipe() -> int:
    # The reader went away (| head); point stdout at /dev/null so the exit flush does not complain.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """Print the table; follow the file unless ``--no-follow``. Returns 0 (Ctrl-C and closed pipes included)."""
    out = sys.stdout
    color = _use_color(args.color, out)
    if args.file == "-":
        stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
        try:
            _from_stream(stdin, out, color, args.events, args.lines)
            out.flush()
        except KeyboardInterrupt:
            return 0
        except BrokenPipeError:
            return _closed_pipe()
        return 0
    path = args.file or default_log_file(args.config)
    follow = not args.no_follow
    if not follow and not Path(path).exists():
        print(f"kdsignal tail: {path} does not exist", file=sys.stderr)
        return 1
    n = args.lines if args.lines is not None else (10 if follow else None)

    def keep(line: str) -> bool:
        return _render(line, False, args.events) is not None

    follower = LogFollower(path, start_offset(path, n, keep))
    try:
        out.write(header(color) + "\n")
        first = True
        while True:
            rows = [r for r in (_render(line, color, args.events) for line in follower.poll()) if r is not None]
            if first and n is not None:
                rows = list(deque(rows, maxlen=n)) if n > 0 else []
            first = False
            if rows:
                out.write("\n".join(rows) + "\n")
            out.flush()
            if not follow:
                return 0
            time.sleep(args.poll_s)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return _closed_pipe()
    finally:
        follower.close()

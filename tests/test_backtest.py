"""``kdsignal backtest`` (daemon/tools/backtest.py): a hand-made signal file against a tiny CSV equals a hand
computation, ``--replay`` equals replay then backtest, and malformed inputs are refused naming the line."""

from __future__ import annotations

import json
import math
import sys

import pytest

from daemon.cli import main
from tests.support import DATA

BAR_MS = 300_000
L = math.log(1.1)
OPENS = [100, 100, 110, 121, 121, 110]  # r[t] = log(open[t+2] / open[t+1]): L, L, 0, -L, 0, 0


def write_csv(path, opens=OPENS, first_ms=0):
    """A kline CSV with these opens (high/low/close around them), one bar every 5 minutes."""
    rows = ["start_ms,open,high,low,close,volume"]
    rows += [f"{first_ms + i * BAR_MS},{o},{o + 1},{o - 1},{o},1" for i, o in enumerate(opens)]
    path.write_text("\n".join(rows) + "\n")
    return path


def line(start, signal, buy, sell, symbol="BTCUSDT"):
    """One signal line as the daemon writes it."""
    return json.dumps({"symbol": symbol, "interval": "5", "start": start, "signal": signal,
                       "probs": {"sell": sell, "hold": round(1 - buy - sell, 10), "buy": buy},
                       "inference_us": 1.0, "model": "0123456789abcdef", "backfill": False})


# as signalled: buy buy hold sell hold hold; edges 0.5, 0.5, 0, -0.6, 0, 0
HAND = [line(0, "buy", 0.6, 0.1), line(BAR_MS, "buy", 0.6, 0.1), line(2 * BAR_MS, "hold", 0.3, 0.3),
        line(3 * BAR_MS, "sell", 0.1, 0.7), line(4 * BAR_MS, "hold", 0.2, 0.2), line(5 * BAR_MS, "hold", 0.2, 0.2)]


def run_json(capsys, *args) -> dict:
    """Run ``kdsignal backtest ... --json``; its parsed output (the exit code must be 0)."""
    assert main(["backtest", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def rows_by_name(out: dict) -> dict:
    return {r["name"]: r for r in out["rows"]}


def test_hand_computed_read_out(tmp_path, capsys):
    """Net and gross return, trades, hit rate and break-even of a six-bar file equal the hand computation."""
    csv = write_csv(tmp_path / "BTCUSDT-5m.csv")
    sig = tmp_path / "s.jsonl"
    sig.write_text("\n".join(HAND) + "\n")
    out = run_json(capsys, "--signals", str(sig), "--data", str(csv), "--fee", "10", "--spread-bp", "0",
                   "--thresholds", "0,0.55")
    rows = rows_by_name(out)
    fee = 10e-4
    # positions 1 1 0 -1 0 0: gross L + L + (-1)(-L) = 3L; units traded 1 + 1 + 1 + 1 = 4
    signalled = rows["as signalled"]
    assert signalled["gross_return"] == pytest.approx(3 * L)
    assert signalled["net_return"] == pytest.approx(3 * L - 4 * fee)
    assert (signalled["trades"], signalled["hit_rate"]) == (2, 1.0)
    assert signalled["break_even_fee_bp"] == pytest.approx(3 * L / 4 / 1e-4)
    assert signalled["in_market"] == pytest.approx(3 / 6)
    # edge > 0 strictly: the same positions; edge beyond 0.55 only on the sell bar: gross L, two units
    assert rows["threshold 0"]["net_return"] == pytest.approx(3 * L - 4 * fee)
    assert rows["threshold 0.55"]["net_return"] == pytest.approx(L - 2 * fee)
    assert rows["threshold 0.55"]["trades"] == 1
    # long all the way: L + L + 0 - L, bought once and sold at the end
    assert rows["buy and hold"]["net_return"] == pytest.approx(L - 2 * fee)
    assert rows["always flat"]["net_return"] == 0.0 and rows["always flat"]["hit_rate"] is None
    assert out["bars"] == {"BTCUSDT": 6} and out["bars_without_line"] == 0


def test_holding_and_spread(tmp_path, capsys):
    """--hold 2 keeps the first buy through the hold bar; a 5 bp half-spread is paid per unit like the fee."""
    csv = write_csv(tmp_path / "BTCUSDT-5m.csv")
    sig = tmp_path / "s.jsonl"
    sig.write_text("\n".join(HAND) + "\n")
    out = run_json(capsys, "--signals", str(sig), "--data", str(csv), "--fee", "maker", "--spread-bp", "5",
                   "--hold", "2", "--thresholds", "1")
    s = rows_by_name(out)["as signalled"]
    # hold 2: buy at 0 locks bars 0-1, bar 2 re-decides hold (flat), bar 3 sell locks 3-4, bar 5 flat
    assert s["gross_return"] == pytest.approx(3 * L)
    assert s["net_return"] == pytest.approx(3 * L - 4 * (2e-4 + 5e-4))


def test_lines_missing_are_flat_and_said(tmp_path, capsys):
    """A file written with emit = actionable (hold lines absent) gives the same positions, and says how many bars
    had no line."""
    csv = write_csv(tmp_path / "BTCUSDT-5m.csv")
    sig = tmp_path / "s.jsonl"
    sig.write_text("\n".join(x for x in HAND if '"hold", "probs"' not in x) + "\n")
    out = run_json(capsys, "--signals", str(sig), "--data", str(csv), "--fee", "10", "--spread-bp", "0")
    assert rows_by_name(out)["as signalled"]["net_return"] == pytest.approx(3 * L - 4 * 10e-4)
    assert out["bars"] == {"BTCUSDT": 4} and out["bars_without_line"] == 1  # bars 0..3 covered, bar 2 missing


def test_replay_flag_equals_replay_then_backtest(tmp_path, capsys):
    """--replay gives the read-out of `kdsignal replay > FILE` followed by --signals FILE, policy flags included."""
    csv = DATA / "BTCUSDT-5m.csv"
    policy = ["--policy", "threshold", "--threshold", "0.05"]
    assert main(["replay", "--data", str(csv), "--symbol", "BTCUSDT", *policy]) == 0
    sig = tmp_path / "s.jsonl"
    sig.write_text(capsys.readouterr().out)
    via_file = run_json(capsys, "--signals", str(sig), "--data", str(csv), "--thresholds", "0.05,1")
    via_replay = run_json(capsys, "--replay", "--data", str(csv), "--thresholds", "0.05,1", *policy)
    assert via_file == via_replay
    rows = rows_by_name(via_replay)
    # the file's own decisions are the 0.05 threshold's: the as-signalled row is that sweep row
    assert {k: v for k, v in rows["as signalled"].items() if k != "name"} == \
           {k: v for k, v in rows["threshold 0.05"].items() if k not in ("name", "threshold")}
    assert rows["as signalled"]["trades"] > 0 and rows["threshold 1"]["trades"] == 0


@pytest.mark.parametrize(("lines", "message"), [
    ([HAND[0], "{not json", HAND[2]], r"s\.jsonl:2: not a JSON signal line"),
    ([HAND[0], HAND[1], '{"event": "signal_emitted", "symbol": "BTCUSDT"}'], r"s\.jsonl:3: not a signal line"),
    ([HAND[0], HAND[0]], r"s\.jsonl:2: a second line for BTCUSDT 0"),
    ([HAND[0], HAND[1].replace('"buy": 0.6', '"buy": NaN')], r"s\.jsonl:2: probs\.buy is nan"),
    ([HAND[0], HAND[1].replace('"signal": "buy"', '"signal": "long"')], r"s\.jsonl:2: signal is 'long'"),
    ([HAND[0], HAND[1].replace(f'"start": {BAR_MS}', f'"start": {BAR_MS + 1}')],
     r"s\.jsonl:2: start 300001 is not a bar"),
    ([HAND[0], "x" * 70_000], r"s\.jsonl:2: line longer than 65536 bytes"),
    ([], r"holds no signal lines"),
])
def test_malformed_signal_file_names_the_line(tmp_path, capsys, lines, message):
    """Each malformed signal file is refused with exit 2 and a message naming the file and line."""
    csv = write_csv(tmp_path / "BTCUSDT-5m.csv")
    sig = tmp_path / "s.jsonl"
    sig.write_text("\n".join(lines) + ("\n" if lines else ""))
    assert main(["backtest", "--signals", str(sig), "--data", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdsignal backtest: ") and err.count("\n") == 1
    assert __import__("re").search(message, err), err


def test_no_overlap_is_said(tmp_path, capsys):
    """A signal file whose bars are all outside the candles says which spans each covers."""
    csv = write_csv(tmp_path / "BTCUSDT-5m.csv", first_ms=100 * BAR_MS)
    sig = tmp_path / "s.jsonl"
    sig.write_text("\n".join(HAND) + "\n")
    assert main(["backtest", "--signals", str(sig), "--data", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "no signal line" in err and "starts 0..1500000" in err and f"BTCUSDT {100 * BAR_MS}.." in err


def test_other_symbol_and_bad_csv(tmp_path, capsys):
    """Lines of a symbol without data are only counted; a CSV row out of order is refused naming its line."""
    csv = write_csv(tmp_path / "BTCUSDT-5m.csv")
    sig = tmp_path / "s.jsonl"
    sig.write_text("\n".join([*HAND, line(0, "buy", 0.6, 0.1, symbol="ETHUSDT")]) + "\n")
    assert main(["backtest", "--signals", str(sig), "--data", str(csv)]) == 0
    assert "for symbols without --data: ETHUSDT 1" in capsys.readouterr().out
    bad = tmp_path / "ETHUSDT-5m.csv"
    bad.write_text("start_ms,open,high,low,close,volume\n300000,1,1,1,1,1\n0,1,1,1,1,1\n600000,1,1,1,1,1\n")
    assert main(["backtest", "--signals", str(sig), "--data", str(bad)]) == 2
    assert "ETHUSDT-5m.csv:3: start_ms 0 does not follow 300000" in capsys.readouterr().err


def test_plot_writes_a_png_or_says_matplotlib_is_missing(tmp_path, capsys, monkeypatch):
    """--plot writes a PNG; without matplotlib it is a one-line error naming the extra, before any work."""
    csv = write_csv(tmp_path / "BTCUSDT-5m.csv")
    sig = tmp_path / "s.jsonl"
    sig.write_text("\n".join(HAND) + "\n")
    png = tmp_path / "eq.png"
    pytest.importorskip("matplotlib")
    assert main(["backtest", "--signals", str(sig), "--data", str(csv), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    assert main(["backtest", "--signals", str(sig), "--data", str(csv), "--plot", str(tmp_path / "x.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def alpha_line(start, signal, alpha_bp, symbol="BTCUSDT", sd_bp=None):
    """One alpha model's signal line as the daemon writes it: position and alpha_bp [sd_bp] in place of probs."""
    d = {"symbol": symbol, "interval": "5", "start": start, "signal": signal,
         "position": {"buy": 1, "hold": 0, "sell": -1}[signal], "alpha_bp": alpha_bp}
    if sd_bp is not None:
        d["sd_bp"] = sd_bp
    return json.dumps(d | {"inference_us": 1.0, "model": "0123456789abcdef", "backfill": False})


def test_alpha_file_is_backtested_as_signalled_without_a_sweep(tmp_path, capsys):
    """An alpha model's lines trade their signal/position (the same read-out as probability lines with the same
    decisions); the threshold sweep is left out with one line saying so."""
    csv = write_csv(tmp_path / "BTCUSDT-5m.csv")
    probs, alpha = tmp_path / "p.jsonl", tmp_path / "a.jsonl"
    probs.write_text("\n".join(HAND) + "\n")
    alpha.write_text("\n".join(alpha_line(json.loads(h)["start"], json.loads(h)["signal"], 1.5, sd_bp=3.0)
                               for h in HAND) + "\n")
    want = rows_by_name(run_json(capsys, "--signals", str(probs), "--data", str(csv)))
    got = rows_by_name(run_json(capsys, "--signals", str(alpha), "--data", str(csv)))
    assert set(got) == {"as signalled", "buy and hold", "always flat"}
    assert {k: want[k] for k in got} == got
    assert main(["backtest", "--signals", str(alpha), "--data", str(csv)]) == 0
    out = capsys.readouterr().out
    assert out.count("threshold sweep left out: an alpha model's lines") == 1 and "threshold 0" not in out


@pytest.mark.parametrize(("lines", "message"), [
    ([alpha_line(0, "buy", 1.0).replace('"position": 1', '"position": -1')], r"a\.jsonl:1: position is -1"),
    ([alpha_line(0, "buy", 1.0).replace('"alpha_bp": 1.0', '"alpha_bp": "x"')], r"a\.jsonl:1: alpha_bp is 'x'"),
    ([alpha_line(0, "buy", 1.0), HAND[1]], r"a\.jsonl:2: an alpha model's line among probability lines"),
    ([json.dumps({"symbol": "BTCUSDT", "start": 0, "signal": "buy"})], r"a\.jsonl:1: probs is None"),
])
def test_malformed_alpha_lines(tmp_path, capsys, lines, message):
    csv = write_csv(tmp_path / "BTCUSDT-5m.csv")
    sig = tmp_path / "a.jsonl"
    sig.write_text("\n".join(lines) + "\n")
    assert main(["backtest", "--signals", str(sig), "--data", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and __import__("re").search(message, err), err


def test_replay_errors_name_the_users_files(tmp_path, capsys):
    """A --replay whose signal lines are refused names the artifact and the data, not a deleted temp file."""
    csv = write_csv(tmp_path / "BTCUSDT-5m.csv")  # 6 bars: all warm-up, the replay writes no line
    assert main(["backtest", "--replay", "--data", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "kdsignal-backtest-" not in err and "the replay of " in err and str(csv) in err, err


@pytest.mark.parametrize("plot", ["{tmp}", "{tmp}/", "{tmp}/eq", "{tmp}/eq.jpg", "{tmp}/missing/eq.png"])
def test_plot_path_is_checked_before_any_work(tmp_path, capsys, plot):
    """--plot must name a FILE.png in an existing folder: otherwise a one-line error, exit 2, nothing read."""
    plot = plot.format(tmp=tmp_path)
    missing = tmp_path / "no-such-signals.jsonl"  # would be an error too, if it were reached
    assert main(["backtest", "--signals", str(missing), "--data", str(tmp_path / "x.csv"), "--plot", plot]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdsignal backtest: --plot ") and err.count("\n") == 1, err
    assert not list(tmp_path.parent.glob(tmp_path.name + ".png"))

"""The methods table: the row schema, rows collected from sibling reports, the rendered table."""

from __future__ import annotations

import json

import pytest

from daemon.training import methods as M

ROW_KEYS = {"schema", "method", "target", "control", "loss_name", "loss", "control_loss", "teacher_loss", "mse", "ic",
            "direction_auc", "delta", "gap_recovered", "verdict", "trading", "n", "seeds", "degenerate", "note"}


def _row(name: str, delta_ci=(0.001, 0.003), be_bp=3.0) -> dict:
    stats = {"net_return": 0.01, "sharpe": 1.5, "trades": 7, "break_even_fee_bp": be_bp, "per_symbol": {}}
    return M.method_row(name, target="t", control="c", loss_name="log_loss", loss=1.0, control_loss=1.002,
                        teacher_loss=0.99, ic=0.02, direction_auc=0.52,
                        delta={"mean": 0.002, "ci95": list(delta_ci), "blocks": 46},
                        gap_recovered={"mean": 0.2, "ci95": [0.1, float("nan")], "blocks": 46},
                        trading={"taker": stats, "maker": {**stats, "break_even_fee_bp": float("nan")}},
                        n=100, seeds=3, degenerate={"student": 0, "control": 2})


def test_method_row_has_every_key_and_plain_values():
    """A row carries every schema key, doubles the per-side break-even, turns non-finite figures into None."""
    r = _row("classes")
    assert set(r) == ROW_KEYS and M.is_row(r)
    assert r["trading"]["taker"] == {"net_return": 0.01, "sharpe": 1.5, "trades": 7, "break_even_round_trip_bp": 6.0}
    assert r["trading"]["maker"]["break_even_round_trip_bp"] is None
    assert r["gap_recovered"]["ci95"] == [0.1, None] and r["mse"] is None
    assert r["verdict"] == "helps" and _row("x", (-0.001, 0.002))["verdict"] == "no detectable difference"
    json.dumps(r, allow_nan=False)  # strict JSON: no NaN slipped through


def _write(path, doc):
    path.write_text(json.dumps(doc))


def test_table_is_rebuilt_from_sibling_reports(tmp_path):
    """Rows from every *report.json, in table order; a bad file and a duplicate row are skipped with a note."""
    _write(tmp_path / "strategy_report.json", {"methods": {"strategy": {"lockbox": {"oracle_distilled": {}}},
                                                           "strategy_trend": {"lockbox": _row("strategy_trend")},
                                                           "strategy_oracle": {"lockbox": _row("strategy_oracle")}}})
    _write(tmp_path / "alpha_report.json", {"methods": {"alpha_huber": {"lockbox": _row("alpha_huber")}}})
    _write(tmp_path / "zz_report.json", {"methods": {"alpha_huber": {"lockbox": _row("alpha_huber")},
                                                     "regime": {"lockbox": _row("regime")}}})
    (tmp_path / "broken_report.json").write_text("{not json")
    rows = M.write_table(tmp_path)
    assert [r["method"] for r in rows] == ["alpha_huber", "strategy_oracle", "strategy_trend", "regime"]
    assert rows[0]["source"] == "alpha_report.json"
    text = (tmp_path / M.TABLE_FILE).read_text()
    assert text.count("\n| ") == 4 + 1  # header and one line per row
    assert "broken_report.json: not read" in text and "kept alpha_report.json's" in text


def test_a_classes_report_without_a_row_still_gives_one(tmp_path):
    """An older kdsignal train report (summary only) yields its classes row from summary.lockbox."""
    trade = {"net_return": 0.0, "sharpe": 0.0, "trades": 0, "break_even_fee_bp": None}
    lock = {"student": {"log_loss": 1.0094, "ic": 0.05, "direction_auc": 0.54, "seeds": 3},
            "control": {"log_loss": 1.0096}, "teacher": {"log_loss": 1.0065}, "rows": 500,
            "delta_vs_control": {"mean": 0.0002, "ci95": [-0.0007, 0.0011], "blocks": 46},
            "gap_recovered": 0.06, "gap_recovered_ci95": [-0.39, 0.33],
            "trading": {"student": {"taker": trade, "maker": trade}}}
    _write(tmp_path / "report.json", {"summary": {"lockbox": lock}, "choices": {"temperature": 1.0, "alpha": 0.25}})
    (rows, notes) = M.collect(tmp_path)
    assert notes == [] and len(rows) == 1
    r = rows[0]
    assert r["method"] == "classes" and r["loss"] == pytest.approx(1.0094) and r["seeds"] == 3 and r["n"] == 500
    assert r["gap_recovered"]["ci95"] == [-0.39, 0.33] and r["verdict"] == "no detectable difference"


def test_publish_appends_the_table_to_a_report(tmp_path):
    """publish rewrites methods.md and appends the same table to the given report markdown."""
    _write(tmp_path / "report.json", {"methods": {"classes": {"lockbox": _row("classes")}}})
    md = tmp_path / "report.md"
    md.write_text("# Report\n")
    M.publish(tmp_path, report_md=md)
    text = md.read_text()
    assert text.startswith("# Report\n") and "## Every method on its lockbox" in text
    assert "| classes | log_loss |" in text
    assert "| classes | log_loss |" in (tmp_path / M.TABLE_FILE).read_text()

"""Labels, data checks and the absence of look-ahead in training features, on the real samples in data/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.training.data import DataError, load_dataset, read_csv, regularize
from daemon.training.inputs import market_extras, own_extras, student_features
from daemon.training.labels import BUY, HOLD, NO_LABEL, SELL, LabelParams, bucket_labels, make_labels

DATA = Path(__file__).resolve().parent.parent / "data"
PARAMS = LabelParams(horizon_bars=3, band_k=0.5, vol_window=100, round_trip_cost=0.0011)


@pytest.fixture(scope="module")
def btc():
    """Two weeks of real BTCUSDT 5m candles."""
    return read_csv(DATA / "BTCUSDT-5m.csv")


def test_labels_match_a_plain_loop(btc):
    """Every label equals the definition computed bar by bar: forward log return against the hold band."""
    c = btc.close
    lab = make_labels(c, PARAMS)
    h, w = PARAMS.horizon_bars, PARAMS.vol_window
    for t in range(len(c)):
        if t < w or t + h >= len(c):
            assert lab["y"][t] == NO_LABEL
            continue
        r = [np.log(c[i] / c[i - 1]) for i in range(t - w + 1, t + 1)]
        band = max(PARAMS.band_k * np.sqrt(np.mean(np.square(r))) * np.sqrt(h), PARAMS.round_trip_cost)
        fwd = np.log(c[t + h] / c[t])
        want = BUY if fwd > band else SELL if fwd < -band else HOLD
        assert lab["y"][t] == want, t
        assert lab["band"][t] == pytest.approx(band, rel=1e-9)


def test_band_never_narrower_than_round_trip_cost(btc):
    """The hold band is at least two taker fees wherever it is defined."""
    b = make_labels(btc.close, PARAMS)["band"]
    assert np.nanmin(b) >= PARAMS.round_trip_cost
    assert np.sum(np.isfinite(b)) == len(b) - PARAMS.vol_window


def test_buckets_collapse_to_the_labels(btc):
    """Finer return buckets summed back into sell/hold/buy give exactly the labels."""
    lab = make_labels(btc.close, PARAMS)
    k, to_class = bucket_labels(lab["fwd"], lab["band"], lab["y"], (2.0, 3.0))
    assert len(to_class) == 7
    ok = lab["y"] >= 0
    assert np.array_equal(to_class[k[ok]], lab["y"][ok])
    assert np.all(k[~ok] == -1)
    z = lab["fwd"][ok] / lab["band"][ok]
    assert np.all(z[k[ok] == 0] < -3) and np.all(z[k[ok] == 6] > 3)


def test_missing_bars_drop_labels_that_touch_them(btc):
    """A hole in the file is reported, filled as NaN bars, and no label's window reaches into it."""
    keep = np.ones(len(btc), dtype=bool)
    keep[2000:2005] = False
    s = btc.slice(0, len(btc))
    for name in ("start_ms", "open", "high", "low", "close", "volume"):
        setattr(s, name, getattr(btc, name)[keep])
    from daemon.training.data import find_gaps

    s.gaps = find_gaps(s.start_ms, s.interval_ms)
    assert s.gaps == [(int(btc.start_ms[1999]), 5)]
    g, present = regularize(s)
    assert len(g) == len(btc) and not present[2000:2005].any()
    y = make_labels(g.close, PARAMS, present)["y"]
    assert np.all(y[2000 - PARAMS.horizon_bars : 2005 + PARAMS.vol_window] == NO_LABEL)
    before = 2000 - PARAMS.horizon_bars
    assert np.array_equal(y[:before], make_labels(btc.close, PARAMS)["y"][:before])


def test_non_monotonic_file_is_refused(tmp_path):
    """A row whose start_ms does not increase is reported with its row number."""
    lines = (DATA / "BTCUSDT-5m.csv").read_text().splitlines()[:20]
    lines[10], lines[11] = lines[11], lines[10]
    p = tmp_path / "BTCUSDT.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="row 12"):
        read_csv(p)


def test_bad_field_is_named(tmp_path):
    """An unparsable number is reported with its field name."""
    lines = (DATA / "BTCUSDT-5m.csv").read_text().splitlines()[:5]
    parts = lines[3].split(",")
    parts[4] = "abc"
    lines[3] = ",".join(parts)
    p = tmp_path / "BTCUSDT.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="close"):
        read_csv(p)


def test_mixed_intervals_are_refused_unless_filtered():
    """data/ mixes 1m and 5m files: loading all is refused, --interval 5 keeps the five 5m symbols."""
    with pytest.raises(DataError, match="mix"):
        load_dataset([DATA])
    series = load_dataset([DATA], interval="5")
    assert sorted(s.symbol for s in series) == ["ADAUSDT", "BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"]


@pytest.mark.parametrize("cut", [300, 1777, 3500])
def test_no_lookahead_in_features_or_labels(cut):
    """Changing every bar from ``cut`` on changes no feature before ``cut`` and no label before ``cut - h``."""
    series = load_dataset([DATA], interval="5")
    rng = np.random.default_rng(cut)
    changed = []
    for s in series:
        t = s.slice(0, len(s))
        n = len(t) - cut
        scale = np.exp(rng.normal(0, 0.05, n))
        t.open[cut:] *= scale
        t.close[cut:] *= scale[::-1]
        t.high[cut:] = np.maximum(t.open[cut:], t.close[cut:]) * 1.01
        t.low[cut:] = np.minimum(t.open[cut:], t.close[cut:]) * 0.99
        t.volume[cut:] = rng.uniform(0, 1e4, n)
        changed.append(t)
    for a, b in zip(series, changed, strict=True):
        fa, fb = student_features(a), student_features(b)
        assert np.array_equal(fa[:cut], fb[:cut], equal_nan=True)
        assert not np.array_equal(fa[cut:], fb[cut:], equal_nan=True)
        ea, eb = own_extras(a)[0], own_extras(b)[0]
        assert np.array_equal(ea[:cut], eb[:cut], equal_nan=True)
        ya, yb = make_labels(a.close, PARAMS)["y"], make_labels(b.close, PARAMS)["y"]
        h = PARAMS.horizon_bars
        assert np.array_equal(ya[: cut - h], yb[: cut - h])
    ma, mb = market_extras(series)[0], market_extras(changed)[0]
    for x, z in zip(ma, mb, strict=True):
        assert np.array_equal(x[:cut], z[:cut], equal_nan=True)

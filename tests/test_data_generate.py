"""``hpcvit data generate``: the published Parquet layout, reproducible by seed whatever the worker count,
and FastJet (the package) and Pythia's built-in fjcore finding the same jets."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

try:
    import pythia8mc  # noqa: F401

    HAVE_PYTHIA = True
except ImportError:
    HAVE_PYTHIA = False

pytestmark = pytest.mark.skipif(not HAVE_PYTHIA, reason="pythia8mc is not installed (pip install 'hpcvit[generate]')")


def test_top_vs_qcd_layout_and_reproducibility(tmp_path):
    from hpcvit.data.generate import GenConfig, generate
    from hpcvit.data.parquet import ParquetStore

    cfg = GenConfig("top-vs-qcd", n=12, seed=5, shard_size=3)
    a = generate(cfg, tmp_path / "a.parquet", workers=2, progress=False)
    b = generate(cfg, tmp_path / "b.parquet", workers=1, progress=False)
    assert a["jets"] == 12 and a["jets_per_s"] > 0
    ta, tb = pq.read_table(a["path"]), pq.read_table(b["path"])
    assert ta.equals(tb)  # same seed: same jets, whatever the number of workers

    pf = pq.ParquetFile(a["path"])
    assert pf.metadata.num_row_groups == 12  # one jet per row group, as published
    assert ta.schema.field("X_jets").type == pa.list_(pa.list_(pa.list_(pa.float64())))
    for name in ("y", "pt", "m0"):
        assert ta.schema.field(name).type == pa.float64()
    meta = json.loads(ta.schema.metadata[b"hpcvit"])
    assert meta["process"] == "top-vs-qcd" and meta["seed"] == 5 and meta["generator"]["pythia8mc"] == "8.317.2"
    assert meta["cuts"]["pt_min"] == 500.0 and meta["cuts"]["jet_r"] == 0.8

    y, pt, m0 = (ta.column(k).to_numpy() for k in ("y", "pt", "m0"))
    assert y.sum() == 6 and ((pt >= 500) & (pt < 650)).all()
    assert np.median(m0[y == 1]) > 140 > np.median(m0[y == 0])  # top jets carry the top mass
    x = ParquetStore([a["path"]]).read(np.arange(12))
    assert x.shape == (12, 3, 125, 125) and (x >= 0).all()
    assert (x.reshape(12, 3, -1).sum(axis=2) > 0).all()  # tracks, ECAL and HCAL deposits in every jet
    # track pT inside the image adds up to a good part of the jet pT, centred on the jet axis
    assert (x[:, 0].sum(axis=(1, 2)) < pt).all() and (x[:, 0].sum(axis=(1, 2)) > 0.2 * pt).all()
    rows, cols = np.nonzero(x[:, 0].sum(axis=0))
    assert abs(np.average(rows) - 62) < 15 and abs(np.average(cols) - 62) < 15

    c = generate(GenConfig("top-vs-qcd", n=12, seed=6, shard_size=3), tmp_path / "c.parquet", workers=2,
                 progress=False)
    assert not pq.read_table(c["path"]).column("pt").equals(ta.column("pt"))


def test_quark_gluon_and_fastjet_agree_with_fjcore():
    from hpcvit.data.generate import GenConfig, Shard, densify, run_shard

    cfg = GenConfig("quark-vs-gluon", n=8).resolved()
    shard = Shard(0, 0, 4, seed=11)
    fj = run_shard(cfg.__class__(**{**cfg.__dict__, "clusterer": "fastjet"}), shard)
    core = run_shard(cfg, shard)
    assert fj["n_events"] == core["n_events"]
    np.testing.assert_allclose(fj["pt"], core["pt"], rtol=1e-9)
    np.testing.assert_allclose(fj["m0"], core["m0"], rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(densify(fj), densify(core), rtol=1e-9)
    assert ((core["pt"] >= 100) & (core["pt"] < 150)).all() and (np.abs(core["eta"]) < 2.0).all()

"""``hpcvit data inspect|convert``: output, exit codes, one-line errors naming the file."""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np

from hpcvit.data.commands import add_parser, main
from hpcvit.data.parquet import write_jets


def jets_file(path, n=10):
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, size=(n, 3, 10, 10))
    return write_jets(path, x, {"y": np.array([1.0] * 3 + [0.0] * (n - 3)), "pt": rng.uniform(0, 100, n),
                                "m0": np.zeros(n)})


def test_add_parser_sets_callables():
    parser = argparse.ArgumentParser(prog="hpcvit")
    add_parser(parser.add_subparsers(dest="command"))
    for argv in (["data", "inspect", "x.parquet"], ["data", "convert", "x.parquet", "--cache-dir", "c"],
                 ["data", "generate", "--process", "top-vs-qcd", "-n", "10"]):
        args = parser.parse_args(argv)
        assert callable(args.func)


def test_inspect_parquet_and_hdf5(tmp_path, capsys):
    p = jets_file(tmp_path / "qg.parquet")
    h = tmp_path / "photons.h5"
    with h5py.File(h, "w") as f:
        f.create_dataset("X", data=np.ones((8, 32, 32, 2), np.float32), chunks=(4, 32, 32, 2), compression="lzf")
        f.create_dataset("y", data=np.zeros(8, np.float32))
    assert main(["inspect", str(p), str(h), "--check"]) == 0
    out = capsys.readouterr().out
    assert "10 images of 3 x 10 x 10" in out and "row groups: 10 (rows per group min 1" in out
    assert "class balance (y): 0: 7 (70.0%), 1: 3 (30.0%)" in out
    assert "8 images of 2 x 32 x 32" in out and "compression lzf" in out and "NaN pixels 0" in out
    assert main(["inspect", str(p), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report[0]["row_groups"] == 10 and report[0]["target"]["y"]["counts"] == {"0": 7, "1": 3}


def test_convert_builds_the_cache(tmp_path, capsys):
    p = jets_file(tmp_path / "qg.parquet", n=20)
    cache = tmp_path / "cache"
    assert main(["convert", str(p), "--cache-dir", str(cache), "--cut", "pt=10:90", "--channels", "0,2"]) == 0
    out = capsys.readouterr().out
    assert "cache: " in out and "preprocessed: " in out and "x 10 x 10" in out
    assert len(list(cache.glob("raw-*/x.npy"))) == 1 and len(list(cache.glob("pre-*/x.npy"))) == 1
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: t\nmodel: {{name: x}}\ndata:\n  format: parquet\n  paths: [{p}]\n"
                    f"  cache_dir: {cache}\n  cuts: {{pt: [10, 90]}}\n  channels: [0, 2]\n")
    assert main(["convert", "--spec", str(spec), "--raw-only"]) == 0
    assert len(list(cache.glob("raw-*/x.npy"))) == 1  # the same selection: reused


def test_errors_are_one_line_and_name_the_file(tmp_path, capsys):
    p = jets_file(tmp_path / "qg.parquet")
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.parquet" in err and err.startswith("hpcvit data inspect: error:")
    assert main(["convert", str(p), "--cache-dir", str(tmp_path / "c"), "--cut", "eta=0:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "qg.parquet: no scalar column 'eta'" in err
    assert main(["convert", str(p), "--cache-dir", str(tmp_path / "c"), "--cut", "pt"]) == 1
    assert "--cut 'pt': write COLUMN=MIN:MAX" in capsys.readouterr().err
    assert main(["convert", str(p)]) == 2
    assert "--cache-dir" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.h5")]) == 1
    assert "missing.h5" in capsys.readouterr().err

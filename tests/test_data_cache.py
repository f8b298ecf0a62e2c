"""The memory-mapped cache: same samples as direct reading, built once, keyed by sources and preprocessing,
atomic and safe when processes race."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from hpcvit.objectives.binary import ClassLabels
from hpcvit.data import build_datasets
from hpcvit.data.cache import raw_key
from hpcvit.data.parquet import write_jets
from hpcvit.config import DataSpec, PreprocessSpec


def make_file(path: Path, n: int = 24, seed: int = 0) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.exponential(1.0, size=(n, 3, 12, 12)) * (rng.random((n, 3, 12, 12)) < 0.4)
    x[2, 0, 0, 0] = np.nan
    return write_jets(path, x, {"y": (np.arange(n) % 2).astype(float), "pt": rng.uniform(0, 100, n),
                                "m0": rng.uniform(0, 10, n)}), x


def dirs(cache: Path, prefix: str) -> list[Path]:
    return sorted(p for p in cache.glob(f"{prefix}*") if p.is_dir())


@pytest.mark.parametrize("preprocessed", [True, False], ids=["preprocessed", "raw-only"])
def test_cache_gives_the_direct_samples(tmp_path, preprocessed):
    p, _ = make_file(tmp_path / "a.parquet")
    base = DataSpec(format="parquet", nonfinite="zero", paths=[str(p)], cuts={"pt": [10, 90]}, val_fraction=0.25, test_fraction=0.2)
    direct = build_datasets(base, tmp_path, targets=ClassLabels())
    spec = base.model_copy(update={"cache_dir": str(tmp_path / "cache"), "cache_preprocessed": preprocessed})
    cached = build_datasets(spec, tmp_path, targets=ClassLabels())
    for a, b in ((direct.train, cached.train), (direct.val, cached.val), (direct.test, cached.test)):
        xa, ya = a.arrays()
        xb, yb = b.arrays()
        np.testing.assert_allclose(xb, xa, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(yb, ya)
    np.testing.assert_array_equal(cached.stats.mean, direct.stats.mean)
    for key in ("n_train", "n_val", "n_test", "n_selected", "class_balance", "fingerprint", "files", "shape"):
        assert cached.info[key] == direct.info[key]
    assert (dirs(tmp_path / "cache", "pre-") != []) == preprocessed


def test_built_once_then_reused_and_rebuilt_when_sources_or_preprocessing_change(tmp_path):
    p, x = make_file(tmp_path / "a.parquet")
    cache = tmp_path / "cache"
    spec = DataSpec(format="parquet", nonfinite="zero", paths=[str(p)], cache_dir=str(cache))
    b1 = build_datasets(spec, tmp_path)
    (raw,) = dirs(cache, "raw-")
    (pre,) = dirs(cache, "pre-")
    stamp = (raw / "x.npy").stat().st_mtime_ns, (pre / "x.npy").stat().st_mtime_ns
    b2 = build_datasets(spec, tmp_path)
    assert ((raw / "x.npy").stat().st_mtime_ns, (pre / "x.npy").stat().st_mtime_ns) == stamp
    np.testing.assert_array_equal(b1.train.arrays()[0], b2.train.arrays()[0])

    # other preprocessing: the decoded cache is reused, a new preprocessed copy is made
    b3 = build_datasets(spec.model_copy(update={"preprocessing": PreprocessSpec(minmax=False)}), tmp_path)
    assert dirs(cache, "raw-") == [raw] and len(dirs(cache, "pre-")) == 2
    assert b3.train.arrays()[0].max() > 1.0

    # the source file changes: a new key, a rebuilt cache holding the new samples
    key = raw_key(spec, [p])
    x2 = x * 2.0
    write_jets(p, x2, {"y": (np.arange(24) % 2).astype(float), "pt": np.zeros(24), "m0": np.zeros(24)})
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert raw_key(spec, [p]) != key
    raw_spec = spec.model_copy(update={"preprocessing": PreprocessSpec(zero_suppress=None, zscore=False,
                                                                       clip_sigma=None, minmax=False)})
    b4 = build_datasets(raw_spec, tmp_path)
    assert len(dirs(cache, "raw-")) == 2
    got, _ = b4.train.arrays()
    np.testing.assert_array_equal(got, np.nan_to_num(x2[b4.train.rows]).astype(np.float32))


def test_crashed_builds_are_cleaned_up(tmp_path):
    p, _ = make_file(tmp_path / "a.parquet")
    cache = tmp_path / "cache"
    spec = DataSpec(format="parquet", nonfinite="zero", paths=[str(p)], cache_dir=str(cache), cache_preprocessed=False)
    name = f"raw-{raw_key(spec, [p])}"
    (cache / f".{name}.tmp-otherhost-123").mkdir(parents=True)  # a build that died
    (cache / name).mkdir()  # an incomplete directory without meta.json
    build_datasets(spec, tmp_path)
    assert not list(cache.glob(".raw-*")) and (cache / name / "meta.json").exists()


def _build(args):
    spec_json, sweep_dir = args
    t0 = time.monotonic()
    b = build_datasets(DataSpec.model_validate_json(spec_json), Path(sweep_dir))
    return time.monotonic() - t0, b.info["cache"], b.train.arrays()[0].sum()


def test_waits_for_a_build_holding_the_lock_and_races_are_safe(tmp_path):
    p, _ = make_file(tmp_path / "a.parquet", n=60)
    cache = tmp_path / "cache"
    spec = DataSpec(format="parquet", nonfinite="zero", paths=[str(p)], cache_dir=str(cache))
    name = f"raw-{raw_key(spec, [p])}"
    (cache / ".locks").mkdir(parents=True)
    ctx = mp.get_context("spawn")
    with open(cache / ".locks" / f"{name}.lock", "a+") as lock, ctx.Pool(2) as pool:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another task is building
        pending = [pool.apply_async(_build, ((spec.model_dump_json(), str(tmp_path)),)) for _ in range(2)]
        time.sleep(1.5)
        assert not any(r.ready() for r in pending) and not dirs(cache, "raw-")
        fcntl.flock(lock, fcntl.LOCK_UN)
        results = [r.get(timeout=60) for r in pending]
    assert results[0][1] == results[1][1] and results[0][2] == results[1][2]
    assert len(dirs(cache, "raw-")) == 1 and len(dirs(cache, "pre-")) == 1
    assert not list(cache.glob(".*.tmp"))


def test_cached_samples_through_loader_workers_and_writes_do_not_reach_the_cache(tmp_path):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    p, _ = make_file(tmp_path / "a.parquet", n=40)
    spec = DataSpec(format="parquet", nonfinite="zero", paths=[str(p)], cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    b = build_datasets(spec, tmp_path)
    want, _ = b.train.arrays()
    img, _ = b.train[0]
    img += 100.0  # an in-place augmentation of a returned sample changes neither later reads nor the file
    np.testing.assert_array_equal(b.train[0][0].numpy(), want[0])
    batch = b.train.__getitems__([0, 1])
    np.testing.assert_array_equal(batch[0][0].numpy(), want[0])
    np.testing.assert_array_equal(build_datasets(spec, tmp_path).train.arrays()[0], want)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(b.train, num_replicas=2, rank=rank, shuffle=True, seed=1)
        idx = list(iter(sampler))
        xs = torch.cat([xb for xb, _ in DataLoader(b.train, batch_size=6, sampler=sampler, num_workers=2)])
        np.testing.assert_array_equal(xs.numpy(), want[idx])
        seen.append(set(idx))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == len(b.train)


def test_parallel_decode_matches_direct_reading(tmp_path):
    from hpcvit.data.cache import ensure_raw
    from hpcvit.data.formats import open_store

    p1, _ = make_file(tmp_path / "a.parquet", n=1500, seed=1)
    p2, _ = make_file(tmp_path / "b.parquet", n=700, seed=2)
    spec = DataSpec(format="parquet", nonfinite="zero", paths=[str(p1), str(p2)], cache_dir=str(tmp_path / "cache"),
                    cuts={"pt": [5, 95]})
    raw = ensure_raw(spec, [p1, p2], workers=2)
    assert raw.meta["decode_processes"] == 2
    store = open_store(spec, [p1, p2])
    rows = raw.columns["__source_row__"]
    np.testing.assert_array_equal(np.load(raw.dir / "x.npy"), store.read(rows))
    pt = np.concatenate([store.column("pt")])
    np.testing.assert_array_equal(rows, np.flatnonzero((pt >= 5) & (pt < 95)))


def test_a_cached_data_set_reaches_loader_workers_without_its_source_row_array(tmp_path):
    # the rows' source positions (int64 per cached row) are read from the cache by a worker that needs them
    import pickle

    p, _ = make_file(tmp_path / "a.parquet", n=4000)
    spec = DataSpec(format="parquet", nonfinite="zero", paths=[str(p)], cache_dir=str(tmp_path / "cache"),
                    cuts={"pt": [10, 90]}, val_fraction=0.25)
    val = build_datasets(spec, tmp_path).val
    sent = pickle.dumps(val)
    # the split's own rows and targets, and a few kB of the rest, against the whole cache's source rows
    assert len(sent) < val.rows.nbytes + val.targets.nbytes + 8192 < val.source.source_rows.nbytes
    assert len(pickle.dumps(val.source)) < 2048
    there = pickle.loads(sent)
    rows = val.rows[::7]
    assert [there.source.describe(r) for r in rows] == [val.source.describe(r) for r in rows]
    np.testing.assert_array_equal(there.source.of(rows)["row"], val.source.of(rows)["row"])
    assert there.source.of(rows)["row"].max() > 0 and len(set(there.source.of(rows)["row"])) == len(rows)


DECODE = """
import sys
from pathlib import Path
from hpcvit.config import DataSpec
from hpcvit.data.cache import ensure_raw
spec = DataSpec(format="parquet", nonfinite="zero", paths=[sys.argv[1]], cache_dir=sys.argv[2])
ensure_raw(spec, [Path(sys.argv[1])], workers=2)
"""


def _children(pid: int) -> dict[int, str]:
    """Children of ``pid``: their command lines, with the paths of the files they have open."""
    from tests.conftest import process_children

    found = {}
    for child in process_children().get(pid, []):
        try:
            files = [os.readlink(fd) for fd in Path(f"/proc/{child}/fd").iterdir()]
            found[child] = " ".join([Path(f"/proc/{child}/cmdline").read_text(), *files])
        except OSError:
            continue
    return found


def test_a_decode_process_resists_stop_signals_and_one_that_dies_fails_the_build_at_once(tmp_path):
    # a preemption signals every process of the job: the decode processes go on (the trainer saves after the
    # build); the out-of-memory killer takes one in its part: the build stops with a one-line error instead
    # of waiting for that part for ever (under the cache lock, which every task of the sweep waits on)
    import signal
    import subprocess
    import sys

    from hpcvit.scheduler.procs import STOP_SIGNALS
    from hpcvit.data.parquet import write_jets
    from tests.conftest import REPO, signals_in

    n = 4096  # two processes, eight parts of a few tenths of a second each (one row per row group)
    x = np.random.default_rng(0).exponential(1.0, size=(n, 3, 32, 32)).astype(np.float32)
    p = write_jets(tmp_path / "a.parquet", x, {"y": (np.arange(n) % 2).astype(float)})
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", DECODE, str(p), str(cache)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, busy, children = time.monotonic() + 60, [], {}
        while not busy and proc.poll() is None and time.monotonic() < deadline:
            children = _children(proc.pid)
            busy = [pid for pid, what in children.items() if ".tmp/x.npy" in what]
            time.sleep(0.01)
        assert busy, proc.stderr.read()[-2000:] if proc.poll() is not None else "no decode process in its part"
        tracker = [pid for pid, what in children.items() if "resource_tracker" in what]
        for pid in [*busy, *tracker]:  # the tracker was started with them blocked too: it ignores two of three
            assert set(STOP_SIGNALS) <= signals_in(pid, "SigBlk") | signals_in(pid, "SigIgn"), pid
        for sig in STOP_SIGNALS:
            os.kill(busy[0], sig)
        time.sleep(0.2)
        assert Path(f"/proc/{busy[0]}").exists() and proc.poll() is None
        os.kill(busy[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "WorkerDied: a decode process ended before it finished its part" in err, \
        err[-2000:]
    assert not dirs(cache, "raw-") and not list(cache.glob(".*.tmp"))
    spec = DataSpec(format="parquet", nonfinite="zero", paths=[str(p)], cache_dir=str(cache))
    from hpcvit.data.cache import ensure_raw
    assert ensure_raw(spec, [p], workers=2).n == n  # nothing held: the next build goes through

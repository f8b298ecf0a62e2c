"""Atomic writes, locks and JSON reads that name the damaged file, with real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcvit import fsio
from hpcvit.scheduler.jobenv import JobEnv


def test_a_failed_write_leaves_the_old_content_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    fsio.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with fsio.atomic_open(target, "w") as f:
            f.write('{"v": 2, "half')
            raise RuntimeError("disk gone")
    assert fsio.read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_killed_writer_leaves_a_temp_file_that_clean_up_removes(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    code = (f"from pathlib import Path; from hpcvit import fsio; import os\n"
            f"with fsio.atomic_open(Path({str(target)!r})) as f:\n"
            f"    f.write(b'x' * 1000); f.flush(); os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".ckpt.pt.") and left[0].name.endswith(fsio.TEMP_SUFFIX)
    assert not target.exists()
    assert fsio.remove_temp_files(tmp_path, older_than_s=3600) == []
    assert fsio.remove_temp_files(tmp_path) == left and not list(tmp_path.iterdir())


def test_read_json_names_a_damaged_file(tmp_path: Path) -> None:
    bad = tmp_path / "progress.json"
    bad.write_text('{"epoch": 3,')
    with pytest.raises(fsio.DamagedFileError, match=r"progress\.json: damaged JSON") as info:
        fsio.read_json(bad, {})
    assert len(str(info.value).splitlines()) == 1 and info.value.path == bad
    assert fsio.read_json(tmp_path / "absent.json", "default") == "default"
    with pytest.raises(FileNotFoundError):
        fsio.read_json(tmp_path / "absent.json")


def test_a_held_lock_excludes_another_process_until_released(tmp_path: Path) -> None:
    path = tmp_path / "slot-0"
    lock = fsio.HeldLock.try_acquire(path)
    assert lock is not None and fsio.is_locked(path)
    probe = ("import sys; from hpcvit import fsio; from pathlib import Path; "
             f"sys.exit(0 if fsio.HeldLock.try_acquire(Path({str(path)!r})) is None else 1)")
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0, "held: another process must not get it"
    lock.release()
    assert not fsio.is_locked(path)
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 1


def test_file_lock_serialises_processes(tmp_path: Path) -> None:
    log = tmp_path / "log"
    code = ("import sys, time; from pathlib import Path; from hpcvit import fsio\n"
            f"with fsio.file_lock(Path({str(tmp_path / 'l.lock')!r})):\n"
            f"    open({str(log)!r}, 'a').write('in ' + sys.argv[1] + '\\n'); time.sleep(0.3)\n"
            f"    open({str(log)!r}, 'a').write('out ' + sys.argv[1] + '\\n')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)]) for i in range(3)]
    assert all(p.wait() == 0 for p in procs)
    lines = log.read_text().split()
    pairs = list(zip(lines[0::4], lines[1::4], lines[2::4], lines[3::4]))
    assert len(pairs) == 3 and all(a == "in" and c == "out" and b == d for a, b, c, d in pairs)


def test_job_env_reads_every_variable_and_names_a_bad_one() -> None:
    env = JobEnv.read({"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "10",
                       "SLURM_ARRAY_TASK_ID": "2", "SLURM_RESTART_COUNT": "1", "HPCVIT_RESTARTS": "3",
                       "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "n1", "OMP_NUM_THREADS": "4"})
    assert (env.on_slurm, env.scheduler_job, env.array_task_id, env.restarts, env.rank, env.world_size,
            env.distributed, env.omp_threads, env.is_main) == (True, "10", 2, 3, 1, 2, True, 4, False)
    plain = JobEnv.read({})
    assert (plain.executor, plain.scheduler_job, plain.distributed, plain.restarts) == ("local", "", False, 0)
    with pytest.raises(RuntimeError, match=r"SLURM_RESTART_COUNT='x'"):
        JobEnv.read({"SLURM_RESTART_COUNT": "x"})

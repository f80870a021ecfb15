"""Two `cubesearch search` processes share one study on a real PostgreSQL server (127.0.0.1)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")


def pg_bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; "
                    "`apt-get install postgresql` (CI's .ci/run does)")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed")
    as_root = os.geteuid() == 0
    if as_root and not shutil.which("runuser"):
        pytest.skip("running as root without runuser: PostgreSQL refuses to run as root")
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="cubesearch-pg-", dir="/tmp"))
    data = base / "data"
    if as_root:
        shutil.chown(base, "postgres")
        os.chmod(base, 0o755)
    port = free_port()
    subprocess.run([*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_two_processes_share_one_study(postgres_url, tmp_path):
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "cubesearch", "search", TINY, "--budget", "100%", "--space", "shared",
           "--trials", "6", "--strategy", "trials", "--out", str(out), "--storage", postgres_url,
           "--study", "shared-test",
           "--input-size", "3x64x64", "--tile-size", "32", "--train-tiles", "16", "--val-tiles", "8",
           "--json"]
    env = {**os.environ, "CUBESEARCH_NO_PROGRESS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared-test", storage=postgres_url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) >= 6  # each process stops at 6 complete; one may finish a last one in flight
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    trained = [t.user_attrs["checkpoint"] for t in complete if "checkpoint" in t.user_attrs]
    assert len(trained) == len(set(trained))  # no trial trained twice into the same folder
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))
    refs = [t.user_attrs.get("reference") for t in study.trials if t.user_attrs.get("reference")]
    assert sorted(refs) == ["baseline", "fullcube"]  # enqueued once, not once per process
    for _, stdout in ((None, o[0]) for o in outputs):
        assert json.loads(stdout)["study"] == "shared-test"

"""Issue 14: folders, plans and studies from someone else. No model code runs unasked
(`cubesearch.models.trust`), the manifest is mandatory, knob values are bounded, writes are atomic,
and every message names the option or file and what would be accepted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import cubesearch
import cubesearch.models.trust as trust
from cubesearch.cli import main
from cubesearch.core.errors import CubesearchError
from cubesearch.models.load import load_model
from cubesearch.plan.checkpoint import MANIFEST, save
from cubesearch.plan.plan import Plan

ASSETS = Path(__file__).parent / "assets"
TINY_SRC = ASSETS / "tiny_seg.py"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    return lines[-1]


@pytest.fixture
def fresh_trust(tmp_path, monkeypatch):
    """An empty store of trusted model files, and a process that has built no model from a file."""
    monkeypatch.setenv(trust.STORE_ENV, str(tmp_path / "store" / "trusted.json"))
    monkeypatch.setattr(trust, "_SEEN", {})


def tiny_copy(folder: Path, marker: Path | None = None) -> Path:
    """A copy of the tiny test model at a new path; with `marker`, importing it touches that file."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "model.py"
    text = TINY_SRC.read_text()
    if marker is not None:
        text += f"\nfrom pathlib import Path as _P\n_P({str(marker)!r}).touch()\n"
    file.write_text(text)
    return file


def checkpoint_of(folder: Path, spec: str, model_kwargs: dict | None = None) -> Path:
    """A checkpoint folder (written by cubesearch, with its manifest) whose plan names `spec`."""
    net = load_model(str(TINY_SRC))
    plan = Plan(model=spec, model_kwargs=model_kwargs or {"num_classes": 1, "in_channels": 3},
                input_size=(3, 32, 32))
    return save(folder, net, plan)


# --- trust of model code ------------------------------------------------------------------------


def test_plan_naming_os_system_runs_nothing(tmp_path, fresh_trust, capsys):
    marker = tmp_path / "pwned"
    ck = checkpoint_of(tmp_path / "ck", "os:system", {"command": f"touch {marker}"})
    with pytest.raises(CubesearchError, match=r"'os:system'.*--trust-model-code"):
        cubesearch.load(ck)
    assert not marker.exists()
    code, _, err = run(capsys, "train", str(ck), "--steps", "1", "-o", str(tmp_path / "t"))
    assert code == 1 and not marker.exists()
    assert "os:system" in error_line(err) and "--trust-model-code" in err
    assert not (tmp_path / "t").exists()


def test_model_py_shipped_in_a_folder_is_not_imported(tmp_path, fresh_trust, capsys):
    marker = tmp_path / "imported"
    ck = tmp_path / "ck"
    checkpoint_of(ck, "model.py")
    tiny_copy(tmp_path / "elsewhere", marker)
    shutil.copy(tmp_path / "elsewhere" / "model.py", tmp_path / "model.py")  # above the folder
    with pytest.raises(CubesearchError, match=r"'model.py' \(a Python file\).*--trust-model-code"):
        cubesearch.load(ck)
    assert not marker.exists()
    # convert --plan reads the same plan: refused too, one line, nothing imported
    code, _, err = run(capsys, "convert", "--plan", str(ck / "plan.json"))
    assert code == 1 and not marker.exists()
    assert "--trust-model-code" in error_line(err) and "model.py" in error_line(err)
    # the user's explicit say-so imports it
    model = cubesearch.load(ck, trust_code=True)
    assert marker.exists() and isinstance(model, torch.nn.Module)


def test_own_model_file_round_trip_needs_no_flag_until_it_changes(tmp_path, fresh_trust, capsys):
    file = tiny_copy(tmp_path / "proj")
    out = tmp_path / "conv"
    code, _, err = run(capsys, "convert", str(file), "--input-size", "3x32x32", "-o", str(out))
    assert code == 0, err
    assert json.loads(Path(trust.store_path()).read_text())["files"] == {
        str(file.resolve()): trust.file_sha256(file)}
    trust._SEEN.clear()  # as a later process would: only the store on disk remembers
    cubesearch.load(out)
    code, _, err = run(capsys, "train", str(out), "--steps", "1", "--train-tiles", "4", "--val-tiles",
                       "2", "--input-size", "3x32x32", "--batch-size", "2", "-o", str(tmp_path / "t"))
    assert code == 0, err
    file.write_text(file.read_text() + "\n# edited after the run\n")
    with pytest.raises(CubesearchError, match="changed since"):
        cubesearch.load(out)
    cubesearch.load(out, model=str(file))  # naming the same spec is the user's say-so
    cubesearch.load(out, trust_code=True)


def test_importable_callable_from_a_file_needs_the_user(tmp_path, fresh_trust, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copy(TINY_SRC, pkg / "cs_test_models.py")
    monkeypatch.syspath_prepend(str(pkg))
    load_model("cs_test_models:build_model")  # the user's own run: never recorded for import specs
    ck = checkpoint_of(tmp_path / "ck", "cs_test_models:build_model")
    with pytest.raises(CubesearchError, match="an importable callable.*--trust-model-code"):
        cubesearch.load(ck)
    cubesearch.load(ck, model="cs_test_models:build_model")


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1, "width": {"nested": 1}}, r"model_kwargs.width must be a plain JSON value"),
    ({"num_classes": 1, "checkpoint_path": "/tmp/evil.pth"}, r"model_kwargs.checkpoint_path is refused"),
    ({"num_classes": True}, r"model_kwargs.num_classes must be a positive integer"),
])
def test_model_kwargs_from_a_file_are_plain_values(tmp_path, kwargs, message):
    ck = checkpoint_of(tmp_path / "ck", str(TINY_SRC), kwargs)
    with pytest.raises(CubesearchError, match=message):
        cubesearch.load(ck)


# --- the manifest is mandatory ------------------------------------------------------------------


@pytest.fixture
def tampered(tmp_path):
    """A good checkpoint with one flipped weight byte: only the manifest can tell."""
    ck = checkpoint_of(tmp_path / "ck", str(TINY_SRC))
    weights = ck / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    return ck


def test_deleted_manifest_is_refused(tampered):
    (tampered / MANIFEST).unlink()
    with pytest.raises(CubesearchError, match=r"has no manifest.json.*verify=False"):
        cubesearch.load(tampered)
    cubesearch.load(tampered, verify=False)  # the explicit escape hatch


def test_empty_manifest_is_refused(tampered):
    (tampered / MANIFEST).write_text(json.dumps({"version": 1, "files": {}}))
    with pytest.raises(CubesearchError, match="lists no file"):
        cubesearch.load(tampered)


def test_partial_manifest_is_refused(tampered):
    manifest = json.loads((tampered / MANIFEST).read_text())
    del manifest["files"]["model.safetensors"]
    (tampered / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CubesearchError, match=r"model.safetensors is not listed in manifest.json"):
        cubesearch.load(tampered)


def test_file_added_after_writing_is_refused(tmp_path):
    ck = checkpoint_of(tmp_path / "ck", str(TINY_SRC))
    (ck / "model.py").write_text("print('hi')\n")
    with pytest.raises(CubesearchError, match=r"model.py is not listed in manifest.json"):
        cubesearch.load(ck)


def test_train_no_verify_loads_a_hand_made_folder(tmp_path, capsys):
    ck = checkpoint_of(tmp_path / "ck", str(TINY_SRC))
    (ck / MANIFEST).unlink()
    args = ["train", str(ck), "--steps", "1", "--train-tiles", "4", "--val-tiles", "2",
            "--input-size", "3x32x32", "--batch-size", "2", "-o", str(tmp_path / "t")]
    code, _, err = run(capsys, *args)
    assert code == 1 and "--no-verify" in error_line(err)
    code, _, err = run(capsys, *args, "--no-verify")
    assert code == 0, err


# --- knob values --------------------------------------------------------------------------------


@pytest.mark.parametrize("knobs, message", [
    ({"lattice_stride": True}, r"lattice_stride: expected 1 or 2, not a boolean"),
    ({"fusion_kernel": True}, r"fusion_kernel: expected 1 or 3, not a boolean"),
    ({"depth": 100000}, r"depth: Input should be less than or equal to 8"),
    ({"groups": 0}, r"groups: Input should be greater than or equal to 1"),
])
def test_plan_knobs_are_validated_strictly(tmp_path, knobs, message):
    data = {"version": 1, "model": "timm:resnet18", "sites": {"layer1.0.conv1": knobs}}
    file = tmp_path / "plan.json"
    file.write_text(json.dumps(data))
    with pytest.raises(CubesearchError, match=message):
        Plan.load(file)


def test_groups_that_do_not_divide_are_reported_as_used(capsys):
    code, out, err = run(capsys, "convert", str(TINY_SRC), "--input-size", "3x32x32", "--groups", "3",
                         "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {r["groups_used"] for r in result["sites"]} == {1}
    assert all("g1 (of 3)" in r["config_short"] for r in result["sites"])
    assert any("groups 3 does not divide" in n for n in result["notes"])


# --- destinations are checked first, written aside, renamed at the end ---------------------------


def test_train_out_is_checked_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    # the data folder does not exist either: the destination must be the first thing checked
    for out, message in [(tmp_path / "file", "is a file"),
                         (foreign, "is not a cubesearch checkpoint"),
                         (tmp_path / "file" / "sub", "is a file, so no folder can be made")]:
        code, _, err = run(capsys, "train", str(TINY_SRC), "--data", str(tmp_path / "no-data"),
                           "-o", str(out))
        line = error_line(err)
        assert code == 1 and line.startswith(f"error: --out {out}") and message in line, line
    assert (foreign / "notes.txt").read_text() == "mine"


# --- messages name the option or file and what would be accepted --------------------------------


def test_preview_out_names_the_accepted_extensions(tmp_path, capsys):
    folder = tmp_path / "somedir"
    folder.mkdir()
    code, _, err = run(capsys, "data", "preview", "-o", str(folder), "-n", "1", "--size", "32")
    assert code == 1 and ".png" in error_line(err) and "-o" in error_line(err)
    code, _, err = run(capsys, "data", "preview", "-o", str(tmp_path / "x.gif"), "-n", "1")
    assert code == 1 and "unknown image extension '.gif'" in error_line(err)
    code, _, err = run(capsys, "data", "preview", "-o", str(tmp_path / "ok.png"), "-n", "1",
                       "--size", "32")
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_classes_zero_says_what_is_accepted(tmp_path, capsys):
    code, _, err = run(capsys, "train", str(TINY_SRC), "--classes", "0", "--steps", "1",
                       "-o", str(tmp_path / "t"))
    line = error_line(err)
    assert code == 1 and "--classes" in line and "K ≥ 2" in line and "1 (binary" in line


def test_os_errors_name_the_path_not_the_errno(tmp_path, capsys, monkeypatch):
    import cubesearch.cli as cli

    monkeypatch.chdir(tmp_path)
    Path("out").write_text("x")

    def app(**kwargs):
        Path("out").mkdir(parents=True, exist_ok=True)  # what used to print "[Errno 17] File exists"

    monkeypatch.setattr(cli, "app", app)
    code, _, err = run(capsys, "anything")
    line = error_line(err)
    assert code == 1 and "[Errno" not in line
    assert line == ("error: out already exists (a file) where cubesearch needed to create it; "
                    "choose a new path")


# --- secrets ------------------------------------------------------------------------------------


def test_mask_url():
    from cubesearch.core.redact import mask_secrets, mask_url

    assert mask_url("postgresql+psycopg2://user:PW@host/db") == "postgresql+psycopg2://user:***@host/db"
    assert mask_url("postgresql://u:p@ss@host:5432/db") == "postgresql://u:***@host:5432/db"
    assert mask_url("postgresql://host/db?user=u&password=pw") == "postgresql://host/db?user=u&password=***"
    assert mask_url("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"
    masked = mask_secrets("cannot open 'mysql://a:b@h/x': refused")
    assert masked == "cannot open 'mysql://a:***@h/x': refused"


def test_storage_password_is_not_shown_in_errors(tmp_path, capsys):
    url = "postgresql+psycopg2://user:hunter2@127.0.0.1:1/db"
    code, out, err = run(capsys, "export", url, "-o", str(tmp_path / "e"))
    assert code == 1 and "hunter2" not in out + err and "user:***@" in error_line(err)
    assert not (tmp_path / "e").exists()  # a storage error leaves no empty --out


# --- analysis memory does not grow with the input size -----------------------------------------


def test_sites_at_a_huge_input_allocates_nothing_and_refuses_what_would_not_fit(tmp_path):
    """3×20000×20000 (a 4.8 GB input): traced on fake tensors at the memory of a small one;
    fvcore's real count is refused in one line instead of the OS killing the process."""
    import subprocess
    import sys

    script = (
        "import resource, sys\n"
        "from cubesearch.cli import main\n"
        f"args = ['sites', {str(TINY_SRC)!r}, '--input-size', '3x20000x20000', '--json']\n"
        "codes = [main(args + ['--no-flops']), main(args)]\n"
        "print('CODES', *codes, 'PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,\n"
        "      file=sys.stderr)\n")
    env = {**__import__("os").environ, "CUBESEARCH_MEMORY_LIMIT": str(16 * 2**30)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    codes, peak = done.stderr.split("CODES")[-1].split("PEAK_KB")
    assert codes.split() == ["0", "1"], done.stderr[-3000:]
    sites = json.loads(done.stdout)
    assert len(sites["sites"]) == 5 and sites["sites"][0]["input_hw"] == [20000, 20000]
    assert int(peak) < 2.5 * 2**20, f"peak {int(peak) / 2**20:.1f} GB"  # the input alone is 4.8 GB
    line = [x for x in done.stderr.splitlines() if x.startswith("error: ")][-1]
    assert "counting FLOPs with fvcore at 1×3×20000×20000" in line and "--input-size" in line


# --- the Ray searcher's state is JSON: restoring never unpickles --------------------------------


def test_ray_searcher_state_is_json_and_a_pickle_is_not_loaded(tmp_path):
    import pickle

    pytest.importorskip("ray")
    from cubesearch.search.ray import CubeOptunaSearch

    def bare() -> CubeOptunaSearch:
        searcher = CubeOptunaSearch.__new__(CubeOptunaSearch)  # no Ray, no study: only save/restore
        searcher._experiment = str(tmp_path / "exp")
        return searcher

    first = bare()
    first._live, first._completed_trials, first._retries = {"t1": 3}, {"t0"}, {"t1": 1}
    first.save(str(tmp_path / "state"))
    assert json.loads((tmp_path / "state").read_text())["live"] == {"t1": 3}
    again = bare()
    again.restore(str(tmp_path / "state"))
    assert (again._live, again._completed_trials, again._retries) == ({"t1": 3}, {"t0"}, {"t1": 1})

    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    (tmp_path / "evil").write_bytes(pickle.dumps(Payload()))
    evil = bare()
    evil.restore(str(tmp_path / "evil"))
    assert not marker.exists() and evil._live == {}


def test_search_storage_error_is_masked_and_leaves_no_out(tmp_path, capsys):
    out = tmp_path / "search"
    code, stdout, err = run(capsys, "search", str(TINY_SRC), "--budget", "90%", "--space", "shared",
                            "--input-size", "3x32x32", "-o", str(out),
                            "--storage", "postgresql+psycopg2://user:hunter2@127.0.0.1:1/db")
    assert code == 1 and "hunter2" not in stdout + err and "user:***@" in error_line(err)
    assert not out.exists()


# --- the one atomic write and the one lock (cubesearch.core.helpers) ------------------------------------


def test_atomic_write_replaces_whole_files_and_leaves_nothing_on_error(tmp_path):
    import os

    from cubesearch.core.helpers import atomic_path, atomic_write

    target = tmp_path / "deep" / "plan.json"
    assert atomic_write(target, "one") == target and target.read_text() == "one"
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0o600
    with pytest.raises(RuntimeError, match="midway"), atomic_path(target) as tmp:
        assert tmp.parent == target.parent  # same folder: the rename is atomic
        tmp.write_text("half")
        raise RuntimeError("midway")
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["plan.json"]


def test_file_lock_excludes_another_process(tmp_path):
    import subprocess
    import sys

    from cubesearch.core.helpers import file_lock

    lock = tmp_path / "out" / ".lock"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')\n")
    with file_lock(lock):
        held = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True,
                              text=True, check=True).stdout.strip()
    free = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert (held, free) == ("held", "free")

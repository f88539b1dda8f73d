"""Store integrity under real-world accidents (issue 13): each test sets up the accident, then
asserts what the code does about it.

Foreign writer, orphan DataLoader workers and the aspect-ratio bomb run real processes;
the rest run in-process on the tiny project.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from PIL import Image

from helpers import REPO, TINY_CONFIG, build_demo_assets, deep_update, run_cli, write_config
from pipeline.cache import CacheError, CacheIncompleteError, CacheReader, finalize, open_cache
from pipeline.cache import store as store_module
from pipeline.config import CacheRef, ConfigError, load_config
from pipeline.data import BadImageError, MaskError
from pipeline.extract import extract

SEG = CacheRef("dino", "seg")
CLS = CacheRef("clip", "cls")
BIG = {"demo": {"datasets": {"seg": {"n_train": 48}}}, "extract": {"chunk_images": 4, "batch_size": 2}}
ARGS = ["extract", "--model", "dino", "--dataset", "seg", "--split", "train", "--no-progress"]


@pytest.fixture
def big_project(tmp_path, monkeypatch):
    build_demo_assets(tmp_path, deep_update(TINY_CONFIG, BIG))
    write_config(tmp_path, BIG)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _start(cwd: Path, extra: list[str] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *ARGS, *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _n_done(store: Path) -> int:
    try:
        return int(zarr.open_array(store / "done", mode="r")[:].sum())
    except Exception:  # not created yet, or mid-write
        return 0


def _wait_stopped(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Wait until every thread of ``proc`` is stopped (state T in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for stat in Path(f"/proc/{proc.pid}/task").glob("*/stat"):
            try:
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            except (FileNotFoundError, IndexError):
                continue  # a thread that just ended
        if states and all(state in "Tt" for state in states):
            return
        time.sleep(0.002)
    raise AssertionError(f"process {proc.pid} did not stop")


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"extraction ended before the test's moment: {proc.stderr.read()}")
        time.sleep(0.002)
    raise AssertionError("timed out")


# ---- 1. foreign writer ---------------------------------------------------------------
@pytest.mark.slow
def test_orphan_writer_of_a_deleted_store_stops_and_cannot_touch_its_successor(big_project, tmp_path):
    store = big_project / "cache" / "dino" / "seg" / "train.zarr"
    config2 = write_config(big_project, deep_update(BIG, {"extract": {"dtype": "float16"}}), name="config2.yaml")

    # part A (config 1) is writing; the user deletes the store and re-extracts with config 2
    a = _start(big_project)
    _wait_for(lambda: _n_done(store) >= 4, a)
    a.send_signal(signal.SIGSTOP)  # A is stalled (an orphan on a busy node), not dead
    _wait_stopped(a)  # SIGSTOP is asynchronous: a writer thread mid-way could still add a file
    try:
        import shutil

        shutil.rmtree(store)
        run_cli([*ARGS, "--config", str(config2)], big_project)
    finally:
        a.send_signal(signal.SIGCONT)
    out, err = a.communicate(timeout=180)

    # A resumes, finds the store is not the one it opened, and stops naming both configs
    assert a.returncode == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "was replaced while this process was writing it" in lines[0], err
    new_attrs = zarr.open_group(store, mode="r").attrs
    assert "config.yaml" in lines[0] and "config2.yaml" in lines[0] and new_attrs["config_hash"][:12] in lines[0]

    # the store equals an uninterrupted config-2 run, byte for byte
    ref = tmp_path / "reference"
    ref.mkdir()
    os.symlink(big_project / "resources", ref / "resources")
    (ref / "config2.yaml").write_text(config2.read_text())
    run_cli([*ARGS, "--config", "config2.yaml"], ref)
    expected = zarr.open_array(ref / "cache/dino/seg/train.zarr/acts", mode="r")[:]
    got = zarr.open_array(store / "acts", mode="r")[:]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))
    assert new_attrs["complete"] is True


def test_writer_check_names_both_configs(project):
    cfg = load_config("config.yaml")
    extract(cfg, SEG, "val", progress=False)
    path = cfg.store(SEG, "val")
    writer = store_module.StoreWriter.of(path, zarr.open_group(path, mode="r"))
    writer.check()  # the store it opened: fine
    (path / "zarr.json").write_text(
        json.dumps(
            {
                **json.loads((path / "zarr.json").read_text()),
                "attributes": {"config_hash": "f" * 64, "generation": "other", "config_file": "new.yaml"},
            }
        )
    )
    with pytest.raises(
        store_module.ForeignWriterError,
        match=r"config hash \w{12} from config.yaml.*config hash ffffffffffff from new.yaml",
    ):
        writer.check()
    import shutil

    shutil.rmtree(path)
    with pytest.raises(store_module.ForeignWriterError, match="it was deleted"):
        writer.check()


# ---- 2. orphan DataLoader workers ----------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_minus_nine_leaves_no_decode_worker(big_project):
    write_config(big_project, deep_update(BIG, {"extract": {"num_workers": 2}}))
    store = big_project / "cache" / "dino" / "seg" / "train.zarr"
    shm_before = set(os.listdir("/dev/shm"))
    proc = _start(big_project)
    _wait_for(lambda: _n_done(store) >= 4, proc)
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers  # the DataLoader workers are running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [w for w in workers if _running(w)]
    for w in survivors:  # do not leave them behind if the assertion fails
        os.kill(w, signal.SIGKILL)
    assert not survivors, f"decode workers outlived their parent: {survivors}"
    assert not (
        set(os.listdir("/dev/shm")) - shm_before - {n for n in os.listdir("/dev/shm") if not n.startswith("torch")}
    )


ORPHAN_SCRIPT = """
import os, sys, time
from pipeline.runtime import die_with_parent
parent = os.getpid()
if os.fork() == 0:  # a worker busy in its main thread (no chance to poll a queue)
    if sys.argv[1] == "fix":
        die_with_parent(parent)
    print(os.getpid(), flush=True)
    time.sleep(120)
    os._exit(0)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_die_with_parent_ends_a_busy_child_of_a_killed_parent():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for mode in ("no fix", "fix"):
        parent = subprocess.Popen(
            [sys.executable, "-c", ORPHAN_SCRIPT, mode.replace(" ", "")], stdout=subprocess.PIPE, text=True, env=env
        )
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + (3 if mode == "no fix" else 10)
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = _running(child)
        if alive:
            os.kill(child, signal.SIGKILL)
        assert alive == (mode == "no fix"), f"{mode}: child alive={alive}"  # the accident, then the fix


# ---- 3. finalize interrupted between its writes ------------------------------------------
def test_finalize_killed_before_declaring_complete_is_repaired(project, monkeypatch):
    cfg = load_config("config.yaml")
    path = cfg.store(SEG, "val")

    def killed(_path):
        raise KeyboardInterrupt("killed between consolidating and declaring complete")

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(store_module, "_declare_complete", killed)
        extract(cfg, SEG, "val", progress=False)
    assert "consolidated_metadata" in json.loads((path / "zarr.json").read_text())  # the first write landed
    repair = "python -m pipeline finalize --config 'config.yaml' --model dino --dataset seg --split val"
    for reader in (open_cache, CacheReader):
        with pytest.raises(CacheIncompleteError) as info:
            reader(path)
        assert repair in str(info.value)

    summary = finalize(path)  # the repair command's work
    assert summary["complete"] is True and open_cache(path).attrs["complete"] is True
    assert CacheReader(path).n_images == 12
    # a re-run of extract repairs it as well (all chunks done: it only finalizes)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(store_module, "_declare_complete", killed)
        finalize(path)
    with pytest.raises(CacheIncompleteError):
        open_cache(path)
    report = extract(cfg, SEG, "val", progress=False)
    assert report.chunks_computed == 0 and open_cache(path).attrs["complete"] is True


# ---- 4. leftovers and dead ends ------------------------------------------------------
def test_failed_creation_leaves_no_temp_folder_and_dead_ones_are_removed(project, monkeypatch):
    cfg = load_config("config.yaml")
    path = cfg.store(SEG, "val")
    path.parent.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{dead}")
    (stale / "acts").mkdir(parents=True)  # left by a process killed mid-creation

    real_skeleton = store_module._skeleton

    def disk_full(*args):
        ds, enc = real_skeleton(*args)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m, pytest.raises(OSError):
        m.setattr(store_module, "_skeleton", disk_full)
        extract(cfg, SEG, "val", progress=False)
    assert not stale.exists(), "the dead process's temp folder is removed"
    assert sorted(p.name for p in path.parent.iterdir()) == [], "the failed creation's temp folder is removed"
    extract(cfg, SEG, "val", progress=False)
    assert open_cache(path).attrs["complete"] is True


@pytest.mark.parametrize("stray", ["empty folder", "file"])
def test_stray_thing_at_the_store_path_says_what_to_delete(project, stray):
    cfg = load_config("config.yaml")
    path = cfg.store(SEG, "val")
    path.parent.mkdir(parents=True)
    path.mkdir() if stray == "empty folder" else path.write_text("oops")
    with pytest.raises(CacheError, match=rf"is an? {stray}, not an activation store.*delete it \(rm -r '{path}'\)"):
        extract(cfg, SEG, "val", progress=False)
    with pytest.raises(CacheError, match="rm -r"):
        open_cache(path)


def test_bad_image_in_the_batch_that_ends_a_chunk_keeps_that_chunk(project):
    # chunks of 4, batches of 3: the second batch holds image 3 (last of chunk 0) and image 4 (bad)
    cfg = load_config("config.yaml")
    from pipeline.extract import split_data

    data = split_data(cfg, "seg", "val")
    data.samples[4].image.write_bytes(b"not an image")
    with pytest.raises(BadImageError, match=data.samples[4].image.name):
        extract(cfg, SEG, "val", progress=False)
    done = zarr.open_array(cfg.store(SEG, "val") / "done", mode="r")[:]
    assert (
        done.tolist() == [True] * 4 + [False] * 8
    )  # chunk 0 was written, though its last image shared a batch with the culprit


# ---- 5. hostile inputs ----------------------------------------------------------------
BOMB_SCRIPT = """
import resource, sys, time
from pathlib import Path
from pipeline.data import BadImageError, load_rgb
t0 = time.perf_counter()
try:
    load_rgb(Path(sys.argv[1]))
    print("loaded")
except BadImageError as err:
    print("refused:", err)
print(time.perf_counter() - t0)
"""


def test_aspect_ratio_bomb_is_refused_within_bounds(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (1, 40000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 1000  # a few hundred bytes
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, str(bomb)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    verdict, seconds = proc.stdout.strip().splitlines()
    assert verdict.startswith("refused:") and str(bomb) in verdict and "10:1" in verdict, proc.stdout + proc.stderr
    assert float(seconds) < 1.0  # was 61 s (8.4 GB resized in full)
    assert rss_mb < 1500 or before / 1024 >= 1500  # the whole interpreter with torch; was > 8 GB
    # an image within the limit still loads
    Image.new("RGB", (10, 100)).save(tmp_path / "tall.png")
    from pipeline.data import load_rgb

    assert load_rgb(tmp_path / "tall.png").size == (10, 100)


def test_mask_label_beyond_the_class_count_fails_at_extraction(project):
    cfg = load_config("config.yaml")
    from pipeline.extract import split_data

    data = split_data(cfg, "seg", "val")
    mask = np.array(Image.open(data.samples[5].mask))
    mask[0, 0] = 200  # the dataset has classes 0..4
    Image.fromarray(mask).save(data.samples[5].mask)
    with pytest.raises(MaskError, match=rf"{data.samples[5].mask.name}.*label 200.*{data.n_classes} classes"):
        extract(cfg, SEG, "val", progress=False)
    done = zarr.open_array(cfg.store(SEG, "val") / "done", mode="r")[:]
    assert done.tolist() == [True] * 4 + [False] * 8  # nothing finalized, finished chunk kept


@pytest.mark.parametrize("name", ["..", "../escape", "a/b", "with space", ".hidden"])
def test_model_and_dataset_names_refuse_path_syntax(tmp_path, name):
    raw = deep_update(TINY_CONFIG, {})
    raw["models"][name] = raw["models"].pop("dino")
    raw["caches"] = [{"model": name, "dataset": "seg"}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="models"):
        load_config(path)
    raw = deep_update(TINY_CONFIG, {})
    raw["datasets"][name] = raw["datasets"].pop("seg")
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="datasets"):
        load_config(path)


# ---- 6. error contract: one `error:` line, exit 2 ------------------------------------------
def _one_error_line(capsys, argv: list[str], *, match: str) -> None:
    from pipeline.__main__ import main

    rc = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2, err
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err  # (progress bars may precede it)
    assert "Traceback" not in err and match in errors[0], err


EXTRACT = ["extract", "--model", "dino", "--dataset", "seg", "--split", "val", "--no-progress"]


@pytest.mark.parametrize(
    "case,overrides,extra,match",
    [
        ("missing ADE20K root", {"datasets": {"seg": {"root": "nowhere"}}}, [], "nowhere"),
        ("empty dataset", {"datasets": {"seg": {"root": "empty"}}}, [], "no images"),
        ("layer 99", {"extract": {"layers": [99]}}, [], "extract/layers [99]"),
        (
            "crop not a multiple of the patch size",
            {"models": {"dino": {"preprocess": {"crop": 50}}}},
            [],
            "not a multiple of the patch size",
        ),
        ("cuda without a GPU", {"device": "cuda"}, [], "device: cuda"),
        ("hub id offline", {"models": {"dino": {"source": "nobody-xyz/no-such-model"}}}, [], "offline?"),
        ("part out of range", {}, ["--part", "2", "--of", "2"], "--part 2 --of 2"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(project, capsys, monkeypatch, case, overrides, extra, match):
    if case == "cuda without a GPU":
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    if case == "hub id offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if case == "empty dataset":
        for sub in ("images", "annotations"):
            (project / "empty" / sub / "validation").mkdir(parents=True)
        (project / "empty" / "objectInfo150.txt").write_text(
            (project / "resources/data/seg/ADEChallengeData2016/objectInfo150.txt").read_text()
        )
    write_config(project, overrides)
    _one_error_line(capsys, EXTRACT + extra, match=match)


def test_cli_errors_for_missing_class_list_mask_and_full_disk(project, capsys, monkeypatch):
    seg = project / "resources" / "data" / "seg" / "ADEChallengeData2016"
    info = seg / "objectInfo150.txt"
    text = info.read_text()
    info.unlink()
    _one_error_line(capsys, EXTRACT, match="objectInfo150.txt")
    info.write_text(text)

    mask = sorted((seg / "annotations" / "validation").glob("*.png"))[3]
    mask.rename(mask.with_suffix(".bak"))
    _one_error_line(capsys, EXTRACT, match=mask.name)
    mask.with_suffix(".bak").rename(mask)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "cache/dino/seg/val.zarr/acts/c/0/0/0/0")

    monkeypatch.setattr(store_module, "write_chunk", full)
    monkeypatch.setattr("pipeline.extract.write_chunk", full)
    _one_error_line(capsys, EXTRACT, match="re-run the same command; it resumes")


def test_prepare_error_is_one_line(tmp_path, capsys):
    _one_error_line(
        capsys, ["prepare", "flowers102", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], match="nope"
    )


def test_a_store_replaced_after_the_last_chunk_write_is_not_finalized(project, monkeypatch):
    """The last check comes after the last chunk: a store replaced between it and finalize is
    refused (this part's chunks went to the deleted store), not finalized as if written."""
    import pipeline.extract as extract_module

    cfg = load_config("config.yaml")
    path = cfg.store(SEG, "val")
    real_run = extract_module._run

    def then_replaced(*args, **kwargs):
        real_run(*args, **kwargs)
        meta = json.loads((path / "zarr.json").read_text())
        meta["attributes"] = {**meta["attributes"], "generation": "other", "config_file": "new.yaml"}
        (path / "zarr.json").write_text(json.dumps(meta))

    monkeypatch.setattr(extract_module, "_run", then_replaced)
    with pytest.raises(store_module.ForeignWriterError, match="was replaced while this process was writing it"):
        extract(cfg, SEG, "val", progress=False)
    assert json.loads((path / "zarr.json").read_text())["attributes"].get("complete") is not True

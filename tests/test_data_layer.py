"""The shared data layer: archives read in place (safely), and the memory-mapped image cache."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from metagrad.errors import DataError
from metagrad.tasks import store
from metagrad.tasks.files import archive_files, load_data_pickle
from metagrad.tasks.store import cached_images, load_images


def make_tar(path: Path, entries: dict[str, bytes], links: dict[str, str] | None = None, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


ENTRIES = {"top/a/1.txt": b"one", "top/b/2.txt": b"two", "__MACOSX/top/._1.txt": b"junk", "top/.DS_Store": b"junk"}


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_archive_files_reads_regular_files_in_place(tmp_path, kind):
    path = (make_zip(tmp_path / "a.zip", ENTRIES) if kind == "zip"
            else make_tar(tmp_path / f"a.{kind}", ENTRIES, mode="w:gz" if kind == "tar.gz" else "w"))
    got = {"/".join(parts): read() for parts, read in archive_files(path)}
    assert got == {"top/a/1.txt": b"one", "top/b/2.txt": b"two"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing extracted


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
@pytest.mark.parametrize("entry", ["top/../../evil.txt", "/etc/evil.txt", "..\\evil.txt"])
def test_a_zip_slip_entry_refuses_the_archive(tmp_path, kind, entry):
    entries = {"top/a/1.txt": b"one", entry: b"evil"}
    path = make_zip(tmp_path / "a.zip", entries) if kind == "zip" else make_tar(tmp_path / "a.tar.gz", entries)
    with pytest.raises(DataError, match=f"unsafe entry .*refusing to read this archive"):
        list(archive_files(path))


def test_a_tar_link_refuses_the_archive(tmp_path):
    path = make_tar(tmp_path / "a.tar.gz", {"top/a/1.txt": b"one"}, links={"top/a/2.txt": "/etc/passwd"})
    with pytest.raises(DataError, match=r"'top/a/2.txt' is a link or device, not a file"):
        list(archive_files(path))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_truncated_archive_is_one_line_naming_it(tmp_path, kind):
    big = {f"top/{i}.bin": os.urandom(20_000) for i in range(5)}
    path = make_zip(tmp_path / "a.zip", big) if kind == "zip" else make_tar(tmp_path / "a.tar.gz", big)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"^{path}: (not a readable zip or tar archive|corrupt)[^\n]*$"):
        for _, read in archive_files(path):
            read()


def test_not_an_archive_is_one_line(tmp_path):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"hello")
    with pytest.raises(DataError, match=r"x.tar.gz: not a readable zip or tar archive"):
        list(archive_files(path))


# --------------------------------------------------------------------------- the image cache


def pattern(out: np.ndarray) -> dict:
    out[:] = np.arange(out.size, dtype=np.int64).reshape(out.shape) % 251
    return {"classes": ["a", "b"], "labels": [0, 1] * (len(out) // 2)}


def test_cache_builds_once_then_maps_read_only(tmp_path):
    path, key = tmp_path / "c" / "x.cache", {"source": 1}
    images, meta = cached_images(path, key, (6, 1, 3, 3), pattern)
    assert meta == {"classes": ["a", "b"], "labels": [0, 1, 0, 1, 0, 1]}
    assert images.dtype == torch.uint8 and images.shape == (6, 1, 3, 3)
    assert torch.equal(images.flatten().long(), torch.arange(54) % 251)
    again, meta2 = cached_images(path, key, (6, 1, 3, 3), lambda out: pytest.fail("rebuilt a valid cache"))
    assert torch.equal(again, images) and meta2 == meta
    assert str(path) in Path("/proc/self/maps").read_text()  # mapped from the file, not read into memory
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.cache"]


def test_cache_is_rebuilt_for_another_key_or_a_damaged_file(tmp_path):
    path = tmp_path / "x.cache"
    cached_images(path, {"v": 1}, (4, 2), pattern)
    calls = []

    def counted(out):
        calls.append(1)
        return pattern(out)

    cached_images(path, {"v": 2}, (4, 2), counted)  # the source changed
    assert load_images(path, {"v": 1}) is None and load_images(path, {"v": 2}) is not None
    path.write_bytes(path.read_bytes()[:-3])  # truncated
    assert load_images(path, {"v": 2}) is None
    images, _ = cached_images(path, {"v": 2}, (4, 2), counted)
    path.write_bytes(b"garbage")
    cached_images(path, {"v": 2}, (4, 2), counted)
    assert len(calls) == 3 and images.shape == (4, 2)


def test_a_failed_build_leaves_nothing(tmp_path):
    def corrupt(out):
        out[0] = 7  # half-written...
        raise DataError("image 3 is corrupt")

    with pytest.raises(DataError, match="image 3 is corrupt"):
        cached_images(tmp_path / "cache" / "deep" / "x.cache", {"v": 1}, (4, 2), corrupt)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_cache_warns_in_one_line_and_builds_in_memory(tmp_path, monkeypatch, capsys):
    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(store, "atomic_write", refuse)
    images, meta = cached_images(tmp_path / "x.cache", {"v": 1}, (4, 2), pattern, what="CIFAR-100")
    assert images.shape == (4, 2) and meta["classes"] == ["a", "b"]
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("warning: could not write the CIFAR-100 cache") and "task.cache_dir" in err


def test_a_read_only_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    real_access = store.os.access
    monkeypatch.setattr(store.os, "access", lambda p, mode: False if Path(p) == shared else real_access(p, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    folder = store.default_cache_dir(shared)
    assert folder.parent == tmp_path / "user-cache" / "metagrad" / "preprocessed"
    assert store.default_cache_dir(tmp_path) == tmp_path


LIMITED = textwrap.dedent("""
    import resource, sys
    import torch
    from metagrad.tasks.images import EpisodeSampler, ImageClassDataset
    from metagrad.tasks.store import load_images

    def data_bytes():
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmData"))

    limit = data_bytes() + (128 << 20)  # the process may allocate 128 MiB more; the dataset is 4x that
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if sys.argv[2] == "copy":  # the control: reading the dataset into memory must fail
        import numpy
        numpy.fromfile(sys.argv[1], dtype=numpy.uint8)
    images, meta = load_images(sys.argv[1], {"v": 1})
    data = ImageClassDataset(images, torch.tensor(meta["labels"]), meta["classes"])
    sampler = EpisodeSampler(data, ways=5, shots=1, queries=1)
    for i in range(20):
        batch = sampler.sample(4, torch.Generator().manual_seed(i))
    ids = sampler.sample_indices(1, torch.Generator().manual_seed(0))[0]
    first_pixels = sampler.sample(1, torch.Generator().manual_seed(0)).support_x[0, :, 0, 0, 0]
    assert torch.equal((first_pixels * 255).round().long(), ids[0] % 251)  # each image's first pixel: its index mod 251
    print("sampled")
""")


def test_a_dataset_larger_than_the_memory_limit_still_samples(tmp_path):
    """512 MiB of images (a sparse file) sample episodes in a process allowed 128 MiB more memory."""
    n, side = 8192, 256  # 8192 images of 1x256x256 = 512 MiB
    path = tmp_path / "big.cache"

    def sparse(out):  # only each image's first pixel is written: the file stays sparse on disk
        out[:, 0, 0, 0] = np.arange(n) % 251
        return {"classes": [f"c{i}" for i in range(64)], "labels": [i % 64 for i in range(n)]}

    cached_images(path, {"v": 1}, (n, 1, side, side), sparse)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([sys.executable, "-c", LIMITED, str(path), "map"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "sampled" in ok.stdout, ok.stderr[-2000:]
    refused = subprocess.run([sys.executable, "-c", LIMITED, str(path), "copy"], capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "sampled" not in refused.stdout  # the limit is real


# --------------------------------------------------------------------------- dataset pickles


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_data_pickles_load_arrays_and_containers(protocol):
    data = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"fine_labels": [1, 2, 3], "mean": np.float64(0.5)}
    got = load_data_pickle(pickle.dumps(data, protocol=protocol), "batch")
    assert np.array_equal(got[b"data"], data[b"data"]) and got[b"fine_labels"] == [1, 2, 3] and got["mean"] == 0.5


def test_a_pickle_that_runs_code_is_refused_in_one_line(capfd):
    with pytest.raises(DataError, match=r"^evil.pkl: refusing to unpickle: it wants to run posix.system"):
        load_data_pickle(pickle.dumps({"x": RunsCode()}), "evil.pkl")
    assert "pwned" not in capfd.readouterr().out
    with pytest.raises(DataError, match=r"^bad.pkl: not a readable pickle"):
        load_data_pickle(b"\x80\x04garbage", "bad.pkl")

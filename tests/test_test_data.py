"""The tests' own data supply (omniglot_data.py): a fresh machine downloads the canonical
archives through metagrad's md5-checked download and rebuilds the small official sets."""

import hashlib
import io
import zipfile

import numpy as np
import pytest
from omniglot_data import SMALL_SETS, provide
from PIL import Image

from metagrad.errors import DataError
from metagrad.tasks import omniglot


def pixels(zf: zipfile.ZipFile) -> dict[str, np.ndarray]:
    """'Alphabet/character/image.png' -> pixels, for every PNG of the archive."""
    return {"/".join(i.filename.split("/")[1:]): np.asarray(Image.open(io.BytesIO(zf.read(i))))
            for i in zf.infolist() if i.filename.endswith(".png")}


def test_fresh_machine_downloads_and_rebuilds_the_small_sets(shared_data, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    for name in omniglot.MD5:  # a file:// mirror of the authors' folder; its md5 stands in for the canonical one
        data = (shared_data / "omniglot" / name).read_bytes()
        (served / name).write_bytes(data)
        monkeypatch.setitem(omniglot.MD5, name, hashlib.md5(data, usedforsecurity=False).hexdigest())
    monkeypatch.setenv("METAGRAD_OMNIGLOT_URL", served.as_uri() + "/")
    monkeypatch.setenv("METAGRAD_TEST_DATA", str(tmp_path / "fresh"))
    said = []
    root = provide(said.append)
    folder = root / "omniglot"
    assert root == tmp_path / "fresh" and len(said) == 4
    assert sorted(p.name for p in folder.iterdir()) == ["images_background.zip", "images_evaluation.zip", "original"]
    for name in SMALL_SETS:  # the same drawings as the official small sets, pixel for pixel
        with zipfile.ZipFile(folder / "original" / name) as ours, \
                zipfile.ZipFile(shared_data / "omniglot" / "original" / name) as official:
            a, b = pixels(ours), pixels(official)
            assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in b)
    assert provide(said.append) == root and len(said) == 4  # a second call finds everything


def test_no_data_and_no_network_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("METAGRAD_OMNIGLOT_URL", (tmp_path / "nowhere").as_uri() + "/")
    monkeypatch.setenv("METAGRAD_TEST_DATA", str(tmp_path / "fresh"))
    with pytest.raises(DataError) as err:
        provide(lambda text: None)
    message = str(err.value)
    assert "\n" not in message and "the tests need Omniglot: could not download" in message
    assert f"place images_background.zip in {tmp_path / 'fresh' / 'omniglot'}" in message
    assert "METAGRAD_TEST_DATA" in message

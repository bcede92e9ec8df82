"""The Omniglot files the tests read, wherever they come from.

In order: ``$METAGRAD_TEST_DATA``, else ``../shared/data`` beside the repository, else
metagrad's own data folder (``$METAGRAD_DATA``, else ``~/.cache/metagrad``). Missing canonical
archives are fetched by metagrad's md5-checked download; the two official small background
sets (``original/images_background_small{1,2}.zip``) are rebuilt from ``images_background.zip``
when missing: they hold the same drawings (pixel-identical) of five alphabets each.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

from metagrad.errors import DataError
from metagrad.io import atomic_write
from metagrad.tasks import omniglot
from metagrad.tasks.files import default_data_dir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL_SETS = {
    "images_background_small1.zip": ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"),
    "images_background_small2.zip": ("Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"),
}


def data_root() -> Path:
    """The folder that holds (or will hold) ``omniglot/`` for the tests."""
    if os.environ.get("METAGRAD_TEST_DATA"):
        return Path(os.environ["METAGRAD_TEST_DATA"]).expanduser()
    if (SHARED / "omniglot").is_dir():
        return SHARED
    return default_data_dir()


def _small_set(background: Path, dest: Path, alphabets: tuple[str, ...]) -> None:
    """Write the official small set of ``alphabets`` from the full background archive."""
    top = dest.stem

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(background) as src, zipfile.ZipFile(tmp, "w") as out:
            for info in src.infolist():
                parts = info.filename.split("/")
                if len(parts) == 4 and parts[1] in alphabets and parts[3].endswith(".png"):
                    out.writestr(f"{top}/{'/'.join(parts[1:])}", src.read(info))

    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, write)


def provide(say: Callable[[str], None]) -> Path:
    """Make sure the test files are there (download / rebuild as needed); return their root.

    Raises DataError with one line saying where to put the data when they cannot be obtained.
    """
    root = data_root()
    folder = root / "omniglot"
    try:
        for name in omniglot.MD5:
            if not (folder / name).is_file():
                say(f"downloading {name} into {folder} for the tests")
                omniglot.download_archive(name, folder)
        for name, alphabets in SMALL_SETS.items():
            if not (folder / "original" / name).is_file():
                say(f"writing original/{name} from images_background.zip")
                _small_set(folder / "images_background.zip", folder / "original" / name, alphabets)
    except (DataError, OSError) as e:
        raise DataError(f"the tests need Omniglot: {e} (or set METAGRAD_TEST_DATA to a folder that holds omniglot/)") from None
    return root

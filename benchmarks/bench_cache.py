"""What the image cache saves: building a task's datasets from the archives (decoding every image
into a fresh cache) against building them again from that cache (memory-mapped, no decoding).

    python benchmarks/bench_cache.py --data-dir ../shared/data [--image-size 28]

Uses Omniglot, the one benchmark whose files are here; every image task goes through the same
cache (store.py). Prints seconds for the first and the second build of the Vinyals train/val/test
datasets, and how many images each decoded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from unittest import mock

from metagrad.tasks import omniglot
from metagrad.tasks.omniglot import OmniglotConfig, omniglot_dataset


def build_all(cfg: OmniglotConfig) -> tuple[float, int]:
    """(seconds to build the three splits, images decoded on the way)."""
    decoded = 0
    real = omniglot.decode_archive

    def counting(zf, chars, path, out):
        nonlocal decoded
        decoded += out.shape[0] * out.shape[1]
        return real(zf, chars, path, out)

    start = time.perf_counter()
    with mock.patch.object(omniglot, "decode_archive", counting):
        for split in ("train", "val", "test"):
            omniglot_dataset(cfg, split)
    return time.perf_counter() - start, decoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--image-size", type=int, default=28)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cfg = OmniglotConfig(data_dir=args.data_dir, cache_dir=cache, image_size=args.image_size, download=False)
        first, first_decoded = build_all(cfg)
        second, second_decoded = build_all(cfg)
    print(json.dumps({"image_size": args.image_size, "first_build_s": round(first, 3), "first_decoded": first_decoded,
                      "second_build_s": round(second, 3), "second_decoded": second_decoded}))


if __name__ == "__main__":
    main()

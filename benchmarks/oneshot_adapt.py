"""Lake et al.'s one-shot challenge through `metagrad adapt`, on raw Omniglot PNGs.

For each of the 20 evaluation alphabets: 20 of its characters, the support image of each by one
drawer and the query image by another (drawing numbers _KK chosen at random per alphabet),
written as a user would have them (105x105 PNGs, dark ink on white) into
<tmp>/<alphabet>/{support/<char>/, query/<char>/}; then `metagrad adapt RUN --support ... --query
...` with no other flag, and the errors counted: 400 one-shot trials per repetition.

    python benchmarks/oneshot_adapt.py RUN --data-dir ../shared/data [--repeats 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import random
import tempfile
import zipfile
from pathlib import Path

from metagrad.cli import main


def write_runs(archive: Path, root: Path, rng: random.Random) -> list[Path]:
    """One folder per alphabet with support/ and query/ sub-folders; returns the folders."""
    with zipfile.ZipFile(archive) as zf:
        pngs = [n for n in zf.namelist() if n.endswith(".png")]
        by_alphabet: dict[str, dict[str, list[str]]] = {}
        for n in pngs:
            _, alphabet, char, _ = n.split("/")
            by_alphabet.setdefault(alphabet, {}).setdefault(char, []).append(n)
        runs = []
        for alphabet, chars in sorted(by_alphabet.items()):
            a, b = rng.sample(range(1, 21), 2)  # support drawer, query drawer
            for char in rng.sample(sorted(chars), 20):
                drawings = {int(n[-6:-4]): n for n in chars[char]}
                for part, kk in (("support", a), ("query", b)):
                    dest = root / alphabet / part / char / Path(drawings[kk]).name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(zf.read(drawings[kk]))
            runs.append(root / alphabet)
    return runs


def main_(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--data-dir", required=True, help="folder with omniglot/images_evaluation.zip")
    p.add_argument("--repeats", type=int, default=1, help="repetitions with other characters and drawers")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    errors = trials = 0
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            for folder in write_runs(Path(args.data_dir) / "omniglot" / "images_evaluation.zip", Path(tmp), rng):
                out = folder / "predictions.csv"
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                    code = main(["adapt", args.run, "--support", str(folder / "support"), "--query",
                                 str(folder / "query"), "--predictions", str(out)])
                if code != 0:
                    raise SystemExit(f"metagrad adapt failed on {folder.name}: {err.getvalue().strip()}")
                inverted = "inverting pixel values" in err.getvalue()
                rows = list(csv.DictReader(out.open()))
                wrong = sum(row["predicted"] != row["true"] for row in rows)
                errors, trials = errors + wrong, trials + len(rows)
                print(f"repeat {r} {folder.name:<30} {wrong:2d}/{len(rows)} wrong{'' if inverted else ' (not inverted!)'}")
    print(f"error rate {100 * errors / trials:.2f}% over {trials} one-shot trials "
          f"(20-way within one alphabet, two drawers, raw PNGs through metagrad adapt)")


if __name__ == "__main__":
    main_()

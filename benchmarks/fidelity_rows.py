"""Record one finished preset of gpu_fidelity.sh: add its row to RESULTS/fidelity.json and pack
its run's small files into RESULTS/<preset>.tar.gz (never the checkpoint or TensorBoard files).

    python benchmarks/fidelity_rows.py WORK PRESET RESULTS

WORK holds the run directory WORK/PRESET and the script's WORK/PRESET.{train.txt,eval.json,
eval.txt,wall_s}. The row: preset, wall_s, and where a checkpoint was saved, iterations run of
the preset's (share), training seconds; where the evaluation finished, its headline and results.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import torch

from metagrad.io import atomic_write, atomic_write_text

SMALL = {".json", ".jsonl", ".png", ".txt", ".csv"}


def row_of(work: Path, preset: str) -> dict:
    run = work / preset
    row = {"preset": preset, "wall_s": int((work / f"{preset}.wall_s").read_text())}
    ckpt = run / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
        planned = state["config"]["train"]["iterations"]
        row.update(iterations=state["iteration"], of_iterations=planned, share=round(state["iteration"] / planned, 4),
                   train_s=round(state["train_seconds"], 1))
    evaluation = work / f"{preset}.eval.json"
    text = evaluation.read_text().strip() if evaluation.is_file() else ""
    if text:
        e = json.loads(text)
        row.update(headline=e["headline"], metric=e["metric"], mean=e["mean"], ci95=e["ci95"], episodes=e["episodes"],
                   results={r["setting"]: [r["mean"], r["ci95"]] for r in e["results"]})
    else:
        row["error"] = f"no evaluation (see {preset}.train.txt and {preset}.eval.txt in {preset}.tar.gz)"
    return row


def pack(work: Path, preset: str, results: Path) -> None:
    files = [p for p in sorted((work / preset).rglob("*")) if p.is_file() and p.suffix in SMALL and "tb" not in p.parts]
    files += [p for p in sorted(work.glob(f"{preset}.*")) if p.is_file()]

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for f in files:
                tar.add(f, arcname=str(f.relative_to(work)))

    atomic_write(results / f"{preset}.tar.gz", write)


def main(work: str, preset: str, results: str) -> None:
    work_dir, out = Path(work), Path(results)
    row = row_of(work_dir, preset)
    pack(work_dir, preset, out)
    table = out / "fidelity.json"
    rows = [r for r in json.loads(table.read_text())["rows"] if r["preset"] != preset] if table.is_file() else []
    atomic_write_text(table, json.dumps({"rows": rows + [row]}, indent=2) + "\n")
    done = f"{row['iterations']}/{row['of_iterations']} iterations" if "iterations" in row else "no checkpoint"
    score = f"{row['metric']} {row['mean']:.4f} ± {row['ci95']:.4f}" if "mean" in row else row["error"]
    print(f"   {preset}: {done}, {row['wall_s']} s: {score} (row added to {table})")


if __name__ == "__main__":
    main(*sys.argv[1:4])

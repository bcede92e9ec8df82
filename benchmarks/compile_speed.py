"""Eager against compiled: one preset's meta-step (``step.MetaStep``, what ``metagrad train`` runs)
on the same real batches, alternating eager / ``train.compile=default`` twice in one process so
that a busy machine's drift shows as the spread between the pairs. Prints each pass's first step
(inductor compiles there), its mean time per step after that and the compile state
("whole graph" or "with graph breaks"):

    OMP_NUM_THREADS=1 python benchmarks/compile_speed.py PRESET [--data-dir DATA] [--set KEY=VALUE] [--steps 12]
"""

import argparse
import time

import torch
import torch._dynamo

from metagrad.build import build_learner, build_task
from metagrad.config import load_config
from metagrad.step import MetaStep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset")
    ap.add_argument("--data-dir", help="task.data_dir of presets that read files")
    ap.add_argument("--steps", type=int, default=12, help="batches per pass (the first one untimed)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.preset, [f"task.data_dir={args.data_dir}"] * bool(args.data_dir) + args.set)
    task = build_task(cfg, "train")
    batches = [task.sample(cfg.train.meta_batch, torch.Generator().manual_seed(i)) for i in range(args.steps)]
    for mode in ("off", "default", "off", "default"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        learner = build_learner(cfg, task)
        step = MetaStep(learner, torch.optim.Adam(learner.parameters(), 1e-3), compile=mode, log=print)
        start = time.perf_counter()
        step(batches[0], len(batches[0]))
        first = time.perf_counter() - start
        start = time.perf_counter()
        for batch in batches[1:]:
            stats = step(batch, len(batch))
        per_step = (time.perf_counter() - start) / (len(batches) - 1)
        state = getattr(step.objective, "state", "eager")
        print(f"compile={mode}: first step {first:.1f} s, then {per_step * 1000:.0f} ms per step "
              f"({state}; last loss {float(stats['loss']):.4f})", flush=True)


if __name__ == "__main__":
    main()

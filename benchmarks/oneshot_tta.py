"""Test-time shifts on Lake's one-shot challenge: does averaging over 1-pixel shifts help?

Loads a trained run, draws its test episodes (e.g. `oneshot-omniglot-lake`: 20-way 1-shot
within one evaluation alphabet) and compares the error of (a) the learner as it is, (b) each
support image given as 9 shots (itself shifted by -1/0/+1 px in each direction: what
`--set task.eval_augment=shifts` does in `metagrad eval`), (c) (b) plus the query's
log-probabilities summed over the same 9 shifts (`--set task.eval_augment=shifts_both`).

    OMP_NUM_THREADS=1 python benchmarks/oneshot_tta.py RUN --data-dir DATA [--episodes 300]
"""

import argparse

import torch

from metagrad.build import build_task
from metagrad.config import with_data_dir
from metagrad.evaluation import vote
from metagrad.tasks.images import SHIFTS, shifted_copies
from metagrad.train import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--episodes", type=int, default=300)
    args = p.parse_args()
    cfg, learner, _ = load_run(args.run, [])
    tasks = build_task(with_data_dir(cfg, args.data_dir), "test")
    learner.eval()
    gen = torch.Generator().manual_seed(123)
    wrong = {"as is": 0, "support shifted": 0, "support and query shifted": 0}
    trials = 0
    with torch.no_grad():
        for _ in range(args.episodes // 20):
            b = tasks.sample(20, gen)
            plain = learner.adapt(b.support_x, b.support_y)(b.query_x)
            model = learner.adapt(*shifted_copies(b.support_x, b.support_y))
            views = shifted_copies(b.query_x, b.query_y)[0]  # [B, 9Q, ...], shift by shift
            both = vote(model(views), len(SHIFTS))
            for key, logits in zip(wrong, (plain, model(b.query_x), both)):
                wrong[key] += int((logits.argmax(-1) != b.query_y).sum())
            trials += b.query_y.numel()
    for key, n in wrong.items():
        print(f"{key:<28} {100 * n / trials:.2f}% error over {trials} trials")


if __name__ == "__main__":
    main()

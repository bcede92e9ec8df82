"""Test-time shifts on Lake's one-shot challenge: does averaging over 1-pixel shifts help?

Loads a trained run, draws its test episodes (e.g. `oneshot-omniglot-lake`: 20-way 1-shot
within one evaluation alphabet) and compares the error of (a) the learner as it is, (b) each
support image given as 9 shots (itself shifted by -1/0/+1 px in each direction: what
`--set task.eval_augment=shifts` does in `metagrad eval`), (c) (b) plus the query's
log-probabilities summed over the same 9 shifts (`--set task.eval_augment=shifts_both`).

    OMP_NUM_THREADS=1 python benchmarks/oneshot_tta.py RUN --data-dir DATA [--episodes 300]
"""

import torch

from metagrad.evaluation import vote
from metagrad.tasks.images import SHIFTS, shifted_copies
from oneshot_run import draws, run_and_test_tasks


def main() -> None:
    args, learner, tasks = run_and_test_tasks(__doc__, 300)
    gen = torch.Generator().manual_seed(123)
    wrong = {"as is": 0, "support shifted": 0, "support and query shifted": 0}
    trials = 0
    with torch.no_grad():
        for n in draws(args.episodes, 20):
            b = tasks.sample(n, gen)
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

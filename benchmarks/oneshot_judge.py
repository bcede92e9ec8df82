"""A judge of a one-shot network's first candidates on Lake's challenge (paired).

``oneshot_errors.py`` found that most of a network's errors are near misses: the right character
is among its first two candidates in 95.75-96.06 % of trials, against 89.3-89.7 % first. This
trains a second network to choose among the first ``--k`` candidates of a trained run (the
ranker, frozen). The judge sees a query and one candidate's support drawing together, as the two
channels of one image ("2-channel" comparison, Zagoruyko & Komodakis 2015), so it can compare
the two strokes pixel by pixel from its first layer on, which the ranker's separate embeddings
cannot. Its architecture is the run's Conv-4 (the run's widths) with 2 input channels,
BatchNorm with running statistics (each pair scored by itself at test), the mean over the last
map and a linear layer to one logit.

``--rule residual``: a candidate's score is the ranker's log-probability plus the judge's logit,
in training and test, so the judge learns what the ranker misses. ``--rule standalone``: the
judge is trained on its own logits (cross-entropy over the ``k`` candidates, the ranker only
choosing them), and at test its log-probabilities over the ``k`` candidates are added to the
ranker's, as an ensemble member's are. Either way the trial's answer is the best of the ``k``
candidates. Training: the
run's own training episodes (its affine distortions, within-alphabet, 20-way 1-shot, 5 queries
a class), the ranker's first ``k`` candidates of every query with the right one put in last
place when it is missing, cross-entropy over the ``k`` scores, Adam at the run's lr halved at
every quarter. Test: the same test episodes as ``oneshot_errors.py`` (seed 12345), one trial at
a time (``learner.transductive=false``), no test-time views; the ranker alone, the ranker with
the judge, and the judge alone among the same candidates, on the same trials.

    OMP_NUM_THREADS=1 python benchmarks/oneshot_judge.py RUN --data-dir DATA [--rule standalone] [--k 3] [--episodes-train 1500]
"""

import json
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metagrad.build import build_task
from metagrad.config import with_data_dir
from metagrad.train import load_run
from oneshot_pretrain import EVAL
from oneshot_run import draws, run_and_test_tasks


class Judge(nn.Module):
    """pairs [P, 2C, H, W] (a query and a candidate stacked as channels) -> logits [P]."""

    def __init__(self, in_channels: int, widths: list[int]):
        super().__init__()
        layers, c = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features, self.out = nn.Sequential(*layers), nn.Linear(c, 1)

    def forward(self, pairs: Tensor) -> Tensor:
        return self.out(self.features(pairs).mean((-2, -1))).squeeze(-1)


def candidates(log_p: Tensor, query_y: Tensor, k: int, with_truth: bool) -> Tensor:
    """The ranker's first ``k`` classes of each query, [B, Q, k]; ``with_truth``: the right class
    in the last place where it is not among them."""
    top = log_p.topk(k, -1).indices
    if with_truth:
        missing = ~(top == query_y[..., None]).any(-1)
        top[..., -1] = torch.where(missing, query_y, top[..., -1])
    return top


def judge_logits(judge: Judge, support_x: Tensor, support_y: Tensor, query_x: Tensor, top: Tensor) -> Tensor:
    """The judge's logit [B, Q, k] of every query [B, Q, C, H, W] against the one support drawing
    [B, N, C, H, W] of each of its candidate classes ``top`` [B, Q, k] (1-shot)."""
    B, Q, k = top.shape
    batch = torch.arange(B)[:, None]
    by_class = support_x[batch, support_y.argsort(-1)]  # [B, N, C, H, W], row n: class n
    cand = by_class[batch[..., None], top]  # [B, Q, k, C, H, W]
    pairs = torch.cat([query_x[:, :, None].expand_as(cand), cand], dim=3)
    return judge(pairs.flatten(0, 2)).view(B, Q, k)


def ranker_log_p(ranker, b) -> Tensor:
    """The frozen ranker's log-probabilities [B, Q, N] of a task batch's queries."""
    with torch.no_grad():
        return ranker.adapt(b.support_x, b.support_y)(b.query_x).log_softmax(-1)


def combine(rule: str, log_p: Tensor, top: Tensor, judge: Tensor) -> Tensor:
    """Scores [B, Q, k] of the candidates ``top`` from the ranker's log-probabilities [B, Q, N]
    and the judge's logits [B, Q, k]."""
    return log_p.gather(-1, top) + (judge if rule == "residual" else judge.log_softmax(-1))


def train_judge(judge, ranker, episodes, n: int, k: int, rule: str, lr: float, gen: torch.Generator) -> float:
    """Train ``judge`` for ``n`` of ``episodes`` (meta-batch 1) on the frozen ranker's first ``k``
    candidates, Adam at ``lr`` halved at every quarter; returns the seconds it took."""
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, n // 4), gamma=0.5)
    judge.train()
    t, right, total = time.time(), torch.zeros(3), 0
    for step in range(1, n + 1):
        b = episodes.sample(1, gen)
        log_p = ranker_log_p(ranker, b)
        top = candidates(log_p, b.query_y, k, with_truth=True)
        j = judge_logits(judge, b.support_x, b.support_y, b.query_x, top)
        scores = combine(rule, log_p, top, j)
        target = (top == b.query_y[..., None]).float().argmax(-1)
        loss = F.cross_entropy((scores if rule == "residual" else j).flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        # the ranker's own choice is its first candidate (place 0)
        right += torch.stack([(target == 0).sum(), (j.argmax(-1) == target).sum(), (scores.argmax(-1) == target).sum()])
        total += target.numel()
        if step % 100 == 0 or step == n:
            ranker_, judge_, both = (100 * right / total).tolist()
            print(f"episode {step}/{n}: right among the {k} candidates: ranker {ranker_:.1f} %, judge {judge_:.1f} %, "
                  f"both {both:.1f} % ({time.time() - t:.0f} s)", flush=True)
            right, total = torch.zeros(3), 0
    return round(time.time() - t, 1)


def test(judge, ranker, tasks, episodes: int, ks: list[int], rule: str) -> dict:
    """Errors (%) of the ranker alone and, for each k, with the judge and of the judge alone."""
    judge.eval()
    gen = torch.Generator().manual_seed(12345)
    wrong = {"ranker": 0} | {f"{key} k={k}": 0 for k in ks for key in ("with judge", "judge alone", "best possible")}
    trials = 0
    with torch.no_grad():
        for n in draws(episodes, 10):
            b = tasks.sample(n, gen)
            log_p = ranker_log_p(ranker, b)
            wrong["ranker"] += int((log_p.argmax(-1) != b.query_y).sum())
            for k in ks:
                top = candidates(log_p, b.query_y, k, with_truth=False)
                j = judge_logits(judge, b.support_x, b.support_y, b.query_x, top)
                for key, s in (("with judge", combine(rule, log_p, top, j)), ("judge alone", j)):
                    wrong[f"{key} k={k}"] += int((top.gather(-1, s.argmax(-1, keepdim=True))[..., 0] != b.query_y).sum())
                wrong[f"best possible k={k}"] += int((~(top == b.query_y[..., None]).any(-1)).sum())
            trials += b.query_y.numel()
    return {"trials": trials} | {key: round(100 * w / trials, 2) for key, w in wrong.items()}


def main() -> None:
    def options(p):
        p.add_argument("--k", type=int, default=3, help="candidates the judge is trained to choose among")
        p.add_argument("--rule", choices=("residual", "standalone"), default="residual")
        p.add_argument("--test-k", type=int, nargs="+", default=[2, 3, 5])
        p.add_argument("--episodes-train", type=int, default=1500)
        p.add_argument("--seed", type=int, default=0)

    args, ranker, tasks = run_and_test_tasks(__doc__, 1000, EVAL, options)
    if not 2 <= args.k <= tasks.ways or any(not 2 <= k <= tasks.ways for k in args.test_k):
        raise SystemExit(f"--k {args.k} / --test-k {args.test_k}: allowed: 2 to {tasks.ways}")
    if args.episodes_train < 1:
        raise SystemExit(f"--episodes-train {args.episodes_train}: allowed: 1 or more")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cfg, _, _ = load_run(args.run, EVAL)
    episodes = build_task(with_data_dir(cfg, args.data_dir), "train")
    channels = tasks.sample(1, torch.Generator()).support_x.shape[2]
    judge = Judge(2 * channels, cfg.model.hp.block_widths())
    seconds = train_judge(judge, ranker, episodes, args.episodes_train, args.k, args.rule, cfg.train.lr,
                          torch.Generator().manual_seed(args.seed))
    t = time.time()
    results = test(judge, ranker, tasks, args.episodes, args.test_k, args.rule)
    print(json.dumps({"run": args.run, "args": vars(args), "train_seconds": seconds,
                      "test_seconds": round(time.time() - t, 1), "errors_percent": results}))


if __name__ == "__main__":
    main()

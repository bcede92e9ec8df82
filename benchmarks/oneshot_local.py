"""Training through a local-descriptor distance on Lake's one-shot challenge (paired).

``oneshot_testtime.py --compare local`` showed that a network trained for the mean of its last
feature map is best compared by that mean. This asks the other question: does a network trained
*through* a part-by-part comparison do better? A run of a Prototypical Network preset (e.g.
`oneshot-omniglot-lake-32`) gives the recipe (its training episodes, architecture, Adam at the
run's lr halved at every quarter); a fresh copy of its network is trained for ``--episodes-train``
of those episodes with the rule ``--rule``:

  mean    the run's own rule (the control): the last map max-pooled and averaged, then the
          squared Euclidean distance to the class prototype (``learner.distance=euclidean``)
  local   ``learner.distance=local`` (learners/protonet.py): the last block's map before its
          pool ([C, 4, 4] at 32 px) kept as 16 local descriptors, each matched to its nearest
          counterpart within ``--radius`` positions (0: the same position; 1: its 3x3
          neighbourhood, an image distortion model on features; 4 or more at 32 px: anywhere,
          as DN4 does), both ways
  relation  a learned comparator on the same local maps (Relation Networks, Sung et al. 2018,
          without BatchNorm in the comparator so that each trial is still scored by itself): the
          class's mean support map and the query's map, each through its own 3x3 conv to 64
          channels, added, ReLU, a 3x3 conv 64 -> 64, ReLU, the mean over positions, then 64 -> 8
          -> 1: the logit of that class (trained by the queries' cross-entropy, not Sung's MSE)
  local+relation  the local distance's logit plus the comparator's, so training starts from the
          local rule and the comparator learns what it misses

Every image is normalised with its episode's support statistics (``learner.transductive=false``),
in training and test, so each test drawing is scored by itself; scored without test-time views
on the same test episodes (seed 12345, as ``metagrad eval`` draws them) as ``oneshot_pretrain.py``.
(The 1,500-episode comparisons of 2026-12-06 ran with the script's own copy of the rule, commit
79ca767; this library version agrees on a 20-episode check: 29.25 against 29.00 % errors, one
trial of 400, float rounding of two ways to form squared distances.)

    OMP_NUM_THREADS=1 python benchmarks/oneshot_local.py RUN --data-dir DATA --rule local --radius 1
"""

import argparse
import json

import torch
from torch import Tensor, nn

from metagrad.build import build_learner, build_task
from metagrad.config import with_data_dir
from metagrad.learners.metric import n_ways, one_hot
from metagrad.learners.protonet import local_distances
from metagrad.train import load_run
from oneshot_pretrain import EVAL, score, train_episodes


class Comparator(nn.Module):
    """The relation rule's comparator: class maps [B, N, C, h, w] and query maps [B, Q, C, h, w] -> logits [B, Q, N].
    conv(concat(class, query)) is computed as conv_c(class) + conv_q(query), so each map is convolved once."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        self.of_class, self.of_query = nn.Conv2d(channels, width, 3, padding=1), nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.mix = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, classes: Tensor, queries: Tensor) -> Tensor:
        (B, N), Q = classes.shape[:2], queries.shape[1]
        a, b = self.of_class(classes.flatten(0, 1)), self.of_query(queries.flatten(0, 1))
        x = (a.unflatten(0, (B, 1, N)) + b.unflatten(0, (B, Q, 1))).relu().flatten(0, 2)  # [B*Q*N, width, h, w]
        return self.out(self.mix(x).relu().mean((-2, -1))).view(B, Q, N)


def with_comparator(learner, channels: int, keep_local: bool):
    """``learner`` (a ProtoNet on local maps) classifying through a Comparator, plus its local rule's logits if ``keep_local``."""
    learner.comparator = Comparator(channels)

    def classify(zs: Tensor, support_y: Tensor, zq: Tensor) -> Tensor:
        onehot = one_hot(support_y, n_ways(support_y), zs.dtype)  # [B, S, N]
        classes = torch.einsum("bsn,bschw->bnchw", onehot / onehot.sum(1, keepdim=True), zs)
        logits = learner.comparator(classes, zq)
        return logits - local_distances(zs, support_y, zq, learner.radius) if keep_local else logits

    learner.classify = classify
    return learner


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--rule", choices=("mean", "local", "relation", "local+relation"), required=True)
    p.add_argument("--radius", type=int, default=1)
    p.add_argument("--episodes-train", type=int, default=1500)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name in ("episodes_train", "episodes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: allowed: 1 or more")
    if args.radius < 0:
        p.error(f"--radius {args.radius}: allowed: 0 or more")
    torch.set_num_threads(1)

    distance = ["learner.distance=euclidean"] if args.rule == "mean" else \
        ["learner.distance=local", f"learner.radius={args.radius}"]
    cfg, _, _ = load_run(args.run, EVAL + distance + [f"train.seed={args.seed}"])
    cfg = with_data_dir(cfg, args.data_dir)
    test, episodes = build_task(cfg, "test"), build_task(cfg, "train")
    learner = build_learner(cfg, test)  # a fresh network of the run's architecture, seeded by --seed
    if "relation" in args.rule:
        channels = learner.net.feature_maps(test.sample(1, torch.Generator()).support_x[0]).shape[1]
        learner = with_comparator(learner, channels, keep_local=args.rule == "local+relation")
    seconds = train_episodes(learner, episodes, args.episodes_train, cfg.train.lr, torch.Generator().manual_seed(args.seed))
    results = {"run": args.run, "args": vars(args), "train_seconds": seconds}
    score(results, "test", f"rule {args.rule}" + (f", radius {args.radius}" if "local" in args.rule else ""),
          learner, test, args.episodes)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

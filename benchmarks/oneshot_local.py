"""Training through a local-descriptor distance on Lake's one-shot challenge (paired).

``oneshot_testtime.py --compare local`` showed that a network trained for the mean of its last
feature map is best compared by that mean. This asks the other question: does a network trained
*through* a part-by-part comparison do better? A run of a Prototypical Network preset (e.g.
`oneshot-omniglot-lake-32`) gives the recipe (its training episodes, architecture, Adam at the
run's lr halved at every quarter); a fresh copy of its network is trained for ``--episodes-train``
of those episodes with the rule ``--rule``:

  mean    the run's own rule (the control): the last map max-pooled and averaged, then the
          squared Euclidean distance to the class prototype
  local   the last block's map before its pool ([C, 4, 4] at 32 px) kept as 16 local
          descriptors; each query descriptor matched to its nearest candidate descriptor within
          ``--radius`` positions (0: the same position; 1: its 3x3 neighbourhood, an image
          distortion model on features; inf: anywhere, as DN4 does) and back, the squared
          distances averaged over the positions of both directions (one shot per class)

Every image is normalised with its episode's support statistics (``learner.transductive=false``),
in training and test, so each test drawing is scored by itself; scored without test-time views
on the same test episodes (seed 12345, as ``metagrad eval`` draws them) as ``oneshot_pretrain.py``.

    OMP_NUM_THREADS=1 python benchmarks/oneshot_local.py RUN --data-dir DATA --rule local --radius 1
"""

import argparse
import json
import math

import torch

from metagrad.build import build_learner, build_task
from metagrad.config import with_data_dir
from metagrad.learners.protonet import ProtoNet
from metagrad.train import load_run
from oneshot_pretrain import EVAL, score, train_episodes
from oneshot_testtime import local_distances

#: layers of a Conv-4 embedding up to the last block's output before its pool (4 per block)
BEFORE_LAST_POOL = 15


class LocalProtoNet(ProtoNet):
    """One-shot classification by the local-descriptor distance. Its ``net`` gives feature maps
    [N, C, H, W]; classify(zs [B, N, C, H, W], support_y [B, N], zq [B, Q, C, H, W]) -> [B, Q, N]."""

    def __init__(self, maps: torch.nn.Module, executor: str, transductive: bool, radius: float):
        super().__init__(maps, executor, transductive)
        self.radius = radius

    def classify(self, zs, support_y, zq):
        order = support_y.argsort(1)  # one support drawing per class: candidates in label order
        fs = zs.gather(1, order.view(*order.shape, 1, 1, 1).expand_as(zs))
        return -local_distances(fs, zq, self.radius, normalise=False) / (2 * zs.shape[-1] * zs.shape[-2])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--rule", choices=("mean", "local"), required=True)
    p.add_argument("--radius", type=float, default=math.inf)
    p.add_argument("--episodes-train", type=int, default=1500)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name in ("episodes_train", "episodes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: allowed: 1 or more")
    if args.radius < 0:
        p.error(f"--radius {args.radius}: allowed: 0 or more (inf: anywhere)")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    cfg, _, _ = load_run(args.run, EVAL + [f"train.seed={args.seed}"])
    cfg = with_data_dir(cfg, args.data_dir)
    if cfg.task.hp.shots != 1 or cfg.model.name != "conv4":
        p.error(f"{args.run}: needs a 1-shot Conv-4 run, got {cfg.task.hp.shots} shots of {cfg.model.name}")
    test, episodes = build_task(cfg, "test"), build_task(cfg, "train")
    learner = build_learner(cfg, test)  # a fresh network of the run's architecture, seeded by --seed
    if args.rule == "local":
        learner = LocalProtoNet(learner.net.features[:BEFORE_LAST_POOL], learner.executor, learner.transductive,
                                args.radius)
    seconds = train_episodes(learner, episodes, args.episodes_train, cfg.train.lr, torch.Generator().manual_seed(args.seed))
    results = {"run": args.run, "args": vars(args), "train_seconds": seconds}
    score(results, "test", f"rule {args.rule}" + (f", radius {args.radius}" if args.rule == "local" else ""),
          learner, test, args.episodes)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

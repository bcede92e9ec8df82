"""Test-time fine-tuning on Lake's one-shot challenge: does tuning a trained ProtoNet's embedding
on each task's 20 support images help?

Per test episode, a copy of the network takes Adam steps on a self-supervised loss: random
affine distortions (Koch et al.'s, ``--views`` per image) of every support image must be
classified to the prototype of the image they came from. The query error is read after each
number of steps in ``--steps`` (0 = the network as trained), with the support as is and with
its 1-pixel shifts (``task.eval_augment=shifts``).

    OMP_NUM_THREADS=1 python benchmarks/oneshot_finetune.py RUN --data-dir DATA --lr 1e-4 --steps 0 5 20
"""

import argparse
import copy

import torch
import torch.nn.functional as F

from metagrad.learners.protonet import prototype_logits
from metagrad.tasks.images import random_affine_maps, shifted_copies, warp
from oneshot_run import run_and_test_tasks


def query_errors(net, sx, sy, qx, qy) -> int:
    """Wrong queries of one task. sx [S, ...], sy [S], qx [Q, ...], qy [Q]."""
    with torch.no_grad():
        z = net(torch.cat([sx, qx]))
        logits = prototype_logits(z[None, : len(sx)], sy[None], z[None, len(sx) :])[0]
    return int((logits.argmax(-1) != qy).sum())


def main() -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--steps", type=int, nargs="+", default=[0, 5, 20])
        p.add_argument("--lr", type=float, default=1e-4)
        p.add_argument("--views", type=int, default=4)

    args, learner, tasks = run_and_test_tasks(__doc__, 50, options=options)
    gen, distortions = torch.Generator().manual_seed(123), torch.Generator().manual_seed(7)
    wrong = {(t, s): 0 for t in args.steps for s in ("as is", "shifted")}
    trials = 0
    for _ in range(args.episodes):
        b = tasks.sample(1, gen)
        sx, sy, qx, qy = b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0]
        shifted_x, shifted_y = (t[0] for t in shifted_copies(b.support_x, b.support_y))
        net = copy.deepcopy(learner.net).train()  # BatchNorm on the batch's statistics, as in the learner
        opt = torch.optim.Adam(net.parameters(), lr=args.lr)
        done = 0
        for target in sorted(args.steps):
            for _ in range(target - done):
                views = warp(sx.repeat(args.views, 1, 1, 1), random_affine_maps(args.views * len(sx), distortions))
                z = net(torch.cat([sx, views]))
                logits = prototype_logits(z[None, : len(sx)], sy[None], z[None, len(sx) :])[0]
                opt.zero_grad()
                F.cross_entropy(logits, sy.repeat(args.views)).backward()
                opt.step()
            done = target
            wrong[target, "as is"] += query_errors(net, sx, sy, qx, qy)
            wrong[target, "shifted"] += query_errors(net, shifted_x, shifted_y, qx, qy)
        trials += len(qy)
    for (steps, support), n in wrong.items():
        print(f"lr {args.lr:g}, {steps:>3} steps, support {support:<8} {100 * n / trials:.2f}% error over {trials} trials")


if __name__ == "__main__":
    main()

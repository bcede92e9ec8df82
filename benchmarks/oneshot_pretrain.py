"""Whole-class pre-training against episodic training on Lake's one-shot challenge (paired).

A run of a Prototypical Network preset (e.g. `oneshot-omniglot-lake-32`) gives the recipe: its
training images (every background character in four rotations, each rotation a class: 3,856
classes at 32x32, cut to their strokes, with the run's affine distortions) and its embedding
network. Instead of episodes, a fresh copy of that network with a linear head over all training
classes is trained as a plain classifier (cross-entropy over every class at once, as SimpleShot,
Wang et al. 2019, and RFS, Tian et al. 2020, do); the head is then dropped and the embedding used
as the run's was: nearest prototype by squared Euclidean distance, each test drawing scored by
itself (``learner.transductive=false``), no test-time views. Both the run's own network and the
pre-trained one are scored on the same test episodes (seed 12345, as ``metagrad eval`` draws them).

``--steps`` batches of ``--batch`` images (the run's 1,500 episodes of 120 images: 1,500 of 120),
Adam at ``--lr`` halved at every quarter of the steps (the preset's schedule). ``--head cosine``:
logits = s * cos(z, w_k) with a learned scale s (init 10) instead of the linear head.
``--then-episodes N``: the pre-trained network then trained as the run was, N of its training
episodes (meta-batch 1, Adam at ``--lr`` halved at every quarter; BatchNorm statistics from each
episode's support, as it is scored), and scored again (as Meta-Baseline, Chen et al. 2021,
fine-tunes a pre-trained classifier episodically).
``--run-test``: the final network also scored with the run's own test settings (its
``task.eval_augment``, e.g. the preset's one-pixel shifts of support and query, and its
BatchNorm setting, changed by any ``--test-set KEY=VALUE``), on ``train.test_tasks`` episodes, as
``metagrad train`` tests the run.
``--save FILE``: the final learner weights (``torch.save`` of its state_dict).

    OMP_NUM_THREADS=1 python benchmarks/oneshot_pretrain.py RUN --data-dir DATA --steps 1500 --batch 120
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from metagrad.build import build_learner, build_task
from metagrad.config import with_data_dir
from metagrad.evaluation import evaluate
from metagrad.step import MetaStep
from metagrad.tasks.images import as_float, random_affine_maps, warp
from metagrad.tasks.omniglot import omniglot_dataset
from metagrad.train import load_run

EVAL = ["task.eval_augment=none", "learner.transductive=false"]


def score(results: dict, key: str, title: str, learner, test, episodes: int, chunk: int = 0) -> None:
    """Score ``learner`` on the test episodes into ``results[key]`` and print its error rate."""
    t = time.time()
    e = results[key] = evaluate(learner.eval(), test, episodes=episodes, chunk=chunk)["adapted"].to_dict()
    print(f"{title}: {100 * (1 - e['mean']):.2f} ± {100 * e['ci95']:.2f} % errors ({time.time() - t:.0f} s)", flush=True)


def train_episodes(learner, episodes, n_episodes: int, lr: float, gen: torch.Generator) -> float:
    """Train ``learner`` on ``n_episodes`` of ``episodes`` (meta-batch 1) by the training loop's own
    step, Adam at ``lr`` halved at every quarter, printing the training accuracy every 100; returns
    the seconds it took."""
    opt = torch.optim.Adam(learner.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, n_episodes // 4), gamma=0.5)
    meta_step = MetaStep(learner, opt)
    learner.train()
    t, acc, n = time.time(), 0.0, 0
    for step in range(1, n_episodes + 1):
        acc += float(meta_step(episodes.sample(1, gen), 1)["accuracy"])
        sched.step()
        n += 1
        if step % 100 == 0 or step == n_episodes:
            print(f"episode {step}/{n_episodes}: training accuracy {100 * acc / n:.1f} % ({time.time() - t:.0f} s)", flush=True)
            acc, n = 0.0, 0
    return round(time.time() - t, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=120)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--head", choices=("linear", "cosine"), default="linear")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--then-episodes", type=int, default=0)
    p.add_argument("--run-test", action="store_true")
    p.add_argument("--test-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--save", default=None)
    p.add_argument("--skip-baseline", action="store_true")
    args = p.parse_args()
    for name, least in (("steps", 1), ("batch", 1), ("episodes", 1), ("then_episodes", 0)):
        if getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: allowed: {least} or more")
    torch.set_num_threads(1)

    cfg, trained, _ = load_run(args.run, EVAL + [f"train.seed={args.seed}"])
    cfg = with_data_dir(cfg, args.data_dir)
    test = build_task(cfg, "test")
    results = {"run": args.run, "args": vars(args)}
    if not args.skip_baseline:
        score(results, "episodic", "the run's own network", trained, test, args.episodes)

    data = omniglot_dataset(cfg.task.hp, "train")
    learner = build_learner(cfg, test)  # a fresh network of the run's architecture, seeded by --seed
    net = learner.net
    with torch.no_grad():
        dim = net(as_float(data.images[:2])).shape[-1]
    head = torch.nn.Linear(dim, data.n_classes)
    scale = torch.nn.Parameter(torch.tensor(10.0))
    params = list(net.parameters()) + list(head.parameters()) + ([scale] if args.head == "cosine" else [])
    opt = torch.optim.Adam(params, lr=args.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, args.steps // 4), gamma=0.5)
    gen = torch.Generator().manual_seed(args.seed)
    affine = cfg.task.hp.augment == "affine"
    net.train()
    t, correct, seen, loss_sum = time.time(), 0, 0, 0.0
    order = torch.randperm(len(data), generator=gen)
    at = 0
    for step in range(1, args.steps + 1):
        if at + args.batch > len(order):
            order, at = torch.randperm(len(data), generator=gen), 0
        ids = order[at : at + args.batch]
        at += args.batch
        x = as_float(data.images.index_select(0, ids))
        if affine:
            x = warp(x, random_affine_maps(len(x), gen))
        z = net(x)
        logits = head(z) if args.head == "linear" else scale * F.normalize(z, dim=-1) @ F.normalize(head.weight, dim=-1).T
        y = data.labels[ids]
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        correct += (logits.argmax(-1) == y).sum().item()
        seen += len(y)
        loss_sum += loss.item() * len(y)
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}: loss {loss_sum / seen:.3f}, training accuracy {100 * correct / seen:.1f} % "
                  f"({time.time() - t:.0f} s, epoch {step * args.batch / len(data):.2f})", flush=True)
            correct, seen, loss_sum = 0, 0, 0.0
    results["train_seconds"] = round(time.time() - t, 1)
    score(results, "pretrained", "pre-trained as a classifier", learner, test, args.episodes)
    if args.then_episodes:
        results["episodic_seconds"] = train_episodes(learner, build_task(cfg, "train"), args.then_episodes, args.lr, gen)
        score(results, "then_episodic", f"then {args.then_episodes} episodes", learner, test, args.episodes)
    if args.save:
        torch.save(learner.state_dict(), args.save)
    if args.run_test:
        own, trained_again, _ = load_run(args.run, args.test_set)
        own = with_data_dir(own, args.data_dir)
        trained_again.load_state_dict(learner.state_dict())
        score(results, "run_test", "with the run's own test settings", trained_again, build_task(own, "test"),
              own.train.test_tasks, own.train.eval_chunk)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

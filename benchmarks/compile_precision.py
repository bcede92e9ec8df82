"""How far the float32 meta-gradient is from float64, eager and compiled (``train.compile=default``).

One preset's meta-loss and its gradient on one real batch with the preset's initial weights:
in float32 eager, in float32 through inductor, and in float64 eager as the reference. Prints the
loss of each and the relative error ‖g − g64‖ / ‖g64‖ over all weights and per weight tensor
(eager, compiled):

    OMP_NUM_THREADS=1 python benchmarks/compile_precision.py PRESET [--data-dir DATA] [--set KEY=VALUE]
"""

import argparse

import torch

from metagrad.build import build_learner, build_task
from metagrad.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset")
    ap.add_argument("--data-dir", help="task.data_dir of presets that read files")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.preset, [f"task.data_dir={args.data_dir}"] * bool(args.data_dir) + args.set)
    task = build_task(cfg, "train")
    batch = task.sample(cfg.train.meta_batch, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    learner = build_learner(cfg, task)

    def loss_and_grad(objective, b):
        learner.zero_grad()
        loss = objective(b)[0]
        loss.backward()
        return loss.item(), [p.grad.detach().double().clone() for p in learner.parameters()]

    runs = {"eager float32": loss_and_grad(learner.meta_loss, batch),
            "compiled float32": loss_and_grad(torch.compile(learner.meta_loss), batch)}
    learner.double()
    loss64, g64 = loss_and_grad(learner.meta_loss, batch.to(dtype=torch.float64))
    flat64 = torch.cat([g.flatten() for g in g64])
    print(f"float64 eager: loss {loss64:.7f}")
    for name, (loss, g) in runs.items():
        err = (torch.cat([x.flatten() for x in g]) - flat64).norm() / flat64.norm()
        print(f"{name}: loss {loss:.7f}, gradient {100 * err:.3f} % from float64")
    for (pname, _), *gs in zip(learner.named_parameters(), *(g for _, g in runs.values()), g64):
        *ours, ref = gs
        if ref.norm() > 1e-6 * flat64.norm():  # not the conv biases before a BatchNorm (gradient 0 but for rounding)
            print(f"  {pname}: " + ", ".join(f"{100 * (x - ref).norm() / ref.norm():.3f} %" for x in ours))


if __name__ == "__main__":
    main()

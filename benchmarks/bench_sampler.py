"""Episodes per second of the Omniglot episode sampler (CPU, Vinyals train split, 28x28).

    python benchmarks/bench_sampler.py --data-dir ../shared/data --cache-dir /tmp/metagrad-cache

Times ``EpisodeSampler.sample`` (index drawing, image gather and uint8 -> float conversion)
for 5-way 1-shot and 20-way 5-shot tasks in meta-batches of ``--batch`` tasks.
"""

from __future__ import annotations

import argparse
import time

import torch

from metagrad.tasks.omniglot import OmniglotConfig, make_omniglot


def bench(data_dir, cache_dir, ways: int, shots: int, queries: int, batch: int, seconds: float) -> float:
    cfg = OmniglotConfig(ways=ways, shots=shots, queries=queries, data_dir=data_dir, cache_dir=cache_dir)
    source = make_omniglot(cfg, "train")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # warm-up
        source.sample(batch, g)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        source.sample(batch, g)
        n += 1
    return n * batch / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir", default=None, help="folder holding omniglot/ (default: $METAGRAD_DATA or ~/.cache/metagrad)"
    )
    p.add_argument("--cache-dir", default=None, help="preprocessed-tensor cache (default: beside the archives)")
    p.add_argument("--batch", type=int, default=32, help="tasks per meta-batch")
    p.add_argument("--queries", type=int, default=1, help="query images per class")
    p.add_argument("--seconds", type=float, default=3.0, help="time per setting")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for ways, shots in ((5, 1), (20, 5)):
        eps = bench(a.data_dir, a.cache_dir, ways, shots, a.queries, a.batch, a.seconds)
        print(
            f"omniglot {ways}-way {shots}-shot, {a.queries} query/class, B={a.batch}: "
            f"{eps:,.0f} episodes/s ({eps / a.batch:,.0f} meta-batches/s, {1e3 * a.batch / eps:.2f} ms per meta-batch)"
        )


if __name__ == "__main__":
    main()

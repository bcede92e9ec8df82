"""`metagrad bench`: meta-iterations per second and peak memory of MAML's meta-step, and
(``--learners``) of every registered learner's training iteration end to end.

On the CPU every configuration runs in a fresh subprocess (``python -m metagrad.bench --worker
SPEC``), so that its peak memory is its own: the process's peak resident set (``ru_maxrss``, which
only grows) after the timed steps, minus the peak before the first step (imports, model, data),
gives the meta-step's footprint. On CUDA the peak is ``torch.cuda.max_memory_allocated`` since a
reset, so configurations share one process, except compiled ones (a fresh process each). One iteration is
what the training loop does per step: ``step.MetaStep`` (zero grads, the meta-gradient chunk by
chunk, Adam) on a fixed synthetic batch of the right shape (data loading is benchmarked apart,
benchmarks/bench_sampler.py). A ``--learners`` row is instead the loop's whole iteration on a
preset of that learner (its quick one where there is one): draw the meta-batch from the
preset's own task source where the loop draws it (on the device when the source can move
there), move it to the device if it is not there, meta-step; its ``sample_ms_per_it`` is the
drawing and moving alone (on CUDA, their launch: the GPU's work lands in the meta-step's time).
Times are wall clock; on a shared CPU also read the CPU-time column and the load average that
the run records.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

GROUPS = ("omniglot", "sine", "chunk", "crossover", "compile", "incumbents", "learners")
#: libraries timed on the same workload when importable (never dependencies): name -> module
INCUMBENTS = {"higher": "higher", "learn2learn": "learn2learn"}


@dataclass(frozen=True)
class BenchConfig:
    """One measured setting. task "omniglot": Conv-4 (64 channels, stride 2: MAML's Omniglot model)
    on synthetic 1x28x28 images, N-way K-shot with ``queries`` per class; "sine": MLP 1-40-40-1,
    K = 10 support and 10 query points."""

    name: str
    group: str
    task: str
    meta_batch: int
    ways: int = 5
    shots: int = 1
    queries: int = 1
    inner_steps: int = 1
    first_order: bool = False
    executor: str = "vmap"  # vmap | loop | auto, or an incumbent library's name (INCUMBENTS)
    task_chunk: int = 0
    checkpoint_inner: bool = False
    compile: str = ""  # "", or a torch.compile mode: "default", "reduce-overhead"
    preset: str = ""  # group "learners": the preset whose training iteration is timed
    sets: tuple[str, ...] = ()  # its --set overrides
    data_dir: str = ""  # its task.data_dir, for tasks that read files


def _omniglot(group, ways, shots, order, steps, executor, meta_batch=32, task_chunk=0, checkpoint_inner=False, compile="") -> BenchConfig:
    name = f"omniglot-{ways}w{shots}s-{order}-{steps}step-{executor}" + (f"-b{meta_batch}" if meta_batch != 32 else "")
    name += (f"-chunk{task_chunk}" if task_chunk else "") + ("-recompute" if checkpoint_inner else "")
    name += f"-compile-{compile}" if compile else ""
    return BenchConfig(name, group, "omniglot", meta_batch, ways, shots, 1, steps, order == "fo", executor,
                       task_chunk, checkpoint_inner, compile)


def configs() -> list[BenchConfig]:
    out = []
    for order in ("so", "fo"):
        for steps in (1, 5):
            for ex in ("vmap", "loop"):
                out.append(_omniglot("omniglot", 5, 1, order, steps, ex))
    for order in ("so", "fo"):
        for ex in ("vmap", "loop"):
            out.append(BenchConfig(f"sine-{order}-1step-{ex}", "sine", "sine", 25, first_order=order == "fo", executor=ex))
    for chunk in (16, 8, 4):
        out.append(_omniglot("chunk", 5, 1, "so", 5, "vmap", task_chunk=chunk))
    out.append(_omniglot("chunk", 5, 1, "so", 5, "vmap", checkpoint_inner=True))
    for ways, shots, batch in ((20, 1, 16), (5, 5, 32), (20, 5, 16)):
        for ex in ("vmap", "loop"):
            out.append(_omniglot("crossover", ways, shots, "so", 1, ex, meta_batch=batch))
    for mode in ("default", "reduce-overhead"):
        out.append(_omniglot("compile", 5, 1, "so", 1, "vmap", compile=mode))
        out.append(BenchConfig(f"sine-so-1step-vmap-compile-{mode}", "compile", "sine", 25, compile=mode))
    for lib in INCUMBENTS:
        out.append(_omniglot("incumbents", 5, 1, "so", 1, lib))
        out.append(BenchConfig(f"sine-so-1step-{lib}", "incumbents", "sine", 25, executor=lib))
    return out


def learner_presets() -> dict[str, str]:
    """Registered learner -> the preset that times it: of its presets that resolve without the
    user's --set (a user folder's path), a "-quick" one, else a 5-way 1-shot one, one on small
    images (at most CIFAR's 32 px) before one on large images (84-px ImageNet benchmarks, whose
    files a user brings), else the first by name."""
    from .config import load_config, preset_names
    from .errors import ConfigError
    from .registry import LEARNERS

    found: dict[str, list[tuple]] = {}
    for name in preset_names():
        try:
            cfg = load_config(name)
        except ConfigError:  # needs the user's --set, e.g. --data folder:PATH
            continue
        rank = (not name.endswith("quick"), "5w1s" not in name, getattr(cfg.task.hp, "image_size", 0) > 32, name)
        found.setdefault(cfg.learner.name, []).append(rank)
    return {learner: min(found[learner])[-1] for learner in LEARNERS.names() if learner in found}


def learner_configs(names: str, sets: tuple[str, ...] = (), data_dir: str = "", compile: str = "") -> list[BenchConfig]:
    """Rows of group "learners" for ``names`` ("all" or comma-separated learner names)."""
    presets = learner_presets()
    wanted = list(presets) if names == "all" else names.split(",")
    unknown = [n for n in wanted if n not in presets]
    if unknown:
        raise ValueError(f"unknown learner {unknown[0]!r}; allowed: all, {', '.join(presets)}")
    return [BenchConfig(f"{n}:{presets[n]}" + (f"-compile-{compile}" if compile else ""), "learners", "preset", 0,
                        compile=compile, preset=presets[n], sets=tuple(sets), data_dir=data_dir) for n in wanted]


def time_steps(step, iters: int, warmup: int, dev) -> dict:
    """Run ``step(i)`` for i < warmup untimed, then ``iters`` times timed: speed, warm-up time and
    peak memory (CUDA: allocated since a reset, warm-up included, where CUDA graphs allocate their
    pool; CPU: the peak resident set and its growth over the run)."""
    import torch

    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    rss_before = _max_rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync()
    warmup_s = time.perf_counter() - t0
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(warmup, warmup + iters):
        step(i)
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {"its_per_s": iters / wall, "ms_per_it": 1000 * wall / iters, "cpu_ms_per_it": 1000 * cpu / iters,
              "warmup_s": warmup_s}
    if cuda:
        result["peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        result["peak_mb"], result["step_mb"] = _max_rss_mb(), max(0.0, _max_rss_mb() - rss_before)
    return result


def measure_preset(cfg: BenchConfig, device: str, iters: int, warmup: int) -> dict:
    """Time the training loop's iteration on ``cfg.preset`` (module doc)."""
    import torch

    from .build import build_learner, build_task
    from .config import load_config, reads_data_dir, with_data_dir
    from .step import MetaStep
    from .tasks.batch import place_source
    from .train import batch_to, iteration_generator, make_optimizer, seed_learner_rng

    run = load_config(cfg.preset, [*cfg.sets, f"train.compile={cfg.compile or 'off'}"])
    if cfg.data_dir and reads_data_dir(run):
        run = with_data_dir(run, cfg.data_dir)
    tc, dev, dtype = run.train, torch.device(device), getattr(torch, run.train.dtype)
    tasks, task_device = place_source(build_task(run, "train"), dev)  # drawn where the loop draws them
    learner = build_learner(run, tasks).to(dev, dtype)
    optimizer, _ = make_optimizer(tc, learner.parameters())
    step = MetaStep(learner, optimizer, tc.task_chunk, tc.grad_clip, compile=tc.compile, log=lambda m: None)
    sampling = {}  # iteration -> seconds drawing and moving its batch

    def iteration(i: int) -> None:
        t = time.perf_counter()
        batch = batch_to(tasks.sample(tc.meta_batch, iteration_generator(tc.seed, 0, i, task_device)), dev, dtype)
        sampling[i] = time.perf_counter() - t
        seed_learner_rng(tc.seed, 0, i)
        step(batch, tc.meta_batch)

    result = time_steps(iteration, iters, warmup, dev)
    timed = sum(s for i, s in sampling.items() if i >= warmup)
    return {**result, "sample_ms_per_it": 1000 * timed / iters, "meta_batch": tc.meta_batch, "auto_picks": "-"}


def incumbent_step(lib: str, model, loss, inner_lr: float, steps: int, first_order: bool, optimizer, batch):
    """One MAML meta-step written the way the incumbent library's users write it: a Python loop
    over tasks, each adapted with the library and back-propagated (the same maths as ours)."""
    import torch

    n = len(batch)
    if lib == "higher":
        import higher

        inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)

        def step():
            optimizer.zero_grad()
            for i in range(n):
                with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False, track_higher_grads=not first_order) as (fmodel, diffopt):
                    for _ in range(steps):
                        diffopt.step(loss(fmodel(batch.support_x[i]), batch.support_y[i]))
                    (loss(fmodel(batch.query_x[i]), batch.query_y[i]) / n).backward()
            optimizer.step()

        return step
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=first_order)

    def step():
        optimizer.zero_grad()
        for i in range(n):
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(loss(learner(batch.support_x[i]), batch.support_y[i]))
            (loss(learner(batch.query_x[i]), batch.query_y[i]) / n).backward()
        optimizer.step()

    return step


# --------------------------------------------------------------------------- one configuration


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(cfg: BenchConfig, device: str, iters: int, warmup: int) -> dict:
    """Time ``iters`` meta-steps after ``warmup`` ones (this process only; see run_in_subprocess)."""
    if cfg.preset:
        return measure_preset(cfg, device, iters, warmup)
    import torch

    from .learners.executors import resolve_executor
    from .learners.maml import MAML, MAMLConfig
    from .models.conv4 import Conv4, Conv4Config
    from .models.mlp import MLPConfig, make_mlp
    from .tasks.batch import TaskBatch
    from .tasks.sinusoid import Sinusoid
    from .step import MetaStep

    dev = torch.device(device)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if cfg.task == "sine":
        model, kind, inner_lr = make_mlp(MLPConfig(hidden=[40, 40]), (1,), 1), "regression", 0.01
        batch = Sinusoid().sample(cfg.meta_batch, g)
    else:
        model, kind, inner_lr = Conv4(Conv4Config(channels=64, downsample="stride"), 1, cfg.ways), "classification", 0.4
        s, q = cfg.ways * cfg.shots, cfg.ways * cfg.queries
        batch = TaskBatch(
            torch.rand(cfg.meta_batch, s, 1, 28, 28, generator=g),
            torch.arange(cfg.ways).repeat_interleave(cfg.shots).repeat(cfg.meta_batch, 1),
            torch.rand(cfg.meta_batch, q, 1, 28, 28, generator=g),
            torch.arange(cfg.ways).repeat_interleave(cfg.queries).repeat(cfg.meta_batch, 1),
        )
    incumbent = cfg.executor in INCUMBENTS
    hp = MAMLConfig(inner_lr=inner_lr, inner_steps=cfg.inner_steps, first_order=cfg.first_order,
                    executor="loop" if incumbent else cfg.executor, checkpoint_inner=cfg.checkpoint_inner)
    learner = MAML(hp, model, kind).to(dev)
    batch = batch.to(dev)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    if incumbent:
        from .learners.base import task_loss

        step = incumbent_step(cfg.executor, learner.model, lambda p, y: task_loss(kind, p, y), inner_lr,
                              cfg.inner_steps, cfg.first_order, optimizer, batch)
    else:
        meta_step = MetaStep(learner, optimizer, cfg.task_chunk, compile=cfg.compile or "off")

        def step():
            meta_step(batch, cfg.meta_batch)

    result = time_steps(lambda i: step(), iters, warmup, dev)
    return {**result, "auto_picks": resolve_executor("auto", (batch.support_x, batch.query_x), (0, 0))}


def measure_here(cfg: BenchConfig, device: str, iters: int, warmup: int) -> dict:
    """``measure`` in this process ({"error": ...} if it fails): on CUDA the peak memory of one
    configuration is its own (``reset_peak_memory_stats``), so eager ones need no fresh process."""
    import torch

    try:
        return measure(cfg, device, iters, warmup)
    except Exception as e:  # reported in the table, and as the exit status
        return {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
    finally:
        torch.cuda.empty_cache()


def run_in_subprocess(cfg: BenchConfig, device: str, iters: int, warmup: int, threads: int, timeout: float) -> dict:
    """``measure`` in a fresh interpreter; {"error": ...} if it fails or runs past ``timeout`` s."""
    spec = json.dumps({"config": dataclasses.asdict(cfg), "device": device, "iters": iters, "warmup": warmup, "threads": threads})
    try:
        done = subprocess.run([sys.executable, "-m", "metagrad.bench", "--worker", spec], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["(no output)"]
        return {"error": lines[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker(spec: str) -> None:
    import torch

    args = json.loads(spec)
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    config = BenchConfig(**{**args["config"], "sets": tuple(args["config"]["sets"])})
    print(json.dumps(measure(config, args["device"], args["iters"], args["warmup"])))


# --------------------------------------------------------------------------- the table


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def environment(device: str) -> dict:
    import torch

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.startswith("cuda"):
        env.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(torch.device(device)))
    return env


def speedups(rows: list[dict]) -> list[tuple[str, float]]:
    """(setting vs other, vmap its/s ÷ other its/s) for each setting measured with vmap and with
    the per-task loop or an incumbent library."""
    by_name = {r["name"]: r for r in rows if "its_per_s" in r}
    out = []
    for name, r in by_name.items():
        if "-vmap" not in name or "-vmap-" in name:
            continue
        for other in ("loop", *INCUMBENTS):
            o = by_name.get(name.replace("-vmap", f"-{other}"))
            if o is not None:
                out.append((f"{name.replace('-vmap', '')} vs {other}", r["its_per_s"] / o["its_per_s"]))
    return out


def format_table(rows: list[dict], env: dict) -> str:
    mem = "peak MB (step MB)" if not env["device"].startswith("cuda") else "peak alloc MB"
    lines = [f"{'configuration':<44} {'it/s':>8} {'ms/it':>9} {'cpu ms/it':>10} {mem:>18}  auto", "-" * 100]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:<44} FAILED: {r['error']}")
            continue
        m = f"{r['peak_mb']:.0f}" + (f" ({r['step_mb']:.0f})" if "step_mb" in r else "")
        lines.append(f"{r['name']:<44} {r['its_per_s']:>8.2f} {r['ms_per_it']:>9.1f} {r['cpu_ms_per_it']:>10.1f} {m:>18}  {r['auto_picks']}")
    pairs = speedups(rows)
    if pairs:
        lines += ["", "vmap speed-up over the per-task loop and the incumbents (its/s ratio):"]
        lines += [f"  {name:<40} {ratio:5.2f}x" for name, ratio in pairs]
    return "\n".join(lines)


def run(args) -> int:
    """Entry point of `metagrad bench` (arguments: see cli.py)."""
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    groups = set(args.groups.split(",")) if args.groups else {"omniglot", "sine", "chunk", "incumbents"}
    unknown = groups - set(GROUPS)
    if unknown:
        print(f"metagrad bench: unknown group {sorted(unknown)[0]!r}; allowed: {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    if args.list:
        for c in configs():
            print(f"{c.group:<10} {c.name}")
        return 0
    chosen = [c for c in configs() if c.group in groups - {"learners"}] if args.groups or not args.learners else []
    if args.learners:
        try:
            chosen += learner_configs(args.learners, tuple(args.set or ()), str(args.data_dir or ""))
        except ValueError as e:
            print(f"metagrad bench: --learners: {e}", file=sys.stderr)
            return 2
    chosen = [c for c in chosen if not args.only or any(p in c.name for p in args.only)]
    if not chosen:
        print("metagrad bench: no configuration matches; see `metagrad bench --list`", file=sys.stderr)
        return 2
    env = environment(device)
    env.update(threads=args.threads or torch.get_num_threads(), iters=args.iters, warmup=args.warmup, load_before=os.getloadavg())
    print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    missing = {lib for lib, module in INCUMBENTS.items() if importlib.util.find_spec(module) is None}
    if missing & {c.executor for c in chosen}:
        print(f"not installed, so not timed: {', '.join(sorted(missing))}", flush=True)
        chosen = [c for c in chosen if c.executor not in missing]
    rows = []
    for c in chosen:
        if args.same_process or (device.startswith("cuda") and not c.compile):
            r = {"name": c.name, "group": c.group, **measure_here(c, device, args.iters, args.warmup)}
        else:
            r = {"name": c.name, "group": c.group, **run_in_subprocess(c, device, args.iters, args.warmup, args.threads, args.timeout)}
        rows.append(r)
        tail = f"FAILED: {r['error']}" if "error" in r else f"{r['its_per_s']:.2f} it/s, {r['peak_mb']:.0f} MB"
        print(f"  {c.name}: {tail}", flush=True)
    env["load_after"] = os.getloadavg()
    print()
    print(format_table(rows, env))
    print(f"load average before {env['load_before']}, after {env['load_after']}")
    if args.results:
        from .io import atomic_write_text

        atomic_write_text(args.results, json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
        print(f"wrote {args.results}")
    return 1 if any("error" in r for r in rows) else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--groups", help=f"comma-separated groups (default: omniglot,sine,chunk,incumbents; all: {','.join(GROUPS)})")
    p.add_argument("--only", action="append", metavar="TEXT", help="keep configurations whose name contains TEXT (repeatable)")
    p.add_argument("--iters", type=int, default=5, help="timed meta-iterations per configuration (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed meta-iterations first (default 1; compilation happens here)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per configuration (default: torch's)")
    p.add_argument("--timeout", type=float, default=900, help="seconds before a configuration is abandoned")
    p.add_argument("--results", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    p.add_argument("--same-process", action="store_true", help="time every configuration in this process (quicker "
                   "to start; on the CPU the memory columns are then not each configuration's own)")
    p.add_argument("--learners", metavar="NAMES", help="time each learner's training iteration end to end on its quick "
                   "preset: all, or comma-separated learner names (alone, or with --groups)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override of every --learners preset (repeatable)")
    p.add_argument("--data-dir", help="task.data_dir of the --learners presets that read files (Omniglot)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        parser = argparse.ArgumentParser(prog="python -m metagrad.bench")
        add_arguments(parser)
        sys.exit(run(parser.parse_args()))

"""The meta-training loop — one loop for every learner.

    train_tasks -> the device (its ``to``, where it has one)
    for it in range(start, iterations):
        batch = train_tasks.sample(local meta-batch, generator seeded by (seed, rank, it), on that device)
        step(batch)                               # step.MetaStep: meta_loss per task chunk, all-reduce, optimizer
        log / validate / checkpoint               # rank 0 only

Seeding each iteration's task generator, and torch's global RNG that a learner may draw from
inside its meta-step (Reptile's inner mini-batches), from (seed, rank, iteration) makes a
resumed run draw exactly the tasks and mini-batches the uninterrupted run would have drawn.
On CUDA the tasks are drawn on the GPU by a CUDA generator, whose stream differs from a CPU
generator's for the same seed: the tasks depend on (seed, rank, iteration, device type), so a
run resumes bit for bit on the same kind of device (and is warned when it moves).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from .build import build_learner, build_task
from .checkpoint import (CHECKPOINT_NAME, MODEL_KEYS, TRAINING_KEYS, find_checkpoint, load_checkpoint, load_weights,
                         save_checkpoint)
from .config import Config, TrainConfig, resolve
from .distributed import DistContext, all_reduce_sum, broadcast_object, process_group
from .errors import ConfigError, DivergedError, MetagradError
from .evaluation import Estimate, evaluate
from .io import atomic_write_text
from .learners.base import MetaLearner
from .logger import MetricLogger
from .rundir import locked
from .step import MetaStep
from .tasks.batch import TaskBatch, TaskSpec, place_source
from .threads import use_threads

VAL_SEED = 1001
TEST_SEED = 2002


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA GPU is available; "
                          "add --set train.device=cpu (or auto: the GPU when there is one)")
    return device


def iteration_seed(seed: int, rank: int, iteration: int) -> int:
    return ((seed * 1_000_003 + iteration) * 1009 + rank) % (2**63)


def iteration_generator(seed: int, rank: int, iteration: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The task stream of one rank at one iteration, drawn on ``device``: the same seed on every
    device, but a CUDA generator's stream is not a CPU generator's."""
    return torch.Generator(device=device).manual_seed(iteration_seed(seed, rank, iteration))


def seed_learner_rng(seed: int, rank: int, iteration: int) -> None:
    """Seed torch's global RNG (every device; no host-device synchronisation) for the randomness a
    learner draws inside one meta-step, apart from the task stream's."""
    torch.manual_seed((iteration_seed(seed, rank, iteration) + 1) % (2**63))


def make_optimizer(cfg: TrainConfig, params) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
    optimizer = opt_cls([{"params": list(params)}], lr=cfg.lr)  # a group may be empty (e.g. k-NN on pixels)
    if cfg.lr_schedule == "step":
        factor = lambda it: cfg.lr_gamma ** (it // cfg.lr_step)  # noqa: E731
    elif cfg.lr_schedule == "linear":
        factor = lambda it: max(0.0, 1.0 - it / cfg.iterations)  # noqa: E731
    elif cfg.lr_schedule == "cosine":
        low = cfg.lr_min / cfg.lr
        factor = lambda it: low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(it / cfg.iterations, 1.0)))  # noqa: E731
    else:
        factor = lambda it: 1.0  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class StopNow(KeyboardInterrupt):
    """A second Ctrl-C: stop at once, without saving (the last checkpoint is kept)."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def duration_text(seconds: float) -> str:
    """A rough duration for a progress line: '40 s', '12 min', '3.4 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextmanager
def stop_at_iteration_end(log=print):
    """Make Ctrl-C (SIGINT) and SIGTERM (e.g. a scheduler stopping the job) a request to stop
    after the current iteration; yields a function that says whether one came. The loop then
    checkpoints. Deferring the stop keeps the signal out of half-done work (an optimizer step,
    a state_dict, a log line, a checkpoint write, a CUDA graph), so what is saved is always a
    real state of the run. A second Ctrl-C raises StopNow at once, saving nothing."""
    requested: list[int] = []

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise StopNow
        if not requested:
            log("\nstopping after this iteration to save a checkpoint (Ctrl-C again: stop now without saving)")
        requested.append(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield lambda: False
        return
    try:
        yield lambda: bool(requested)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def require_finite(learner: MetaLearner, values: dict[str, float], iteration: int, saved: int | None, ckpt: Path) -> None:
    """Raise DivergedError if a logged statistic or a learner tensor is NaN or infinite."""
    bad = next((f"the training {k} is {v}" for k, v in values.items() if not math.isfinite(v)), None)
    if bad is None:
        tensors = [t for t in learner.state_dict().values() if t.is_floating_point()]
        if tensors and not bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
            bad = "the learner's weights are not finite"
    if bad is not None:
        kept = f"{ckpt} keeps iteration {saved}" if saved is not None else "nothing was saved"
        raise DivergedError(f"training diverged by iteration {iteration}: {bad}; {kept}. "
                            "Try a lower train.lr or learner.inner_lr, or set train.grad_clip")


#: train settings that change speed or memory but not the mathematics; a resumed run may change them
RESUMABLE_CHANGES = ("iterations", "device", "threads", "task_chunk", "eval_chunk", "compile")


def _check_resume_config(cfg: Config, saved: dict) -> None:
    """A run directory may only be resumed with its own config (iterations may be extended, and
    the run moved to other hardware: see RESUMABLE_CHANGES)."""
    new, old = cfg.to_dict(), resolve(saved).to_dict()
    for key in RESUMABLE_CHANGES:
        new["train"].pop(key), old["train"].pop(key)
    for section in ("task", "model", "learner", "train"):
        if new[section] != old.get(section):
            raise ConfigError(
                f"the run directory holds a run with a different {section} config; resume it without "
                f"--preset/--set (only train.{', train.'.join(RESUMABLE_CHANGES)} may change), or choose another --out"
            )


def batch_to(batch: TaskBatch, device: torch.device, dtype: torch.dtype) -> TaskBatch:
    """Move a sampled batch to ``device``; a CPU -> CUDA copy goes through pinned memory so that
    it does not wait for the GPU to finish the previous iteration."""
    if device.type == "cuda" and not batch.support_x.is_cuda:
        batch = TaskBatch(*(t.pin_memory() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)))
    return batch.to(device, dtype)


def train(cfg: Config, run_dir: Path, progress: bool = True, log=print) -> dict:
    """Meta-train ``cfg`` in ``run_dir`` (resuming from its checkpoint if there is one).

    Launched by torchrun, every rank calls this with the same arguments: rank 0 alone reads and
    writes ``run_dir`` and sends the run's config and checkpoint to the other ranks.
    Returns the report: final test-set estimates per evaluation key, timing and paths.
    """
    with process_group(resolve_device(cfg.train.device)) as (ctx, device), ExitStack() as hold:
        return _train(cfg, Path(run_dir), ctx, device, progress, log, hold)


def saved_config(run_dir: Path) -> dict | None:
    """The raw config of the run in ``run_dir``: its config.json (written when each segment
    starts, after the resume check), else its checkpoint's; None for a new directory. Reading
    config.json first spares the CLI a second load of a large checkpoint; the training loop
    still checks the config against the checkpoint's."""
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (FileNotFoundError, NotADirectoryError):
        return load_checkpoint(run_dir)["config"] if (run_dir / CHECKPOINT_NAME).exists() else None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{run_dir / 'config.json'} is not a readable config ({e}); choose another --out") from None


def _resume_state(cfg: Config, run_dir: Path, ctx: DistContext, hold: ExitStack) -> tuple[Config, dict | None]:
    """Lock ``run_dir`` on rank 0 (held by ``hold``) and check that ``cfg`` is its run's config.
    Returns (config, checkpoint or None) as rank 0 sees them on every rank; rank 0's error on
    every rank."""
    shared = None
    if ctx.is_main:
        try:
            hold.enter_context(locked(run_dir))
            ckpt_path = run_dir / CHECKPOINT_NAME
            state = load_checkpoint(ckpt_path, require=TRAINING_KEYS) if ckpt_path.exists() else None
            saved = state["config"] if state is not None else saved_config(run_dir)
            if saved is not None:
                _check_resume_config(cfg, saved)
            shared = (cfg.to_dict(), state)
        except MetagradError as e:
            shared = e
    shared = broadcast_object(shared, ctx)
    if isinstance(shared, Exception):
        raise shared
    raw, state = shared
    return (cfg if ctx.is_main else resolve(raw)), state


def _train(cfg: Config, run_dir: Path, ctx: DistContext, device: torch.device, progress: bool, log,
           hold: ExitStack) -> dict:
    ckpt_path = run_dir / CHECKPOINT_NAME
    cfg, state = _resume_state(cfg, run_dir, ctx, hold)
    tc = cfg.train
    dtype = getattr(torch, tc.dtype)
    main_log = log if ctx.is_main else (lambda message: None)  # rank 0 speaks for all ranks
    if tc.meta_batch < ctx.world:
        raise ConfigError(f"train.meta_batch={tc.meta_batch} is less than the {ctx.world} processes; use at least one task per process")

    train_tasks, val_tasks = build_task(cfg, "train"), build_task(cfg, "val")
    for note in getattr(train_tasks, "notes", []):
        main_log(f"  note: {note}")
    if device.type == "cpu":
        threads, why = hold.enter_context(use_threads(tc.threads, train_tasks, ctx.local_tasks(tc.meta_batch)))
        main_log(f"  CPU threads: {threads} ({why})")
    train_tasks, task_device = place_source(train_tasks, device)  # where the meta-batches are drawn
    if task_device.type != device.type:
        main_log(f"  tasks: {type(train_tasks).__name__} cannot move to {device} (it has no to(device)); "
                 f"its tasks are drawn on the CPU and copied to {device} every iteration")
    learner = build_learner(cfg, train_tasks).to(device, dtype)
    task_spec = TaskSpec.of(train_tasks).to_dict()
    optimizer, scheduler = make_optimizer(tc, learner.parameters())
    start, seconds_before = 0, 0.0  # seconds_before: training time of earlier segments of a resumed run
    if state is not None:
        start, seconds_before = _restore(state, (learner, optimizer, scheduler), ckpt_path, ctx, task_device, main_log)
    step = MetaStep(learner, optimizer, tc.task_chunk, tc.grad_clip, ctx, tc.compile, log=main_log)

    saved_at = [start if state is not None else None]

    def checkpoint(iteration: int) -> None:
        require_finite(learner, {}, iteration, saved_at[0], ckpt_path)  # identical on every rank
        saved_at[0] = iteration
        if ctx.is_main:
            save_checkpoint(
                ckpt_path,
                {
                    "iteration": iteration,
                    "config": cfg.to_dict(),
                    "learner": learner.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "task_spec": task_spec,
                    "world_size": ctx.world,
                    "task_device": task_device.type,  # the tasks depend on it (module doc)
                    "train_seconds": seconds_before + time.time() - t0,
                },
            )

    def validate(iteration: int) -> dict[str, Estimate]:
        est = evaluate(learner, val_tasks, tc.eval_tasks, VAL_SEED, tc.eval_batch, device, dtype, ctx, chunk=tc.eval_chunk)
        if ctx.is_main:
            logger.log(iteration, "val", {k.replace(" ", "_"): e.mean for k, e in est.items()})
            if progress:
                say(f"  iteration {iteration}: validation {learner.headline}: {est[learner.headline].metric} "
                    f"{est[learner.headline]}")
        return est

    logger = None
    if ctx.is_main:
        cfg.save(run_dir / "config.json")
        logger = MetricLogger(run_dir, start, log=log)
    local = ctx.local_tasks(tc.meta_batch)
    t0 = time.time()
    # a bar on a terminal; elsewhere (a log file, a pipe) one line per log interval
    on_terminal = sys.stderr.isatty()
    bar = tqdm(total=tc.iterations, initial=start, disable=not (progress and ctx.is_main and on_terminal),
               unit="it", dynamic_ncols=True)
    say = (lambda text: bar.write(text, file=sys.stderr)) if not bar.disable else log
    done, step_seconds = start, 0.0  # step_seconds: this segment's meta-steps alone (no validation)
    logged, logged_seconds = start, 0.0  # the last train log row's iteration and step_seconds then
    try:
        with stop_at_iteration_end(main_log) as stop_requested:
            running: dict[str, torch.Tensor] = {}  # sums of this rank's stats; tensors until a log step
            for iteration in range(start, tc.iterations):
                t_step = time.perf_counter()
                generator = iteration_generator(tc.seed, ctx.rank, iteration, task_device)
                batch = batch_to(train_tasks.sample(local, generator), device, dtype)  # no copy when drawn on device
                seed_learner_rng(tc.seed, ctx.rank, iteration)
                stats = step(batch, tc.meta_batch)
                scheduler.step()
                step_seconds += time.perf_counter() - t_step
                done = iteration + 1
                for k, v in stats.items():
                    running[k] = running.get(k, 0.0) + v
                bar.update(1)
                if done % tc.log_every == 0 or done == tc.iterations:
                    n, logged = done - logged, done
                    window, logged_seconds = step_seconds - logged_seconds, step_seconds
                    keys = sorted(running)
                    # mean over iterations and over the whole meta-batch (ranks weighted by their tasks)
                    sums = all_reduce_sum(torch.stack([running[k] for k in keys]) * (local / tc.meta_batch), ctx)
                    values = dict(zip(keys, (sums / n).tolist()))
                    running = {}
                    require_finite(learner, values, done, saved_at[0], ckpt_path)
                    if ctx.is_main:
                        logger.log(done, "train", {**values, "lr": scheduler.get_last_lr()[0]})
                        shown = {k: f"{v:.3g}" for k, v in values.items() if k == "loss" or v != values.get("loss")}
                        bar.set_postfix(shown)  # (a regression's mse is its loss: shown once)
                        if progress and bar.disable:  # the speed of this log interval, not of the segment,
                            rate = n / window if window else 0.0  # so a first compiled step fades from it
                            left = (f", about {duration_text((tc.iterations - done) / rate)} left"
                                    if rate and done < tc.iterations else "")
                            say(f"  iteration {done}/{tc.iterations}: " + ", ".join(f"{k} {v}" for k, v in shown.items())
                                + f" ({rate:.3g} it/s{left})")
                if tc.eval_every and done % tc.eval_every == 0 and done < tc.iterations:
                    validate(done)
                if done % tc.checkpoint_every == 0 or done == tc.iterations:
                    checkpoint(done)
                if stop_requested():
                    raise KeyboardInterrupt
    except BaseException as e:  # a stop request, a second Ctrl-C, divergence, an error
        bar.close()
        try:
            if isinstance(e, KeyboardInterrupt) and not isinstance(e, StopNow):
                checkpoint(done)
        finally:
            if logger is not None:
                logger.close()
        raise
    bar.close()
    train_seconds = seconds_before + time.time() - t0

    validate(tc.iterations)
    timing = {
        "resumed_from": start,
        "train_seconds": round(train_seconds, 2),  # all segments, validation included
        "iterations_per_second": round((tc.iterations - start) / step_seconds, 3) if step_seconds else None,
    }
    return _test_and_report(cfg, learner, run_dir, ctx, device, dtype, progress, logger, timing)


def _restore(state: dict, parts: tuple, ckpt_path: Path, ctx: DistContext, task_device: torch.device,
             log) -> tuple[int, float]:
    """Load a checkpoint's (learner, optimizer, scheduler) states into ``parts`` and warn where the
    resumed run cannot draw the tasks an uninterrupted one would. Returns (iteration, train seconds)."""
    for part, key, what in zip(parts, ("learner", "optimizer", "scheduler"),
                               ("the configured model", "the optimizer", "the learning-rate schedule")):
        load_weights(part, state[key], ckpt_path, what)
    start = int(state["iteration"])
    log(f"resuming {ckpt_path.parent} from iteration {start}")
    if state.get("world_size", 1) != ctx.world:
        log(f"warning: this run was trained with {state.get('world_size', 1)} processes and resumes with "
            f"{ctx.world}: it continues correctly, but from iteration {start} on it draws other tasks than "
            "an uninterrupted run would (not bit-identical)")
    if state.get("task_device", "cpu") != task_device.type:
        log(f"warning: this run drew its tasks on the {state.get('task_device', 'cpu')} and now draws them on "
            f"the {task_device.type}, whose random stream differs: from iteration {start} on it draws other "
            "tasks than an uninterrupted run would (not bit-identical)")
    return start, float(state.get("train_seconds", 0.0))


def _test_and_report(cfg: Config, learner: MetaLearner, run_dir: Path, ctx: DistContext, device: torch.device,
                     dtype: torch.dtype, progress: bool, logger: MetricLogger | None, timing: dict) -> dict:
    """Evaluate the trained learner on ``train.test_tasks`` test tasks; rank 0 logs the estimates,
    writes report.json and the run's plots. Returns the report on every rank."""
    tc = cfg.train
    test_tasks = build_task(cfg, "test")
    est = evaluate(learner, test_tasks, tc.test_tasks, TEST_SEED, tc.eval_batch, device, dtype, ctx, progress,
                   tc.eval_chunk)
    report = {
        "run_dir": str(run_dir),
        "preset": cfg.preset,
        "iterations": tc.iterations,
        **timing,
        "device": str(device),
        "world_size": ctx.world,
        "headline": learner.headline,
        "trained_setting": learner.trained_setting,
        "test": {k: e.to_dict() for k, e in est.items()},
        "learner": learner.report(),
    }
    if ctx.is_main:
        logger.log(tc.iterations, "test", {k.replace(" ", "_"): e.mean for k, e in est.items()})
        logger.close()
        atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
        from .plots import make_run_plots

        report["plots"] = [str(p) for p in make_run_plots(run_dir, learner, test_tasks, device, dtype, cfg.task.hp)]
    return broadcast_object(report, ctx)


def load_run(path: Path, overrides: list[str] = (), map_location="cpu") -> tuple[Config, MetaLearner, dict]:
    """A run directory or checkpoint file -> (config, learner with trained weights, raw state)."""
    from .config import apply_overrides

    state = load_checkpoint(path, map_location=map_location, require=MODEL_KEYS)
    cfg = resolve(apply_overrides(state["config"], list(overrides)))
    learner = build_learner(cfg, TaskSpec(**state["task_spec"]))
    load_weights(learner, state["learner"], find_checkpoint(path))
    return cfg, learner, state

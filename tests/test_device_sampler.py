"""Episodes drawn on the generator's device (issue 14, "Episodes on the device").

Every task source draws with the generator it is given and creates its tensors on that
generator's device, so that on CUDA a whole meta-batch is drawn on the GPU with no host copy
and no host synchronisation. The CPU runs the same code and must still draw the tasks it drew
before (docs/results.md depends on them): the pinned values below were drawn by the sampling
code of commit 1aee471, before this change.
"""

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from metagrad import train as train_module
from metagrad.config import load_config
from metagrad.tasks.batch import place_source
from metagrad.tasks.images import EpisodeSampler, ImageClassDataset, random_affine_maps, random_subsets
from metagrad.tasks.quadratic import Quadratic, QuadraticConfig
from metagrad.tasks.sinusoid import Sinusoid, SinusoidConfig
from metagrad.train import iteration_generator, iteration_seed


def dataset(sizes, groups=None, sources=False) -> ImageClassDataset:
    """Classes of ``sizes`` images; image i is a 1x2x2 picture whose pixels are all i (so a batch
    shows which images it holds); optionally class groups and one source per image of a class."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    src = torch.cat([torch.arange(k) for k in sizes]) if sources else None
    return ImageClassDataset(images, labels, [f"c{c}" for c in range(len(sizes))], class_groups=groups, sources=src)


UNEVEN = [3, 5, 4, 6, 3, 4, 5]
MODES = {  # name -> (dataset, EpisodeSampler keywords)
    "plain": (lambda: dataset(UNEVEN), {}),
    "within_group": (lambda: dataset(UNEVEN, groups=list("aabbbbb")), {"within_group": True}),
    "shared_sources": (lambda: dataset([4] * 6, sources=True), {"shared_sources": True}),
    "both": (lambda: dataset([4] * 6, groups=list("abbbba"), sources=True), {"within_group": True, "shared_sources": True}),
    "affine": (lambda: dataset(UNEVEN), {"augment": "affine"}),
}


def image_ids(x: torch.Tensor) -> list:
    return x[..., 0, 0, 0].mul(255).round().long().tolist()


def tail(generator: torch.Generator) -> int:
    """A draw after the sampling: equal only if the sampling took exactly the same random numbers."""
    return torch.randint(2**62, (1,), generator=generator).item()


# Drawn by the sampling code of commit 1aee471 (before sampling followed the generator's device).
PINNED = {
    'subsets': ([[0, 4, 6, 1], [2, 5, 7, 0], [0, 6, 1, 5]], 2751222150843076122),
    'theta': ([[[1.0, 0.16393551858453792, 0.003908362305565711], [-0.26546577769633917, 1.1794530100929652, -0.006850788497709485]], [[1.0, -0.269062514373956, -0.006846024231816559], [-0.02816830645663275, 1.143610872718142, -0.03774633483407386]]], 4305104186945664371),
    'plain': ([[3, 2, 16], [17, 22, 18]], [[2, 0, 1], [1, 0, 2]], [[12, 0, 13, 1, 6, 7], [21, 19, 12, 13, 24, 20]], [[1, 0, 1, 0, 2, 2], [0, 2, 1, 1, 0, 2]], 2056508311061175676),
    'within_group': ([[21, 16, 9], [17, 10, 20]], [[2, 1, 0], [2, 0, 1]], [[14, 24, 10, 12, 11, 23], [11, 12, 16, 19, 9, 18]], [[1, 2, 0, 1, 0, 2], [0, 2, 2, 1, 0, 1]], 4328855478461369076),
    'shared_sources': ([[20, 4, 0], [21, 9, 13]], [[1, 2, 0], [1, 0, 2]], [[7, 3, 21, 23, 1, 5], [10, 12, 20, 22, 14, 8]], [[2, 0, 1, 1, 0, 2], [0, 2, 1, 1, 2, 0]], 1259457998350289943),
    'both': ([[13, 5, 9], [17, 5, 13]], [[2, 0, 1], [2, 1, 0]], [[15, 6, 11, 7, 14, 10], [6, 4, 16, 12, 18, 14]], [[2, 0, 1, 0, 2, 1], [1, 1, 2, 0, 2, 0]], 1026998079079248832),
    'affine': ([[2, 0, 1], [1, 0, 2]], [[1, 0, 1, 0, 2, 2], [0, 2, 1, 1, 0, 2]], 3108888341381492739),
    'sinusoid': ([[[-2.3388285636901855], [3.514286994934082]], [[2.200462818145752], [3.4741592407226562]]], [[[0.7929770946502686]], [[-0.4692849814891815]]], [[[1.0542876720428467], [2.2382192611694336]], [[1.2846418619155884], [0.8389289379119873]]], [[[-1.0842814445495605]], [[-1.3642901182174683]]], 1489413524815015911),
    'quadratic_uniform': ([[[0.8168227672576904, 1.2652114629745483], [1.2406158447265625, 0.5581775903701782]], [[0.680057942867279, 0.942768394947052], [0.09327307343482971, 1.0148648023605347]]], [[[1.2943947315216064], [1.3007804155349731]], [[0.4435417950153351], [0.12240280210971832]]], 332713095768338388),
    'quadratic_normal': ([[[-2.6507999897003174, -1.4052519798278809], [1.016066074371338, -0.9877629280090332]], [[-2.0810933113098145, 0.25130605697631836], [2.058633804321289, 0.9055395126342773]]], [[[2.737253427505493], [-1.612422227859497]], [[-0.23422981798648834], [0.5543023347854614]]], 332713095768338388),
}


def close(values, pinned) -> bool:
    """Equal to the pinned floats up to libm's last bits (sin, cos, log differ by an ulp across
    CPUs); a different random draw is off by far more."""
    return torch.allclose(torch.tensor(values, dtype=torch.float64), torch.tensor(pinned, dtype=torch.float64),
                          rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_cpu_episodes_are_the_tasks_drawn_before_the_change(mode):
    make, kw = MODES[mode]
    g = torch.Generator().manual_seed(11)
    b = EpisodeSampler(make(), 3, 1, 2, **kw).sample(2, g)
    if mode == "affine":  # warped pixels no longer show the ids; the labels and the stream's length do
        assert (b.support_y.tolist(), b.query_y.tolist(), tail(g)) == PINNED[mode]
    else:
        assert (image_ids(b.support_x), b.support_y.tolist(), image_ids(b.query_x), b.query_y.tolist(), tail(g)) == PINNED[mode]


def test_cpu_draws_of_the_helpers_and_the_other_sources_are_those_before_the_change():
    g = torch.Generator().manual_seed(3)
    assert (random_subsets(3, 9, 4, g).tolist(), tail(g)) == PINNED["subsets"]
    g = torch.Generator().manual_seed(4)
    theta, pinned = random_affine_maps(2, g).tolist(), PINNED["theta"]
    assert close(theta, pinned[0]) and tail(g) == pinned[1]
    g = torch.Generator().manual_seed(5)
    b = Sinusoid(SinusoidConfig(shots=2, queries=1)).sample(2, g)
    pinned = PINNED["sinusoid"]
    assert b.support_x.tolist() == pinned[0] and b.query_x.tolist() == pinned[1]  # plain arithmetic: exact
    assert close(b.support_y.tolist(), pinned[2]) and close(b.query_y.tolist(), pinned[3]) and tail(g) == pinned[4]
    for entries in ("uniform", "normal"):
        g = torch.Generator().manual_seed(6)
        b = Quadratic(QuadraticConfig(dims=2, entries=entries)).sample(2, g)
        pinned = PINNED["quadratic_" + entries]
        assert close(b.support_x.tolist(), pinned[0]) and close(b.support_y.tolist(), pinned[1]) and tail(g) == pinned[2]
        if entries == "uniform":
            assert b.support_x.tolist() == pinned[0]


def test_iteration_generator_seeds_every_device_alike_and_cpu_as_before():
    for device in ("cpu", torch.device("cpu")):
        g = iteration_generator(7, 1, 42, device)
        assert g.device == torch.device("cpu") and g.initial_seed() == iteration_seed(7, 1, 42)
    before = torch.Generator().manual_seed(iteration_seed(7, 1, 42))  # the generator of commit 1aee471
    assert torch.equal(torch.rand(5, generator=iteration_generator(7, 1, 42)), torch.rand(5, generator=before))


def test_the_same_seed_rank_and_iteration_draw_the_same_episodes_after_a_restart():
    make, kw = MODES["both"]

    def draw(iterations, rank=0):
        sampler = EpisodeSampler(make(), 3, 1, 2, **kw)  # a fresh sampler, as in a resumed process
        return [sampler.sample_indices(4, iteration_generator(5, rank, it)) for it in iterations]

    straight = draw(range(8))
    resumed = draw(range(3)) + draw(range(3, 8))
    for a, b in zip(straight, resumed, strict=True):
        assert all(map(torch.equal, a, b))
    assert not all(map(torch.equal, straight[3], straight[4]))  # other iterations, other tasks
    assert not all(map(torch.equal, straight[3], draw([3], rank=1)[0]))  # other ranks, other tasks


class Recorder:
    """The run's training source, recording the tasks the loop draws and where it draws them."""

    def __init__(self, source, drawn: list):
        self.source, self.drawn, self.moved_to = source, drawn, []
        self.kind, self.input_shape, self.n_outputs = source.kind, source.input_shape, source.n_outputs

    def to(self, device):
        self.moved_to.append(torch.device(device))
        self.source = self.source.to(device)
        return self

    def sample(self, batch_size, generator):
        batch = self.source.sample(batch_size, generator)
        if self.moved_to:  # the loop's draws (not the CPU-threads probe of one task before them)
            self.drawn.append((generator.device, batch))
        return batch


def test_a_resumed_run_draws_exactly_the_tasks_of_the_uninterrupted_run(tmp_path, monkeypatch):
    real_build = train_module.build_task
    runs = []

    def build_task(cfg, split):
        source = real_build(cfg, split)
        if split != "train":
            return source
        runs.append(Recorder(source, []))
        return runs[-1]

    monkeypatch.setattr(train_module, "build_task", build_task)
    sets = ["train.meta_batch=3", "train.log_every=4", "train.eval_every=0", "train.eval_tasks=4",
            "train.test_tasks=4", "train.checkpoint_every=4", "train.device=cpu"]

    def train(run_dir, iterations):
        cfg = load_config("sine-quick", [*sets, f"train.iterations={iterations}"])
        train_module.train(cfg, run_dir, progress=False, log=lambda m: None)
        return runs[-1]

    straight = train(tmp_path / "straight", 12)
    first, second = train(tmp_path / "split", 5), train(tmp_path / "split", 12)  # 5 iterations, then resumed
    assert json.loads((tmp_path / "split" / "report.json").read_text())["resumed_from"] == 5
    for run in (straight, first, second):  # the loop moved the source to the run's device and drew there
        assert run.moved_to == [torch.device("cpu")]
    resumed = first.drawn + second.drawn
    assert len(straight.drawn) == len(resumed) == 12
    for (dev_a, a), (dev_b, b) in zip(straight.drawn, resumed):
        assert dev_a == dev_b == torch.device("cpu")
        assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("support_x", "support_y", "query_x", "query_y"))
    assert not torch.equal(straight.drawn[4][1].support_x, straight.drawn[5][1].support_x)


def test_a_source_without_to_stays_on_the_cpu_and_one_with_to_moves():
    class Plain:  # a task source that offers no to(device)
        kind, input_shape, n_outputs = "regression", (1,), 1

        def sample(self, batch_size, generator):
            raise AssertionError("not drawn here")

    plain = Plain()
    assert place_source(plain, torch.device("cuda")) == (plain, torch.device("cpu"))  # copied as it comes
    sampler = EpisodeSampler(dataset(UNEVEN), 3, 1, 1)
    images = sampler.dataset.images
    assert place_source(sampler, torch.device("cpu")) == (sampler, torch.device("cpu"))
    assert sampler.dataset.images is images  # nothing copied on the CPU
    sine = Sinusoid()
    assert place_source(sine, "cpu") == (sine, torch.device("cpu"))


def samplers():
    """(name, sample(generator) -> TaskBatch) for every source and mode."""
    for name, (make, kw) in MODES.items():
        yield name, EpisodeSampler(make(), 3, 1, 2, **kw).sample
    yield "sinusoid", Sinusoid(SinusoidConfig(shots=3, queries=2)).sample
    yield "quadratic", Quadratic(QuadraticConfig(dims=3)).sample
    yield "quadratic_normal", Quadratic(QuadraticConfig(dims=3, entries="normal")).sample


@pytest.mark.parametrize("name,sample", list(samplers()), ids=lambda v: v if isinstance(v, str) else "")
def test_sampling_creates_every_tensor_on_the_generator_device(name, sample):
    # With the default device set to "meta", a tensor created without device=generator.device
    # would be a meta tensor: the sampling would fail on it, or hand it back.
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        batch = sample(4, generator)
    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        assert t.device == generator.device, name


@pytest.mark.parametrize("mode", MODES)
def test_episode_indices_lie_on_the_generator_device(mode):
    make, kw = MODES[mode]
    generator, sampler = torch.Generator().manual_seed(0), EpisodeSampler(make(), 3, 1, 2, **kw)
    with torch.device("meta"):
        out = sampler.sample_indices(4, generator)
    assert all(t.device == generator.device for t in out)


#: ops that read a tensor's value on the host (.item(), int/float/bool(t), .tolist()) or whose
#: output size depends on values (nonzero, boolean masks, unique): each waits for a GPU
SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
               "repeat_interleave", "equal", "is_nonzero", "allclose"}


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,sample", list(samplers()), ids=lambda v: v if isinstance(v, str) else "")
def test_sampling_never_reads_a_tensor_value_on_the_host(name, sample):
    sample(2, torch.Generator().manual_seed(0))  # first use (lookup tables) done
    with OpLog() as log:
        sample(4, torch.Generator().manual_seed(1))
    assert log.ops and not log.ops & SYNCING_OPS, (name, log.ops & SYNCING_OPS)


EPISODE_SHAPES = [(3, 1, 2), (4, 2, 1), (2, 1, 1)]


@pytest.mark.parametrize("mode", ["plain", "within_group", "shared_sources", "both", "affine"])
@pytest.mark.parametrize("ways,shots,queries", EPISODE_SHAPES)
def test_episodes_are_valid_n_way_k_shot(mode, ways, shots, queries):
    if mode in ("shared_sources", "both"):
        sizes = [shots + queries + 1] * 10
        data = dataset(sizes, groups=list("aaaabbbbbc") if mode == "both" else None, sources=True)
    else:
        data = dataset([shots + queries + k % 3 for k in range(10)], groups=list("aaaabbbbbc") if mode == "within_group" else None)
    kw = MODES[mode][1]
    B = 300
    s_ids, s_y, q_ids, q_y = EpisodeSampler(data, ways, shots, queries, **kw).sample_indices(B, torch.Generator().manual_seed(2))
    assert s_ids.shape == s_y.shape == (B, ways * shots) and q_ids.shape == q_y.shape == (B, ways * queries)
    labels, groups = data.labels, data.class_groups
    for b in range(B):
        ids = torch.cat([s_ids[b], q_ids[b]])
        assert len(set(ids.tolist())) == len(ids)  # support and query disjoint, no image twice
        assert torch.bincount(s_y[b], minlength=ways).tolist() == [shots] * ways
        assert torch.bincount(q_y[b], minlength=ways).tolist() == [queries] * ways
        cls = {}  # label -> the one class it stands for
        for i, y in zip(ids.tolist(), torch.cat([s_y[b], q_y[b]]).tolist()):
            assert cls.setdefault(y, int(labels[i])) == int(labels[i])
        assert len(set(cls.values())) == ways  # distinct classes
        if kw.get("within_group"):
            assert len({groups[c] for c in cls.values()}) == 1
        if kw.get("shared_sources"):
            by_label = lambda ids, ys, y: {int(data.sources[i]) for i, l in zip(ids.tolist(), ys.tolist()) if l == y}  # noqa: E731
            support = [by_label(s_ids[b], s_y[b], y) for y in range(ways)]
            query = [by_label(q_ids[b], q_y[b], y) for y in range(ways)]
            assert all(s == support[0] for s in support) and all(q == query[0] for q in query)
            assert len(support[0]) == shots and len(query[0]) == queries and not support[0] & query[0]


def test_resuming_on_another_kind_of_device_says_the_tasks_change(tmp_path):
    from metagrad.checkpoint import load_checkpoint, save_checkpoint

    sets = ["train.test_tasks=4", "train.eval_every=0", "train.log_every=5", "train.device=cpu"]
    run_dir, said = tmp_path / "run", []
    train_module.train(load_config("sine-quick", [*sets, "train.iterations=5"]), run_dir, progress=False, log=said.append)
    state = load_checkpoint(run_dir)
    assert state["task_device"] == "cpu"
    save_checkpoint(run_dir / "checkpoint.pt", {**state, "task_device": "cuda"})  # as if drawn on a GPU
    train_module.train(load_config("sine-quick", [*sets, "train.iterations=10"]), run_dir, progress=False, log=said.append)
    assert any("drew its tasks on the cuda and now draws them on the cpu" in m for m in said)
    said.clear()
    train_module.train(load_config("sine-quick", [*sets, "train.iterations=15"]), run_dir, progress=False, log=said.append)
    assert not any("warning" in m for m in said)  # the checkpoint now records the cpu

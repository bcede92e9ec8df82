"""Test-time choices on Lake's one-shot challenge, compared on the same episodes (paired).

Loads a trained run (e.g. `oneshot-omniglot-lake-28`) and draws its test episodes without its
own test-time views (seed 12345). ``--compare views``: each view set scored as
`task.eval_augment=shifts_both` does (every support image given in all V views, every query
scored in its V views with the log-probabilities summed by `evaluation.vote`):

  shift1        -1/0/+1 px each way (9 views: what shifts_both does)
  shift2        -2..+2 px each way (25)
  shift1xscale  shift1 at scales 0.9 / 1 / 1.1 (27)
  shift1xrot    shift1 at rotations -6 / 0 / +6 degrees (27)

``--compare quarter-turns``: the same with whole quarter turns of support and query together
(exact, torch.rot90), which the training episodes contain as classes of their own (rot090 ...):

  shift1        as above (9);  turns  0 / 90 / 180 / 270 degrees (4);  shift1xturns  both (36)

``--compare metrics``: SimpleShot-style normalisations (Wang et al. 2019) of a Prototypical
Network's embeddings against the squared Euclidean distance it was trained with, no views:

  euclid  -||z_q - c_k||^2 (as trained);  cosine  embeddings L2-normalised first;
  center  the task's mean support embedding subtracted first;  cl2n  centred, then L2-normalised

``--compare drawer-covariance``: the Mahalanobis distance (q - c)^T S^-1 (q - c) with S the
covariance of the embeddings of one character's 20 drawings (drawers) over the unrotated training
characters, each embedded by itself in a batch of up to 20 characters of its alphabet by one
drawer, shrunk towards its mean variance (S = (1 - lam) W + lam tr(W)/D I) and compared
with the Euclidean distance (lam = 1). Every image scored by itself (``learner.transductive=false``).

``--compare hubness``: whether some candidates draw wrong answers because they sit where many
characters look alike ("hubs", as CSLS corrects them in word translation; Conneau et al. 2018):
the squared distance d(q, c) minus alpha times r(c), the mean squared distance from candidate c
to its 10 nearest embeddings among the background drawings above (all 20 drawings of every
unrotated training character), or to the trial's 19 other candidates. Only the training set and
the trial itself are used, so each test drawing is still scored by itself.

``--compare local``: each drawing kept as the grid of local descriptors of an inner feature map
(the last block's 4x4 map before its pool, or the third block's 4x4 output) instead of their mean,
and a query compared with a candidate position by position, each query descriptor matched to its
nearest candidate descriptor within ``r`` positions (r = 0: the same position; r = 1: the 3x3
neighbourhood, an image distortion model on features; r = inf: anywhere, as DN4 does), both ways
(query to candidate and back): ``learner.distance=local``'s rule (learners/protonet.py), here on a
network trained for the pooled embedding. Squared Euclidean distances of the raw descriptors and
of L2-normalised ones; the pooled embedding's distance as trained for reference.

    OMP_NUM_THREADS=1 python benchmarks/oneshot_testtime.py RUN --data-dir DATA --compare views [--episodes 200]
"""

import math

import torch
import torch.nn.functional as F

from metagrad.build import build_task
from metagrad.config import with_data_dir
from metagrad.evaluation import vote
from metagrad.learners.protonet import local_distances, prototype_logits
from metagrad.tasks.images import warp
from metagrad.train import load_run
from oneshot_run import draws, run_and_test_tasks


def theta(size: int, dy: float = 0.0, dx: float = 0.0, scale: float = 1.0, rot_deg: float = 0.0) -> torch.Tensor:
    """The affine_grid map [2, 3] that moves a ``size``-px image by (dy, dx) px, scales and rotates it."""
    c, s = math.cos(math.radians(rot_deg)) / scale, math.sin(math.radians(rot_deg)) / scale
    return torch.tensor([[c, -s, -2 * dx / size], [s, c, -2 * dy / size]], dtype=torch.float64)


#: a view: (quarter turns, then the affine map [2, 3] of :func:`theta`)
View = tuple[int, torch.Tensor]


#: the one-pixel shifts (dy, dx) of ``task.eval_augment=shifts_both``, the unshifted one included
ONE_PIXEL = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def view_sets(size: int) -> dict[str, list[View]]:
    one = ONE_PIXEL
    return {
        "shift1 (9)": [(0, theta(size, dy, dx)) for dy, dx in one],
        "shift2 (25)": [(0, theta(size, dy, dx)) for dy in range(-2, 3) for dx in range(-2, 3)],
        "shift1 x scale 0.9/1/1.1 (27)": [(0, theta(size, dy, dx, s)) for s in (0.9, 1, 1.1) for dy, dx in one],
        "shift1 x rotation -6/0/6 deg (27)": [(0, theta(size, dy, dx, 1, r)) for r in (-6, 0, 6) for dy, dx in one],
    }


def quarter_turn_sets(size: int) -> dict[str, list[View]]:
    return {
        "shift1 (9)": view_sets(size)["shift1 (9)"],
        "quarter turns 0/90/180/270 (4)": [(k, theta(size)) for k in range(4)],
        "shift1 x quarter turns (36)": [(k, theta(size, dy, dx)) for k in range(4) for dy, dx in ONE_PIXEL],
    }


def views(x: torch.Tensor, y: torch.Tensor, maps: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, S, C, H, W], y [B, S] -> [B, V*S, ...], [B, V*S], view by view."""
    flat = x.flatten(0, 1)
    out = [warp(torch.rot90(flat, k, dims=(-2, -1)), m[None].expand(flat.shape[0], 2, 3)).view_as(x) for k, m in maps]
    return torch.cat(out, 1), y.repeat(1, len(maps))


def metric_logits(rule: str, zs: torch.Tensor, support_y: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
    """zs [B, S, D], support_y [B, S], zq [B, Q, D] -> [B, Q, N] under ``rule``."""
    if rule in ("center", "cl2n"):
        mean = zs.mean(1, keepdim=True)
        zs, zq = zs - mean, zq - mean
    if rule in ("cosine", "cl2n"):
        zs, zq = F.normalize(zs, dim=-1), F.normalize(zq, dim=-1)
    return prototype_logits(zs, support_y, zq)


def score_views(learner, b, size: int, sets=view_sets) -> dict[str, torch.Tensor]:
    """Each set's log-probabilities summed over its views. Views of one quarter turn go through
    the network together, each turn apart: a training episode's images all share one turn, and
    so should the images that share a BatchNorm batch at test."""
    out = {}
    for name, maps in sets(size).items():
        total = 0
        for k in sorted({k for k, _ in maps}):
            turn = [v for v in maps if v[0] == k]
            model = learner.adapt(*views(b.support_x, b.support_y, turn))
            logp = vote(model(views(b.query_x, b.query_y, turn)[0]), len(turn))
            total = total + (logp if len(turn) > 1 else logp.log_softmax(-1))
        out[name] = total
    return out


def score_quarter_turns(learner, b, size: int) -> dict[str, torch.Tensor]:
    return score_views(learner, b, size, quarter_turn_sets)


def score_metrics(learner, b, size: int) -> dict[str, torch.Tensor]:
    zs, zq = learner.embed(b.support_x, b.query_x)
    return {rule: metric_logits(rule, zs, b.support_y, zq) for rule in ("euclid", "cosine", "center", "cl2n")}


def background_embeddings(learner, train) -> torch.Tensor:
    """float64 [characters, 20, D]: ``train``'s unrotated characters (ImageClassDataset, 20
    drawings each), each drawing embedded in a batch of up to 20 characters of its alphabet by
    its drawer, as described above."""
    images = train.images.view(train.n_classes, 20, *train.images.shape[1:])
    alphabets: dict[str, list[int]] = {}
    for c, (name, group) in enumerate(zip(train.class_names, train.class_groups)):
        if name.endswith("rot000"):
            alphabets.setdefault(group, []).append(c)
    per_char = []  # [20, D] per character
    for chars in alphabets.values():
        for i in range(0, len(chars), 20):
            chunk = chars[i : i + 20]
            x = images[chunk].float().div(255).transpose(0, 1)  # [20 drawers, chunk, C, H, W]
            # each drawer's batch as a support set (its BatchNorm statistics); the query is unused
            z = torch.stack([learner.embed(x[d][None], x[d][None, :1])[0][0] for d in range(20)], 1)
            per_char += list(z.double())
    return torch.stack(per_char)


def drawer_covariance(learner, train) -> torch.Tensor:
    """float64 [D, D]: the mean within-character covariance of the background embeddings."""
    per_char = background_embeddings(learner, train)
    centred = per_char - per_char.mean(1, keepdim=True)  # [chars, 20, D]
    return torch.einsum("cdi,cdj->ij", centred, centred) / (centred.shape[0] * centred.shape[1])


def covariance_scorer(learner, train, shrinkage=(0.5, 0.8, 0.9, 1.0)):
    """A scorer comparing the Mahalanobis distance under each shrinkage of the drawer covariance."""
    w = drawer_covariance(learner, train)
    dim = w.shape[0]
    maps = {lam: torch.linalg.cholesky(torch.linalg.inv((1 - lam) * w + lam * w.trace() / dim * torch.eye(dim, dtype=w.dtype)))
            for lam in shrinkage}

    def score(learner, b, size: int) -> dict[str, torch.Tensor]:
        zs, zq = (z.double() for z in learner.embed(b.support_x, b.query_x))
        # with S^-1 = L L^T, the Mahalanobis distance is the Euclidean one between z L
        return {f"drawer covariance, lam={lam}": prototype_logits(zs @ chol, b.support_y, zq @ chol)
                for lam, chol in maps.items()}

    return score


def hubness_scorer(learner, train, alphas=(0.0, 0.25, 0.5, 1.0), k: int = 10):
    """A scorer comparing d(q, c) - alpha r(c) for r from the background set or the trial's support."""
    reference = background_embeddings(learner, train).flatten(0, 1)  # [chars * 20, D]

    def score(learner, b, size: int) -> dict[str, torch.Tensor]:
        zs, zq = (z.double() for z in learner.embed(b.support_x, b.query_x))
        d = -prototype_logits(zs, b.support_y, zq)  # [B, Q, N]; 1 shot: each prototype is its one support image
        cands = zs.gather(1, b.support_y.argsort(1)[..., None].expand_as(zs))  # [B, N, D] in label order
        r_bg = torch.cdist(cands, reference[None]).square().topk(k, largest=False).values.mean(-1)  # [B, N]
        within = torch.cdist(cands, cands).square()
        r_support = within.sum(-1) / (within.shape[-1] - 1)
        out = {}
        for alpha in alphas:
            out[f"background density, alpha={alpha}"] = -(d - alpha * r_bg[:, None])
            if alpha:
                out[f"support density, alpha={alpha}"] = -(d - alpha * r_support[:, None])
        return out

    return score


def feature_maps(learner, b, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The support maps [B, S, C, H, W] and the query maps [B, Q, C, H, W] after the first
    ``layers`` layers of a Conv-4 embedding (4 per block), each task one BatchNorm batch."""
    net = learner.net
    learner.net = net.features[:layers]
    try:
        return learner.embed(b.support_x, b.query_x)
    finally:
        learner.net = net


#: (name, layers of the Conv-4 features: block 3's output, or block 4 before its pool)
LOCAL_MAPS = (("block 4 before its pool", 15), ("block 3", 12))


def score_local(learner, b, size: int) -> dict[str, torch.Tensor]:
    zs, zq = learner.embed(b.support_x, b.query_x)
    out = {"pooled embedding (as trained)": prototype_logits(zs, b.support_y, zq)}
    for name, layers in LOCAL_MAPS:
        fs, fq = feature_maps(learner, b, layers)
        for radius, shown in ((0, 0), (1, 1), (max(fs.shape[-2:]), math.inf)):  # a radius of the map's side: anywhere
            for normalise in (False, True):
                key = f"{name}, r={shown}{', L2-normalised' if normalise else ''}"
                unit = (lambda f: F.normalize(f, dim=2)) if normalise else (lambda f: f)  # each descriptor over C
                out[key] = -local_distances(unit(fs.double()), b.support_y, unit(fq.double()), radius)
    return out


#: comparison -> (its scorer, tasks drawn per call: 10 bounds the memory of 27 views)
COMPARISONS = {"views": (score_views, 10), "quarter-turns": (score_quarter_turns, 5), "metrics": (score_metrics, 20),
               "local": (score_local, 10),
               "drawer-covariance": (None, 10), "hubness": (None, 10)}  # made in main(): they need the training split
SCORERS_OF_TRAINING_SET = {"drawer-covariance": covariance_scorer, "hubness": hubness_scorer}


def main() -> None:
    def overrides(args) -> list[str]:
        return ["task.eval_augment=none"] + (["learner.transductive=false"] if args.compare in SCORERS_OF_TRAINING_SET else [])

    args, learner, tasks = run_and_test_tasks(
        __doc__, 200, overrides, lambda p: p.add_argument("--compare", choices=sorted(COMPARISONS), required=True))
    score, per_draw = COMPARISONS[args.compare]
    if args.compare in SCORERS_OF_TRAINING_SET:
        cfg, _, _ = load_run(args.run, overrides(args))
        with torch.no_grad():
            score = SCORERS_OF_TRAINING_SET[args.compare](learner, build_task(with_data_dir(cfg, args.data_dir), "train").dataset)
    gen = torch.Generator().manual_seed(12345)
    wrong, trials = {}, 0
    with torch.no_grad():
        for n in draws(args.episodes, per_draw):
            b = tasks.sample(n, gen)
            for name, logits in score(learner, b, tasks.input_shape[-1]).items():
                wrong[name] = wrong.get(name, 0) + int((logits.argmax(-1) != b.query_y).sum())
            trials += b.query_y.numel()
    for name, n in wrong.items():
        print(f"{name:<36} {100 * n / trials:.2f}% error over {trials} trials")


if __name__ == "__main__":
    main()

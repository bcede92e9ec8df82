"""Where a one-shot network errs on Lake's challenge: error rate by how much a trial's support and
query drawings differ in size on the 105-px canvas (the longer side of their strokes' bounding box),
and where the right character ranks among the 20 candidates (so how much a better judge of the
first few candidates could gain).

With ``task.crop=ink`` every drawing is scaled to fill the image, so a size difference becomes a
stroke-width difference; this measures whether that costs errors. Scores each trial by itself
(``learner.transductive=false``, no test-time views), 10 episodes per draw, seed 12345:

    OMP_NUM_THREADS=1 python benchmarks/oneshot_errors.py RUN --data-dir DATA [--episodes 300]
"""

import io
import zipfile

import numpy as np
import torch
from PIL import Image

from metagrad.tasks.omniglot import index_archive, omniglot_dir
from oneshot_run import draws, run_and_test_tasks


def ink_sides(archive, names: list[str]) -> np.ndarray:
    """float [characters, 20]: the longer side in px of each drawing's ink bounding box."""
    with zipfile.ZipFile(archive) as zf:
        chars = index_archive(zf, archive)
        out = np.zeros((len(names), 20))
        for c, name in enumerate(names):
            for d, info in enumerate(chars[name]):
                ink = np.asarray(Image.open(io.BytesIO(zf.read(info))).convert("L")) < 128
                rows, cols = np.nonzero(ink.any(1))[0], np.nonzero(ink.any(0))[0]
                out[c, d] = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    return out


def main() -> None:
    args, learner, tasks = run_and_test_tasks(__doc__, 300, ["task.eval_augment=none", "learner.transductive=false"])
    data = tasks.dataset  # eval_rotate=false: class c is character c, image c * 20 + d its drawing d
    side = ink_sides(omniglot_dir(args.data_dir) / "images_evaluation.zip", data.class_names).flatten()
    gen = torch.Generator().manual_seed(12345)
    wrong, ratio, ranks = [], [], []
    with torch.no_grad():
        for n in draws(args.episodes, 10):
            s_ids, s_y, q_ids, q_y = tasks.sample_indices(n, gen)
            logits = learner.adapt(data.images[s_ids].float() / 255, s_y)(data.images[q_ids].float() / 255)
            pred = logits.argmax(-1)
            ranks.append((logits > logits.gather(-1, q_y[..., None])).sum(-1).flatten() + 1)  # 1: the right one on top
            for t in range(len(s_ids)):
                support_of = dict(zip(s_y[t].tolist(), s_ids[t].tolist()))
                for i, y, guess in zip(q_ids[t].tolist(), q_y[t].tolist(), pred[t].tolist()):
                    wrong.append(guess != y)
                    ratio.append(abs(np.log(side[i] / side[support_of[y]])))
    wrong, ratio = np.array(wrong), np.array(ratio)
    print(f"{len(wrong)} trials, {100 * wrong.mean():.2f}% error")
    edges = np.quantile(ratio, [0, 0.25, 0.5, 0.75, 1])
    for q, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        m = (ratio >= lo) & ((ratio < hi) | (q == 3))  # half-open, so a trial on an edge counts once
        print(f"quartile {q + 1} of the size ratio (x{np.exp(lo):.2f}-x{np.exp(hi):.2f}): "
              f"{100 * wrong[m].mean():.2f}% error over {m.sum()} trials")
    ranks = torch.cat(ranks)
    print("the right character among the first k candidates: " + ", ".join(
        f"k={k} {100 * (ranks <= k).double().mean():.2f}%" for k in (1, 2, 3, 5)))


if __name__ == "__main__":
    main()

"""Batched k-means against scikit-learn KMeans (n_init=1, one image at a time) and faiss-cpu Kmeans.

Same features for all three: the patch tokens of 64 synthetic scenes at 224 px from a ViT-S/8 with random
weights (64 images x 784 tokens x 384 dims), K = 8.

Stopping: leafseg and scikit-learn stop on the same rule (scikit-learn's: no label changed, or the sum over
centres of the squared shifts at most tol = 1e-4 times the mean per-dimension variance), capped at 100
iterations. faiss has no tolerance, so each image gets the number of iterations scikit-learn needed on it.
Iterations are as each library counts them (scikit-learn counts the final pass that changed no label,
leafseg does not). A second table runs every library for exactly 25 iterations where it can (faiss's
default; leafseg and scikit-learn with tol = 0 may still stop earlier when no label changes, and say how
many they ran).

Threads: every library is pinned to ``--threads`` (default 1): torch.set_num_threads, threadpoolctl for
scikit-learn's BLAS and OpenMP, faiss.omp_set_num_threads. The methods are timed in turn within each
repeat (after one warm-up), so that a change of load touches all of them; the figures are medians with the
range over repeats, ratios are per-repeat ratios (median and range). Quality: the mean inertia (sum of
squared distances to the cluster means), computed the same way for all three. The last line gives the
converged timings and ratios.

    python benchmarks/kmeans_speed.py [--device cuda] [--features gaussian] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from leafseg.grouping import batched_kmeans

ITERATIONS = 25  # the fixed-iteration table: faiss's default


def vit_features(n: int, device: str) -> torch.Tensor:
    """(n, 784, 384) block-12 tokens of a random-weight dino_vits8 on 224 px synthetic scenes."""
    from leafseg.backbones import build_backbone
    from leafseg.data.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=0, size=224)
    images = np.stack([world.scene(i).image for i in range(n)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
    model = build_backbone("dino_vits8", weights="random", device=device).eval()
    with torch.no_grad():
        maps = torch.cat([model.features(x[i : i + 8]).maps[0] for i in range(0, n, 8)])
    return maps.flatten(2).transpose(1, 2).contiguous()


def gaussian_features(n: int, device: str, k: int = 8) -> torch.Tensor:
    """(n, 784, 384) points drawn around k random centres per item."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(n, k, 384, generator=g) * 3
    labels = torch.randint(k, (n, 784), generator=g)
    x = centres.gather(1, labels[..., None].expand(-1, -1, 384)) + torch.randn(n, 784, 384, generator=g)
    return x.to(device)


def inertia(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean over items of the sum of squared distances to the cluster means. x (B, N, D), labels (B, N)."""
    total = []
    for xi, li in zip(x, labels, strict=True):
        means = np.stack([xi[li == j].mean(0) if (li == j).any() else xi[0] for j in range(li.max() + 1)])
        total.append(float(((xi - means[li]) ** 2).sum()))
    return float(np.mean(total))


MAX_ITER = 100


def run_ours(x: torch.Tensor, k: int, tol: float, max_iter: int):
    res = batched_kmeans(x, k, metric="euclidean", max_iter=max_iter, tol=tol, seed=0)
    if x.is_cuda:
        torch.cuda.synchronize()
    return res.labels.cpu().numpy(), res.iterations.tolist()


def run_sklearn(x: np.ndarray, k: int, tol: float, max_iter: int):
    from sklearn.cluster import KMeans

    fits = [KMeans(k, n_init=1, max_iter=max_iter, tol=tol, random_state=i).fit(xi) for i, xi in enumerate(x)]
    return np.stack([f.labels_ for f in fits]), [int(f.n_iter_) for f in fits]


def run_faiss(x: np.ndarray, k: int, iterations: list[int]):
    import faiss

    out = []
    for i, xi in enumerate(x):
        km = faiss.Kmeans(x.shape[2], k, niter=int(iterations[i]), seed=i + 1)
        km.train(xi)
        out.append(km.index.search(xi, 1)[1][:, 0])
    return np.stack(out), list(iterations)


def pin_threads(n: int):
    """Every library on n threads; returns the threadpoolctl limiter (kept alive for the run)."""
    import faiss
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    return threadpool_limits(limits=n)


def compare(methods: dict, repeats: int) -> dict:
    """Each method once for warm-up, then ``repeats`` rounds timing every method in turn."""
    results = {name: {"times": [], "out": fn()} for name, fn in methods.items()}
    for _ in range(repeats):
        for name, fn in methods.items():
            t = time.perf_counter()
            results[name]["out"] = fn()
            results[name]["times"].append(time.perf_counter() - t)
    return results


def spread(values) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def table(title: str, results: dict, x_np: np.ndarray) -> dict:
    ours = results["leafseg"]["times"]
    print(title)
    ratios = {}
    for name, r in results.items():
        ms = [t * 1000 for t in r["times"]]
        labels, iters = r["out"]
        line = (f"  {name:8s} {spread(ms):>26s} ms  iterations/image {np.mean(iters):5.1f}  "
                f"mean inertia {inertia(x_np, labels):.4g}")
        if name != "leafseg":
            ratios[name] = [a / b for a, b in zip(r["times"], ours, strict=True)]
            line += f"  leafseg x{spread(ratios[name])} faster"
        print(line)
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64, help="images clustered (default 64)")
    ap.add_argument("--k", type=int, default=8, help="clusters per image (default 8)")
    ap.add_argument("--features", choices=["vit", "gaussian"], default="vit",
                    help="random-weight ViT-S/8 tokens of synthetic scenes, or Gaussian blobs (default vit)")
    ap.add_argument("--device", default="cpu", help="device of leafseg's k-means (default cpu)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds after the warm-up (default 7)")
    ap.add_argument("--threads", type=int, default=1, help="threads of every library (default 1)")
    args = ap.parse_args()
    limiter = pin_threads(args.threads)  # noqa: F841 - the limits hold while it lives
    torch.manual_seed(0)
    x = (vit_features if args.features == "vit" else gaussian_features)(args.images, args.device)
    x_np = np.ascontiguousarray(x.float().cpu().numpy())
    print(f"features: {tuple(x.shape)} ({args.features}), K={args.k}, device={args.device}, "
          f"{args.threads} thread(s) per library, {args.repeats} rounds")
    sk_iters = run_sklearn(x_np, args.k, 1e-4, MAX_ITER)[1]
    converged = compare({
        "leafseg": lambda: run_ours(x, args.k, 1e-4, MAX_ITER),
        "sklearn": lambda: run_sklearn(x_np, args.k, 1e-4, MAX_ITER),
        "faiss": lambda: run_faiss(x_np, args.k, sk_iters),
    }, args.repeats)
    ratios = table("converged (scikit-learn's rule, tol 1e-4; faiss: scikit-learn's iterations per image)",
                   converged, x_np)
    fixed = compare({
        "leafseg": lambda: run_ours(x, args.k, 0.0, ITERATIONS),
        "sklearn": lambda: run_sklearn(x_np, args.k, 0.0, ITERATIONS),
        "faiss": lambda: run_faiss(x_np, args.k, [ITERATIONS] * args.images),
    }, args.repeats)
    fixed_ratios = table(f"at most {ITERATIONS} iterations (tol 0)", fixed, x_np)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    ms = {n: statistics.median(r["times"]) * 1000 for n, r in converged.items()}
    print(f"kmeans_speed [{device}, {args.threads} thread(s), {args.images}x{x.shape[1]}x{x.shape[2]}, K={args.k}, "
          f"median of {args.repeats} with range]: converged leafseg {ms['leafseg']:.1f} ms, sklearn "
          f"{ms['sklearn']:.1f} ms, faiss {ms['faiss']:.1f} ms; leafseg x{spread(ratios['sklearn'])} faster than "
          f"sklearn, x{spread(ratios['faiss'])} than faiss; at {ITERATIONS} iterations x"
          f"{spread(fixed_ratios['sklearn'])} and x{spread(fixed_ratios['faiss'])}")


if __name__ == "__main__":
    main()

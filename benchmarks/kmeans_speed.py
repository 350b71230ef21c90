"""Batched k-means against scikit-learn KMeans (n_init=1, one image at a time) and faiss-cpu Kmeans.

Same features for all three: the patch tokens of 64 synthetic scenes at 224 px from a ViT-S/8 with random
weights (64 images x 784 tokens x 384 dims), K = 8, at most 25 Lloyd iterations each (scikit-learn and
leafseg also stop early on their tolerance or when no label changes; faiss always runs 25). Each method is
timed over several repeats (median); quality is compared by the mean inertia (sum of squared distances to
the assigned centre), computed the same way for all three. The last line gives the ratios.

    python benchmarks/kmeans_speed.py [--device cuda] [--features gaussian] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from leafseg.grouping import batched_kmeans

ITERATIONS = 25  # the same cap on Lloyd iterations for all three (faiss's default; it has no tolerance)


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


def run_ours(x: torch.Tensor, k: int) -> np.ndarray:
    res = batched_kmeans(x, k, metric="euclidean", max_iter=ITERATIONS, tol=1e-4, seed=0)
    if x.is_cuda:
        torch.cuda.synchronize()
    return res.labels.cpu().numpy()


def run_sklearn(x: np.ndarray, k: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return np.stack([KMeans(k, n_init=1, max_iter=ITERATIONS, tol=1e-4, random_state=i).fit(xi).labels_
                     for i, xi in enumerate(x)])


def run_faiss(x: np.ndarray, k: int) -> np.ndarray:
    import faiss

    out = []
    for i, xi in enumerate(x):
        km = faiss.Kmeans(x.shape[2], k, niter=ITERATIONS, seed=i + 1)
        km.train(xi)
        out.append(km.index.search(xi, 1)[1][:, 0])
    return np.stack(out)


def timed(fn, repeats: int):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--features", choices=["vit", "gaussian"], default="vit")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = (vit_features if args.features == "vit" else gaussian_features)(args.images, args.device)
    x_np = np.ascontiguousarray(x.float().cpu().numpy())
    print(f"features: {tuple(x.shape)} ({args.features}), K={args.k}, device={args.device}, "
          f"torch threads={torch.get_num_threads()}")
    results = {
        "leafseg": timed(lambda: run_ours(x, args.k), args.repeats),
        "sklearn": timed(lambda: run_sklearn(x_np, args.k), args.repeats),
        "faiss": timed(lambda: run_faiss(x_np, args.k), args.repeats),
    }
    for name, (sec, labels) in results.items():
        print(f"{name:8s} {sec * 1000:8.1f} ms  mean inertia {inertia(x_np, labels):.4g}")
    ours = results["leafseg"][0]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    ratios = ", ".join(f"{results[n][0] / ours:.2f}x faster than {n}" for n in ("sklearn", "faiss"))
    print(f"kmeans_speed [{device}, {args.images}x{x.shape[1]}x{x.shape[2]}, K={args.k}]: "
          f"leafseg {ours * 1000:.1f} ms, sklearn {results['sklearn'][0] * 1000:.1f} ms, "
          f"faiss {results['faiss'][0] * 1000:.1f} ms; leafseg is {ratios}")


if __name__ == "__main__":
    main()

"""STEGO's components: the correspondence loss against values worked out by hand, the published presets, the
head, the cluster and linear probes, the k-NN tables and their cache, the training views."""

from __future__ import annotations

import math

import pytest
import torch

from leafseg.heads import ClusterProbe, LinearProbe, StegoHead, cosine_assignment
from leafseg.losses.stego import (
    PRESETS,
    CorrespondenceLoss,
    correlation_loss,
    random_others,
    sample_points,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# Two images, 2 channels, 2 x 2 positions each: [image][channel][row][column]
FEATS = torch.tensor([[[[1.0, 0.0], [1.0, -1.0]], [[0.0, 1.0], [1.0, 0.0]]],
                      [[[0.5, 2.0], [0.0, 1.0]], [[1.0, 0.0], [-1.0, 1.0]]]])
CODES = torch.tensor([[[[2.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, -3.0]]],
                      [[[1.0, -1.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 0.0]]]])


def vectors(maps: torch.Tensor, image: int) -> list[tuple[float, ...]]:
    """The 4 vectors of a 2 x 2 map, row by row: (0,0), (0,1), (1,0), (1,1)."""
    return [tuple(float(maps[image, c, r, q]) for c in range(maps.shape[1])) for r in range(2) for q in range(2)]


def cos(u, v) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def by_hand(pairs: list[tuple[int, int]], shift: float, centering: bool = True, zero_clamp: bool = True) -> float:
    """STEGO's loss of a batch of image pairs (i, j) of FEATS / CODES, written out. Per pair:
    F[p][q] = cos(f_i[p], f_j[q]); F'[p][q] = F[p][q] - (1/4) sum_q F[p][q] + m, where m is the mean of F over
    every pair of the batch (STEGO keeps the batch's mean); S[p][q] = cos(c_i[p], c_j[q]);
    L = mean over pairs, p, q of -max(S[p][q], 0) * (F'[p][q] - shift)."""
    Fs, Ss = [], []
    for i, j in pairs:
        fa, fb, ca, cb = vectors(FEATS, i), vectors(FEATS, j), vectors(CODES, i), vectors(CODES, j)
        Fs.append([[cos(fa[p], fb[q]) for q in range(4)] for p in range(4)])
        Ss.append([[cos(ca[p], cb[q]) for q in range(4)] for p in range(4)])
    m = sum(F[p][q] for F in Fs for p in range(4) for q in range(4)) / (16 * len(pairs))
    total = 0.0
    for F, S in zip(Fs, Ss, strict=True):
        if centering:
            F = [[F[p][q] - sum(F[p]) / 4 + m for q in range(4)] for p in range(4)]
        if zero_clamp:
            S = [[max(v, 0.0) for v in row] for row in S]
        total += sum(-S[p][q] * (F[p][q] - shift) for p in range(4) for q in range(4))
    return total / (16 * len(pairs))


@pytest.mark.parametrize("centering, zero_clamp", [(True, True), (False, True), (True, False)])
def test_pair_loss_matches_the_formula_by_hand(centering, zero_clamp):
    for i, j in ((0, 0), (0, 1), (1, 0)):
        loss, corr = correlation_loss(FEATS[i:i + 1], FEATS[j:j + 1], CODES[i:i + 1], CODES[j:j + 1], 0.3,
                                      centering=centering, zero_clamp=zero_clamp)
        assert loss.shape == corr.shape == (1, 2, 2, 2, 2)
        assert loss.mean().item() == pytest.approx(by_hand([(i, j)], 0.3, centering, zero_clamp), abs=1e-6)


def corner_points(batch: int) -> torch.Tensor:
    """(B, 2, 2, 2) points at the four corners: with align_corners they read the 2 x 2 maps exactly."""
    xs = torch.tensor([-1.0, 1.0])
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), dim=-1)  # [row][column] = (x, y)
    return grid.expand(batch, 2, 2, 2)


def test_sampling_at_the_corners_reads_the_maps():
    assert torch.allclose(sample_points(FEATS, corner_points(2)), FEATS)


def test_three_pairings_weighted_by_their_lambdas():
    loss_fn = CorrespondenceLoss(self_weight=0.5, self_shift=0.1, knn_weight=2.0, knn_shift=0.2, random_weight=0.7,
                                 random_shift=0.4, feature_samples=2, negatives=3)
    knn_feats, knn_codes = FEATS.flip(0), CODES.flip(0)  # each image's neighbour is the other image
    points = (corner_points(2), corner_points(2))
    out = loss_fn.terms(FEATS, CODES, knn_feats, knn_codes, points=points)
    # a batch of 2: the random partner of each image is the other one, whatever the draw
    own = by_hand([(0, 0), (1, 1)], 0.1)
    knn = by_hand([(0, 1), (1, 0)], 0.2)
    rand = by_hand([(0, 1), (1, 0)], 0.4)
    assert out.self.item() == pytest.approx(own, abs=1e-6)
    assert out.knn.item() == pytest.approx(knn, abs=1e-6)
    assert out.random.item() == pytest.approx(rand, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * own + 2.0 * knn + 0.7 * rand, abs=1e-6)


def test_the_loss_trains_the_codes_not_the_features():
    feats, codes = FEATS.clone().requires_grad_(), CODES.clone().requires_grad_()
    loss_fn = CorrespondenceLoss.from_preset("cocostuff27", feature_samples=3)
    torch.manual_seed(0)
    loss = loss_fn(feats, codes, feats.flip(0), codes.flip(0))  # a scalar, what a learner minimises
    loss.backward()
    assert loss.ndim == 0 and feats.grad is None and codes.grad is not None and codes.grad.abs().sum() > 0
    torch.manual_seed(0)
    out = loss_fn.terms(feats, codes, feats.flip(0), codes.flip(0))
    assert out.loss.item() == loss.item()  # the same draws: the same loss, with its parts
    assert set(out.parts()) == {"loss_self", "loss_knn", "loss_random", "corr_self", "corr_knn", "corr_random"}


def test_random_partners_are_never_the_image_itself():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 8):
        for _ in range(50):
            others = random_others(n, generator=g)
            assert (others != torch.arange(n)).all() and others.min() >= 0 and others.max() < n
    with pytest.raises(ValueError, match="at least 2"):
        CorrespondenceLoss.from_preset("potsdam3")(FEATS[:1], CODES[:1], FEATS[:1], CODES[:1])


def test_presets_are_the_published_values():
    """STEGO's released training configurations (docs/stego.md names them)."""
    expected = {  # (lambda, b) for self, knn, random pairs; the backbone
        "cocostuff27": (0.1, 0.12, 1.0, 0.2, 0.1538476246415498, 1.0, "dino_vitb8"),
        "cocostuff27_vits8": (0.67, 0.08, 0.25, 0.02, 0.63, 0.66, "dino_vits8"),
        "cityscapes27": (1.0, 0.45828472207, 0.577453483136995, 0.1754346515479633, 0.9058762625226623,
                         0.31361241889448443, "dino_vitb8"),
        "potsdam3": (0.67, 0.08, 0.25, 0.02, 0.63, 0.46, "dino_vits8"),
    }
    assert set(PRESETS) == set(expected)
    for name, values in expected.items():
        p = PRESETS[name]
        assert (p.self_weight, p.self_shift, p.knn_weight, p.knn_shift, p.random_weight, p.random_shift,
                p.backbone) == values
        loss = CorrespondenceLoss.from_preset(name)
        assert loss.weights == {"self": values[0], "knn": values[2], "random": values[4]}
        assert loss.shifts == {"self": values[1], "knn": values[3], "random": values[5]}
        assert (loss.feature_samples, loss.negatives, loss.centering, loss.zero_clamp) == (11, 5, True, True)
    assert CorrespondenceLoss.from_preset("cocostuff27", knn_shift=0.5).shifts["knn"] == 0.5
    with pytest.raises(ValueError, match="unknown STEGO preset"):
        CorrespondenceLoss.from_preset("cocostuff")


# ------------------------------------------------------------------------------------------------ head
def test_head_shapes_branches_and_dropout():
    torch.manual_seed(0)
    head = StegoHead(16, 70)
    feats = torch.randn(2, 16, 5, 7)
    assert head(feats).shape == (2, 70, 5, 7)
    assert head.dropout.p == 0.1 and isinstance(head.nonlinear[1], torch.nn.ReLU)
    assert head.nonlinear[0].out_channels == 16  # the hidden width is the input width
    head.eval()
    expected = head.linear(feats) + head.nonlinear(feats)
    assert torch.allclose(head(feats), expected, atol=1e-6)
    head.train()
    dropped = head.dropout(torch.ones(64, 16, 2, 2))
    assert torch.equal(dropped.amin((2, 3)), dropped.amax((2, 3)))  # Dropout2d: whole channels dropped or kept
    kept = dropped.amax((2, 3))
    assert (kept == 0).any() and torch.allclose(kept[kept > 0], torch.tensor(1 / 0.9))
    assert StegoHead(16, 8, 0.3).dropout.p == 0.3  # (in_dim, code_dim, dropout), as FUSS's learner builds it
    linear_only = StegoHead(16, 8, nonlinear=False).eval()
    assert linear_only.nonlinear is None and torch.allclose(linear_only(feats), linear_only.linear(feats))
    with pytest.raises(ValueError, match=r"\(B, 16, h, w\)"):
        head(torch.randn(2, 8, 5, 7))


# ---------------------------------------------------------------------------------------------- probes
def test_cluster_probe_assigns_by_cosine_and_loss_is_minus_mean_best_cosine():
    probe = ClusterProbe(2, 3)  # 2 centroids of 3 dimensions
    with torch.no_grad():
        probe.centroids.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    vecs = [(2.0, 0.1, 0.0), (0.1, 3.0, 0.0), (-1.0, 0.2, 0.0), (1.0, 1.0, 0.5)]  # nearest: 0, 1, 1, 0 (a tie: 0)
    codes = torch.tensor(vecs).T.reshape(1, 3, 2, 2).requires_grad_()
    assert probe(codes).tolist() == [[[0, 1], [1, 0]]] and probe.num_clusters == 2
    best = [max(cos(v, (1, 0, 0)), cos(v, (0, 1, 0))) for v in vecs]
    loss = probe.loss(codes)
    assert loss.item() == pytest.approx(-sum(best) / 4, abs=1e-6)
    loss.backward()
    assert codes.grad is None and probe.centroids.grad is not None  # detached codes: only the centroids learn
    cosines, labels = cosine_assignment(codes, probe.centroids)
    assert cosines.shape == (1, 2, 2, 2) and torch.equal(labels, probe(codes))
    assert torch.allclose(probe.cosines(codes), cosines)


def test_linear_probe_reads_detached_codes_and_ignores_unlabelled_pixels():
    probe = LinearProbe(4, 3, ignore_index=255)
    codes = torch.randn(2, 4, 3, 3, requires_grad=True)
    labels = torch.full((2, 6, 6), 255)
    assert probe.loss(codes, labels).item() == 0.0  # nothing labelled: no loss, no NaN
    labels[0, :3] = 1
    loss = probe.loss(codes, labels)
    loss.backward()
    assert loss.item() > 0 and codes.grad is None and probe.conv.weight.grad is not None


def test_fuss_local_learner_trains_with_the_stego_head_probe_and_loss(tmp_path):
    """The federated recipe's client takes these components as they are (constructor arguments)."""
    from leafseg.backbones import build_backbone, make_random_checkpoint
    from leafseg.recipes.fuss.task import LocalLearner

    encoder = build_backbone("dino_vits8", weights=make_random_checkpoint("dino_vits8", tmp_path / "enc"))
    torch.manual_seed(0)
    head, probe = StegoHead(encoder.embed_dim, 8, 0.1), ClusterProbe(3, 8)
    learner = LocalLearner(encoder, torch.rand(6, 3, 32, 32), head=head, probe=probe,
                           objective=CorrespondenceLoss.from_preset("cocostuff27", feature_samples=3), batch_size=4,
                           knn=2)
    before = learner.get_state()
    figures = learner.fit(2, seed=0)
    after = learner.get_state()
    assert set(after) == {"centroids"} | {f"head.{k}" for k, _ in head.named_parameters()}
    assert all(math.isfinite(v) for v in figures.values())
    assert not all((before[k] == after[k]).all() for k in after)

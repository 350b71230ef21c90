"""The noun-region contrastive loss: a hand-computed 2x2 batch for each direction, its symmetries,
gradients, masking, dropped pairs, the learnable temperature, and (two gloo processes) negatives from
every rank; and the helpers that turn captions into padded noun embeddings."""

import math
import socket
import zlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from leafseg.errors import ConfigError
from leafseg.eval.prompts import noun_embeddings, text_embeddings
from leafseg.losses.noun_region import NounRegionLoss, caption_image_scores, noun_region_loss
from leafseg.text.nouns import caption_nouns

R = 1 / math.sqrt(2)


def hand_batch():
    """Two pairs in 2-D. Image 0: regions (1, 0), (0, 1) and an empty third; image 1: (1, 1), (-1, 0)
    and an empty third whose value (0, 1) would raise s[0, 1] if it counted. Caption 0: nouns (1, 0),
    (0, 1); caption 1: the noun (1, 1) and a padding row."""
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], [[1.0, 1.0], [-1.0, 0.0], [0.0, 1.0]]])
    region_mask = torch.tensor([[True, True, False], [True, True, False]])
    nouns = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-3.0, 7.0]]])
    noun_mask = torch.tensor([[True, True], [True, False]])
    return regions, region_mask, nouns, noun_mask


# s[i, j], caption i against image j, worked out by hand:
# noun_to_region: s00 = (1 + 1)/2; s01 = (R + R)/2; s10 = max(R, R); s11 = max(1, -R)
# region_to_noun: s00 = (1 + 1)/2; s01 = (max(R, R) + max(-1, 0))/2; s10 = (R + R)/2; s11 = (1 - R)/2
HAND = {
    "noun_to_region": [[1.0, R], [R, 1.0]],
    "region_to_noun": [[1.0, R / 2], [R, (1 - R) / 2]],
    "both": [[1.0, (R + R / 2) / 2], [R, (1 + (1 - R) / 2) / 2]],
}


def clip_loss_2x2(s, t):
    """Symmetric InfoNCE of a 2x2 score list at scale t, written out."""
    rows = sum(-t * s[i][i] + math.log(math.exp(t * s[i][0]) + math.exp(t * s[i][1])) for i in range(2)) / 2
    cols = sum(-t * s[j][j] + math.log(math.exp(t * s[0][j]) + math.exp(t * s[1][j])) for j in range(2)) / 2
    return rows + cols


@pytest.mark.parametrize("direction", list(HAND))
def test_hand_computed_two_by_two(direction):
    regions, region_mask, nouns, noun_mask = hand_batch()
    s = caption_image_scores(nouns, noun_mask, regions, region_mask, direction)
    assert torch.allclose(s, torch.tensor(HAND[direction]), atol=1e-6)
    out = noun_region_loss(regions, region_mask, nouns, noun_mask, 10.0, direction=direction)
    assert float(out.loss) == pytest.approx(clip_loss_2x2(HAND[direction], 10.0), rel=1e-5)
    assert float(out.caption_to_image + out.image_to_caption) == pytest.approx(float(out.loss), rel=1e-6)
    assert out.keep.tolist() == [True, True] and float(out.scale) == 10.0
    # top-1 retrieval: every pair with noun_to_region; region_to_noun lets image 1's unnamed region (-1, 0)
    # pull s11 below s10 and s01 (caption 1 and image 1 both miss); "both" misses caption 1 only
    assert float(out.accuracy) == {"noun_to_region": 1.0, "region_to_noun": 0.5, "both": 0.75}[direction]
    # caption 0's nouns pick regions 0 and 1 of image 0; caption 1's noun, region 0 of image 1
    assert out.assignment.tolist() == [[0, 1], [0, -1]]


def random_batch(b=5, m=4, n=3, e=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    regions, nouns = torch.randn(b, m, e, generator=g), torch.randn(b, n, e, generator=g)
    region_mask = torch.rand(b, m, generator=g) > 0.3
    noun_mask = torch.rand(b, n, generator=g) > 0.3
    region_mask[:, 0] = noun_mask[:, 0] = True
    return regions, region_mask, nouns, noun_mask


@pytest.mark.parametrize("direction", list(HAND))
def test_reordering_the_pairs_leaves_the_loss_unchanged(direction):
    regions, region_mask, nouns, noun_mask = random_batch()
    loss = noun_region_loss(regions, region_mask, nouns, noun_mask, 7.0, direction=direction).loss
    p = torch.tensor([3, 0, 4, 1, 2])
    moved = noun_region_loss(regions[p], region_mask[p], nouns[p], noun_mask[p], 7.0, direction=direction).loss
    assert float(moved) == pytest.approx(float(loss), rel=1e-6)


def test_swapping_the_roles_of_images_and_captions_swaps_the_directions():
    # noun_to_region of (regions A, nouns B) is the transpose of region_to_noun of (regions B, nouns A),
    # and the symmetric loss does not see a transpose
    regions, region_mask, nouns, noun_mask = random_batch()
    s = caption_image_scores(nouns, noun_mask, regions, region_mask, "noun_to_region")
    swapped = caption_image_scores(regions, region_mask, nouns, noun_mask, "region_to_noun")
    assert torch.allclose(s, swapped.t(), atol=1e-6)
    for direction, other in (("noun_to_region", "region_to_noun"), ("both", "both")):
        a = noun_region_loss(regions, region_mask, nouns, noun_mask, 7.0, direction=direction).loss
        b = noun_region_loss(nouns, noun_mask, regions, region_mask, 7.0, direction=other).loss
        assert float(a) == pytest.approx(float(b), rel=1e-6)


@pytest.mark.parametrize("direction", list(HAND))
def test_gradients_reach_regions_nouns_and_temperature_but_not_masked_entries(direction):
    regions, region_mask, nouns, noun_mask = random_batch()
    regions.requires_grad_(True)
    nouns.requires_grad_(True)
    loss_fn = NounRegionLoss(direction, init_temperature=0.1)
    loss_fn(regions, region_mask, nouns, noun_mask).loss.backward()
    assert float(loss_fn.logit_scale.grad.abs()) > 0
    assert float(regions.grad[region_mask].abs().sum()) > 0 and float(nouns.grad[noun_mask].abs().sum()) > 0
    assert float(regions.grad[~region_mask].abs().sum()) == 0 and float(nouns.grad[~noun_mask].abs().sum()) == 0


@pytest.mark.parametrize("direction", list(HAND))
def test_masked_regions_and_nouns_have_no_influence(direction):
    regions, region_mask, nouns, noun_mask = random_batch()
    base = noun_region_loss(regions, region_mask, nouns, noun_mask, 7.0, direction=direction)
    regions2, nouns2 = regions.clone(), nouns.clone()
    regions2[~region_mask] = 100 * torch.randn(int((~region_mask).sum()), regions.shape[2])
    nouns2[~noun_mask] = float("nan")
    regions2.requires_grad_(True)
    nouns2.requires_grad_(True)
    other = noun_region_loss(regions2, region_mask, nouns2, noun_mask, 7.0, direction=direction)
    assert torch.equal(other.loss, base.loss) and torch.equal(other.scores, base.scores)
    other.loss.backward()
    assert bool(torch.isfinite(regions2.grad).all()) and bool(torch.isfinite(nouns2.grad).all())


@pytest.mark.parametrize("direction", list(HAND))
def test_a_caption_without_nouns_drops_its_pair(direction):
    regions, region_mask, nouns, noun_mask = random_batch()
    noun_mask[2] = False
    out = noun_region_loss(regions, region_mask, nouns, noun_mask, 7.0, direction=direction)
    rest = torch.tensor([0, 1, 3, 4])
    without = noun_region_loss(regions[rest], region_mask[rest], nouns[rest], noun_mask[rest], 7.0,
                               direction=direction)
    assert float(out.loss) == pytest.approx(float(without.loss), rel=1e-6)
    assert out.keep.tolist() == [True, True, False, True, True] and bool((out.assignment[2] == -1).all())
    # an image without any valid region is dropped the same way
    region_mask[2], noun_mask[2] = False, True
    assert float(noun_region_loss(regions, region_mask, nouns, noun_mask, 7.0, direction=direction).loss) == \
        pytest.approx(float(without.loss), rel=1e-6)


def test_no_pair_left_gives_a_zero_loss_with_a_graph():
    regions, region_mask, nouns, noun_mask = random_batch()
    regions.requires_grad_(True)
    out = noun_region_loss(regions, region_mask, nouns, torch.zeros_like(noun_mask), 7.0)
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and float(regions.grad.abs().sum()) == 0.0 and float(out.accuracy) == 0.0
    # a batch where no caption has a noun at all: (B, 0, anything) nouns
    out = noun_region_loss(regions, region_mask, torch.zeros(5, 0, 0), torch.zeros(5, 0, dtype=torch.bool), 7.0)
    assert float(out.loss.detach()) == 0.0 and out.assignment.shape == (5, 0)


def test_temperature_init_and_bad_settings():
    loss_fn = NounRegionLoss(init_temperature=0.05)
    assert float(loss_fn.scale.detach()) == pytest.approx(20.0, rel=1e-5)
    assert float(NounRegionLoss().logit_scale.detach()) == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    with pytest.raises(ConfigError, match="direction"):
        NounRegionLoss("two_way")
    with pytest.raises(ConfigError, match="positive"):
        NounRegionLoss(init_temperature=0.0)
    regions, region_mask, nouns, noun_mask = random_batch()
    with pytest.raises(ValueError, match="bool"):
        noun_region_loss(regions, region_mask.float(), nouns, noun_mask, 1.0)
    with pytest.raises(ValueError, match="width"):
        noun_region_loss(regions, region_mask, nouns[..., :3], noun_mask, 1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, batch, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        regions, region_mask, nouns, noun_mask = batch
        mine = slice(4 * rank, 4 * rank + 4)
        n = 2 + rank  # the ranks pad their nouns to different widths
        r = regions[mine].clone().requires_grad_(True)
        nn_ = nouns[mine, :n].clone().requires_grad_(True)
        noun_region_loss(r, region_mask[mine], nn_, noun_mask[mine, :n], 5.0).loss.backward()
        # DDP averages gradients over ranks: emulate it
        out[rank] = {"gr": r.grad / 2, "gn": nn_.grad / 2}
    finally:
        dist.destroy_process_group()


def test_distributed_negatives_match_one_big_batch():
    regions, region_mask, nouns, noun_mask = random_batch(b=8, n=3, seed=3)
    noun_mask[:4, 2] = False  # rank 0 sends two noun slots, rank 1 three
    noun_mask[1] = noun_mask[6] = False  # one dropped pair per rank: both ranks average over 3 pairs
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), (regions, region_mask, nouns, noun_mask), out), nprocs=2, join=True)
        result = dict(out)
    r, n = regions.clone().requires_grad_(True), nouns.clone().requires_grad_(True)
    noun_region_loss(r, region_mask, n, noun_mask, 5.0, gather=False).loss.backward()
    assert torch.allclose(torch.cat([result[0]["gr"], result[1]["gr"]]), r.grad, atol=1e-6)
    assert torch.allclose(result[0]["gn"], n.grad[:4, :2], atol=1e-6)
    assert torch.allclose(result[1]["gn"], n.grad[4:], atol=1e-6)


# ---- captions -> padded noun embeddings


class FakeTextEncoder:
    """A deterministic text "encoder": every string gets its own random vector (E = 6); prompts are recorded."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, texts):
        self.seen += texts
        return torch.stack([torch.randn(6, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                            for t in texts])


VOCAB = ["dog", "ball", "tree", "sky"]
CAPTIONS = ["a dog with a ball under a tree and a dog", "nothing to see, really", "the sky and the dog"]


def test_caption_nouns_keep_caption_order_and_cap():
    assert caption_nouns(CAPTIONS, VOCAB) == [["dog", "ball", "tree"], [], ["sky", "dog"]]
    assert caption_nouns(CAPTIONS, VOCAB, max_nouns=2) == [["dog", "ball"], [], ["sky", "dog"]]
    with pytest.raises(ConfigError, match="max_nouns"):
        caption_nouns(CAPTIONS, VOCAB, max_nouns=0)


def test_noun_embeddings_are_padded_prompted_and_encoded_once():
    encode = FakeTextEncoder()
    templates = ("a photo of a {}.", "art of the {}.")
    out = noun_embeddings(CAPTIONS, VOCAB, encode, templates)
    assert out.embeddings.shape == (3, 3, 6) and out.texts == [["dog", "ball", "tree"], [], ["sky", "dog"]]
    assert out.mask.tolist() == [[True, True, True], [False, False, False], [True, True, False]]
    assert sorted(encode.seen) == sorted(t.format(n) for n in ("dog", "ball", "tree", "sky") for t in templates)
    dog = text_embeddings(FakeTextEncoder(), ["dog"], templates).embeddings[0]
    assert torch.allclose(out.embeddings[0, 0], dog) and torch.allclose(out.embeddings[2, 1], dog)
    assert float(out.embeddings[~out.mask].abs().sum()) == 0
    # the caption without a noun: its pair is dropped by the loss
    regions = torch.randn(3, 4, 6)
    loss = noun_region_loss(regions, torch.ones(3, 4, dtype=torch.bool), out.embeddings, out.mask, 10.0)
    assert loss.keep.tolist() == [True, False, True]


def test_noun_embeddings_can_fall_back_on_the_whole_caption():
    encode = FakeTextEncoder()
    out = noun_embeddings(CAPTIONS, VOCAB, encode, "single", max_nouns=1, fallback="caption")
    assert out.texts == [["dog"], ["nothing to see, really"], ["sky"]] and bool(out.mask.all())
    # the caption is encoded as it is: no template, not split at its comma
    assert "nothing to see, really" in encode.seen and "a photo of a nothing to see." not in encode.seen
    whole = torch.nn.functional.normalize(FakeTextEncoder()(["nothing to see, really"]), dim=-1)[0]
    assert torch.allclose(out.embeddings[1, 0], whole, atol=1e-6)
    with pytest.raises(ConfigError, match="fallback"):
        noun_embeddings(CAPTIONS, VOCAB, encode, fallback="skip")


def test_noun_embeddings_of_captions_without_any_noun():
    out = noun_embeddings(["just words", "more words"], VOCAB, FakeTextEncoder())
    assert out.embeddings.shape == (2, 0, 0) and out.mask.shape == (2, 0) and out.texts == [[], []]
    assert float(noun_region_loss(torch.randn(2, 3, 6), torch.ones(2, 3, dtype=torch.bool), out.embeddings,
                                  out.mask, 10.0).loss) == 0.0

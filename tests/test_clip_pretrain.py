"""The CLIP pretraining recipe: CLIP's loss, pooling at the end-of-text token, the exported Hugging Face
folder, learning on a tiny synthetic world, and config errors that name the key."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clip_tiny import clip_args
from leafseg.errors import ConfigError
from leafseg.recipes.clip_pretrain import build_tokenizer_for, pair_source
from leafseg.recipes.clip_pretrain_config import ClipConfig
from leafseg.recipes.clip_pretrain_model import build_model, clip_loss, export_clip, rebuild
from leafseg.registry import load_config_of
from leafseg.text.tokenizer import BPETokenizer
from leafseg.training import load_config, read_exported
from sseg_tiny import write_world

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def tiny(world, tmp_path_factory):
    """(config, tokenizer, model) of the tiny run, with the model's weights moved off their initial values."""
    out = tmp_path_factory.mktemp("tiny")
    cfg = load_config(ClipConfig, None, clip_args(world, out))
    tokenizer = build_tokenizer_for(cfg, out, _Main())
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, tokenizer, model.eval()


class _Main:
    is_main = True


def test_clip_loss_is_the_mean_of_both_directions_computed_by_hand():
    image = torch.tensor([[3.0, 0.0], [0.6, 0.8]])  # the first row is not unit length: the loss normalises
    text = torch.tensor([[0.8, 0.6], [0.0, 2.0]])
    scale = 2.0
    # cosines: [[0.8, 0.0], [0.96, 0.8]], times the scale
    s11, s12, s21, s22 = 1.6, 0.0, 1.92, 1.6
    image_to_text = (-math.log(math.exp(s11) / (math.exp(s11) + math.exp(s12)))
                     - math.log(math.exp(s22) / (math.exp(s21) + math.exp(s22)))) / 2
    text_to_image = (-math.log(math.exp(s11) / (math.exp(s11) + math.exp(s21)))
                     - math.log(math.exp(s22) / (math.exp(s12) + math.exp(s22)))) / 2
    expected = (image_to_text + text_to_image) / 2
    assert clip_loss(image, text, scale).item() == pytest.approx(expected, rel=1e-6)
    scale_param = torch.tensor(math.log(scale), requires_grad=True)
    clip_loss(image, text, scale_param.exp()).backward()
    assert scale_param.grad is not None and scale_param.grad.item() != 0.0  # the temperature is learnt


def test_text_is_pooled_at_the_end_of_text_token(tiny):
    cfg, tokenizer, model = tiny
    text_config = model.model.config.text_config
    assert text_config.eos_token_id == tokenizer.end_id == tokenizer.vocab_size - 1 != 2
    assert (text_config.bos_token_id, text_config.pad_token_id) == (tokenizer.start_id, tokenizer.pad_id)
    batch = model.tokenize(["a red ball", "two boxes and a tree next to the water, with the sky behind"])
    ids = batch["input_ids"]
    end = int((ids[0] == tokenizer.end_id).nonzero()[0])
    assert ids[0, 0] == tokenizer.start_id and end < ids.shape[1] - 1 and ids[0, end + 1] == tokenizer.pad_id
    with torch.no_grad():
        hidden = model.model.text_model(**batch).last_hidden_state  # (2, L, D)
        expected = model.model.text_projection(hidden[0, end])
        alone = model.encode_text(["a red ball"])[0]
        in_batch = model.encode_text(["a red ball", "two boxes and a tree next to the water, with the sky behind"])[0]
    assert torch.allclose(alone, expected, atol=1e-5)
    assert torch.allclose(in_batch, alone, atol=1e-5)  # padding after the end token changes nothing
    assert not torch.allclose(model.model.text_projection(hidden[0, -1]), expected, atol=1e-3)


def test_exported_folder_loads_through_build_backbone_with_the_same_embeddings(tiny, tmp_path):
    from leafseg.backbones import build_backbone

    cfg, tokenizer, model = tiny
    folder = export_clip(model, tokenizer, tmp_path / "clip", cfg)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    loaded = build_backbone("clip_vitb16", weights=folder)  # the folder's config sets the sizes
    assert (loaded.patch_size, loaded.embed_dim, loaded.proj_dim) == (8, 32, 16)
    assert loaded.num_blocks == 2 and loaded.context_length == 32
    images = torch.rand(3, 3, 32, 32)
    captions = ["a red ball", "a photo of a crate on the sand", "three trees"]
    with torch.no_grad():
        assert torch.equal(loaded.image_embedding(images), model.image_embedding(images))
        assert torch.equal(loaded.encode_text(captions), model.encode_text(captions))
        assert torch.equal(loaded.tokenize(captions)["input_ids"], model.tokenize(captions)["input_ids"])
    exported = read_exported(folder / "model.safetensors")
    assert exported["recipe"] == "clip"
    rebuilt, rebuilt_cfg = rebuild(exported, "cpu")
    assert rebuilt_cfg == cfg
    with torch.no_grad():
        assert torch.equal(rebuilt.encode_text(captions), model.encode_text(captions))


def test_tokenizer_is_trained_on_the_training_captions_only(tiny, world):
    cfg, tokenizer, _ = tiny
    train = pair_source(cfg, str(world), "train", train=False, rank=0, world_size=1).captions(100)
    ids = tokenizer.encode(train)
    assert tokenizer.vocab_size <= cfg.text.vocab_size
    assert tokenizer.decode(ids[0]) == train[0].lower()


def test_a_short_run_lowers_the_contrastive_loss(world, tmp_path):
    from leafseg.recipes.clip_pretrain import run

    result = run(None, clip_args(world, tmp_path / "run", "iterations=40", "batch_size=8", "lr=0.002", "warmup=4",
                                 "eval.dataset=null", "retrieval.limit=0", "save_every=40"))
    losses = [row["loss"] for row in result["train_log"]]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)  # chance level is ln 8 = 2.08
    assert json.loads((tmp_path / "run" / "results.json").read_text())["iterations"] == 40
    scale = read_exported(tmp_path / "run" / "clip" / "model.safetensors")["model"]["logit_scale"]
    assert 0.0 <= float(scale) <= math.log(100.0)


@pytest.mark.parametrize("overrides, key", [
    (["vision.width=100"], "vision.width"),                # not a multiple of the 12 heads
    (["vision.image_size=100"], "vision.image_size"),      # not a multiple of the 16 px patches
    (["vision.patchsize=8"], "vision.patchsize"),          # a misspelt key
    (["text.heads=0"], "text.heads"),
    (["text.vocab_size=100"], "text.vocab_size"),
    (["text.context_length=2"], "text.context_length"),
    (["augment.scale=[0.5, 1.5]"], "augment.scale"),
    (["augment.flip=2"], "augment.flip"),
    (["activation=relu"], "activation"),
    (["batch_size=1"], "batch_size"),
    (["betas=[0.9, 1.0]"], "betas"),
    (["init_temperature=0"], "init_temperature"),
    (["retrieval.limit=-1"], "retrieval.limit"),
    (["retrieval.limit=100"], "retrieval.path"),           # the default tar layout holds no validation split
    (["eval.dataset=synthetic"], "eval.root"),
])
def test_bad_config_values_give_a_config_error_naming_the_key(overrides, key):
    assert load_config_of("clip", None, []).retrieval.limit == 0  # the defaults are a valid config
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config_of("clip", None, overrides)


def test_a_tokenizer_with_the_end_token_at_id_2_is_refused(world, tmp_path):
    cfg = load_config(ClipConfig, None, clip_args(world, tmp_path))
    captions = pair_source(cfg, str(world), "train", train=False, rank=0, world_size=1).captions(100)
    path = BPETokenizer.train(captions, 300).save(tmp_path / "first.json")  # specials numbered 0, 1, 2
    cfg.text.tokenizer = str(path)
    with pytest.raises(ConfigError, match="text.tokenizer"):
        build_tokenizer_for(cfg, tmp_path, _Main())


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    """A finished two-iteration run with both evaluations: (its folder, its result)."""
    from leafseg.recipes.clip_pretrain import run

    out = tmp_path_factory.mktemp("finished") / "run"
    return out, run(None, clip_args(world, out, "iterations=2"))


def test_the_exported_folder_under_leafseg_eval_maskclip_gives_the_runs_miou(world, finished, tmp_path, capsys):
    from leafseg.cli import main

    out, result = finished
    assert result["r1_image_to_text"] is not None and result["miou"] is not None
    code = main(["eval", "maskclip", "synthetic", str(world), "--backbone", "clip_vitb16", "--weights",
                 str(out / "clip"), "--preset", str(out / "protocol.yaml"), "--out", str(tmp_path / "eval"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["miou"] == result["miou"]


def test_leafseg_report_draws_the_runs_predictions(finished, tmp_path, capsys):
    from leafseg.cli import main
    from leafseg.eval.run_folders import read_run_folder

    out, _ = finished
    folder = read_run_folder(out)
    assert folder.weights == out / "clip" / "model.safetensors" and folder.dataset.name == "synthetic"
    code = main(["report", str(out), "--out", str(tmp_path / "report"), "--scenes", "1"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "report" / "predictions_1.png").is_file()

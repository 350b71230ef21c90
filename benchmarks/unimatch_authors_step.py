"""UniMatch V2's training iteration as the authors' released code runs it, re-created for speed baselines.

Written from the facts in the authors' public repository (LiheYoung/UniMatch-V2, ``unimatch_v2.py``,
``dataset/semi.py``, ``model/semseg/dpt.py``); no code of theirs is copied. It shares leafseg's model
(DINOv2 + DPT, built by ``leafseg.recipes.unimatch_v2.build_segmenter``), so that a timing against
leafseg's own step measures the training step and its data path, not two different networks.

What their iteration does, and where it happens here:

* **data, per sample, on the CPU in DataLoader workers** (:class:`AuthorsSemiDataset`): a PIL image
  opened and converted to RGB (masks as PIL images); long side rescaled by ``randint(0.5 L, 2.0 L)``
  (image bilinear, mask nearest); padded right and bottom to the crop (image 0, mask 255 labelled / 254
  unlabelled); a random crop; a horizontal flip with p 0.5. Labelled samples stop there. Unlabelled
  samples get two strong views, each: colour jitter (brightness, contrast, saturation 0.5, hue 0.25,
  the four in random order) with p 0.8, grayscale with p 0.2, Gaussian blur with sigma U(0.1, 2.0)
  with p 0.5, all with Pillow / numpy; a CutMix box per view (p 0.5, area U(0.02, 0.4), aspect
  U(0.3, 1/0.3), drawn until it fits) as an (S, S) mask; the ignore map is 255 where the crop padded.
  Tensors are made per sample (``ToTensor``); ImageNet normalisation is left to the shared model,
  which normalises its input itself. Their loaders use 4 workers per loader and pinned memory.
* **on the device** (:class:`AuthorsStep`): the EMA teacher (a deep copy in eval mode) predicts the
  weak view; the CutMix boxes paste each strong image's partner, the batch reversed (``flip(0)``),
  by boolean-mask assignment; the labelled batch goes through the student in one forward and the two
  strong batches, concatenated, in a second forward with Complementary Dropout (one Bernoulli(0.5)
  channel mask per pair drawn on the CPU and copied to the device, the complement for the second view,
  both x2, and a random half of the pairs left undropped); the pseudo-labels, confidences and ignore
  maps are cloned and mixed with the same boxes; loss = (labelled CE with ignore 255 + mean over the
  two views of the confident-pixel CE summed and divided by the non-padded pixel count read with
  ``.item()``) / 2; ``zero_grad``, ``backward``, AdamW step (encoder parameters that require grad at
  lr, every other parameter at 40 x lr, betas (0.9, 0.999), weight decay 0.01); the four logged
  figures read with ``.item()``; the poly learning rate written into both groups; the EMA update as a
  Python loop over parameters and buffers (``copy_(ema * r + p * (1 - r))``).
* **precision and kernels**: fp32 (no autocast); ``cudnn.benchmark = True``; attention as their
  DINOv2 layers run it without xFormers (not in their requirements): eager ``softmax(q k^T) v``.

Left out, as they do not belong to one process's iteration time: DistributedDataParallel (one
process here), SyncBatchNorm conversion (the model has no BatchNorm), TensorBoard writing.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset, RandomSampler

CROP_FILL_UNLABELED = 254  # their unlabelled padding value, turned into 255 in the ignore map


# --------------------------------------------------------------------- per-sample augmentation (PIL)
def rescale(img: Image.Image, mask: Image.Image, ratio=(0.5, 2.0)) -> tuple[Image.Image, Image.Image]:
    """Long side to ``randint(int(L * lo), int(L * hi))``, aspect kept (image bilinear, mask nearest)."""
    w, h = img.size
    long_side = random.randint(int(max(w, h) * ratio[0]), int(max(w, h) * ratio[1]))
    if h > w:
        oh, ow = long_side, int(1.0 * w * long_side / h + 0.5)
    else:
        ow, oh = long_side, int(1.0 * h * long_side / w + 0.5)
    return img.resize((ow, oh), Image.BILINEAR), mask.resize((ow, oh), Image.NEAREST)


def pad_crop(img: Image.Image, mask: Image.Image, size: int, fill: int) -> tuple[Image.Image, Image.Image]:
    """Pad right / bottom to ``size`` (image 0, mask ``fill``), then a random ``size`` x ``size`` crop."""
    w, h = img.size
    pw, ph = max(size - w, 0), max(size - h, 0)
    if pw or ph:
        img = ImageOps.expand(img, border=(0, 0, pw, ph), fill=0)
        mask = ImageOps.expand(mask, border=(0, 0, pw, ph), fill=fill)
    w, h = img.size
    x, y = random.randint(0, w - size), random.randint(0, h - size)
    box = (x, y, x + size, y + size)
    return img.crop(box), mask.crop(box)


def hflip(img: Image.Image, mask: Image.Image, p: float = 0.5) -> tuple[Image.Image, Image.Image]:
    if random.random() < p:
        return img.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
    return img, mask


def shift_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by ``shift`` of a turn (in [-0.5, 0.5]) in PIL's 8-bit HSV."""
    h, s, v = img.convert("HSV").split()
    hue = (np.asarray(h, dtype=np.int16) + int(round(shift * 255))) % 256
    return Image.merge("HSV", (Image.fromarray(hue.astype(np.uint8), "L"), s, v)).convert("RGB")


def color_jitter(img: Image.Image, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25) -> Image.Image:
    """Brightness, contrast, saturation factors U(1 - x, 1 + x) and a hue shift U(-hue, hue), in random order."""
    ops = [lambda im: ImageEnhance.Brightness(im).enhance(random.uniform(1 - brightness, 1 + brightness)),
           lambda im: ImageEnhance.Contrast(im).enhance(random.uniform(1 - contrast, 1 + contrast)),
           lambda im: ImageEnhance.Color(im).enhance(random.uniform(1 - saturation, 1 + saturation)),
           lambda im: shift_hue(im, random.uniform(-hue, hue))]
    for op in random.sample(ops, len(ops)):
        img = op(img)
    return img


def strong_view(img: Image.Image) -> Image.Image:
    """Jitter p 0.8, grayscale (3 channels) p 0.2, Gaussian blur sigma U(0.1, 2.0) p 0.5."""
    if random.random() < 0.8:
        img = color_jitter(img)
    if random.random() < 0.2:
        img = img.convert("L").convert("RGB")
    if random.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
    return img


def cutmix_box(size: int, p: float = 0.5, area=(0.02, 0.4), ratio=(0.3, 1 / 0.3)) -> torch.Tensor:
    """(size, size) float mask, 1 inside a box of area U(area) x size^2 and aspect U(ratio) drawn until it
    fits (all zeros with probability 1 - p)."""
    box = torch.zeros(size, size)
    if random.random() > p:
        return box
    s = random.uniform(*area) * size * size
    while True:
        r = random.uniform(*ratio)
        bw, bh = int(np.sqrt(s / r)), int(np.sqrt(s * r))
        x, y = random.randint(0, size), random.randint(0, size)
        if x + bw <= size and y + bh <= size:
            break
    box[y:y + bh, x:x + bw] = 1
    return box


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 PIL -> (3, H, W) float in [0, 1] (``ToTensor``)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


def to_labels(mask: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(mask, dtype=np.uint8)).long()


class AuthorsSemiDataset(Dataset):
    """Samples of a split file (``image_relpath mask_relpath`` lines under ``root``), augmented per sample.

    mode "train_l": (image (3, S, S), mask (S, S) int64, 255 on padding).
    mode "train_u": (weak (3, S, S), strong1, strong2, ignore (S, S) int64 with 255 on padding,
    box1 (S, S) float, box2 (S, S) float). Images in [0, 1].
    """

    def __init__(self, root: str | Path, split_file: str | Path, mode: str, size: int):
        if mode not in ("train_l", "train_u"):
            raise ValueError(f"mode must be train_l or train_u, got {mode!r}")
        self.root, self.mode, self.size = Path(root), mode, int(size)
        self.pairs = [line.split() for line in Path(split_file).read_text().splitlines() if line.strip()]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        image_rel, mask_rel = self.pairs[i]
        img = Image.open(self.root / image_rel).convert("RGB")
        if self.mode == "train_u":
            mask = Image.fromarray(np.zeros((img.size[1], img.size[0]), dtype=np.uint8))
        else:
            mask = Image.fromarray(np.array(Image.open(self.root / mask_rel)))
        img, mask = rescale(img, mask)
        img, mask = pad_crop(img, mask, self.size, CROP_FILL_UNLABELED if self.mode == "train_u" else 255)
        img, mask = hflip(img, mask)
        if self.mode == "train_l":
            return to_tensor(img), to_labels(mask)
        s1, s2 = strong_view(img.copy()), strong_view(img.copy())
        box1, box2 = cutmix_box(self.size), cutmix_box(self.size)
        ignore = torch.zeros(self.size, self.size, dtype=torch.long)
        ignore[to_labels(mask) == CROP_FILL_UNLABELED] = 255
        return to_tensor(img), to_tensor(s1), to_tensor(s2), ignore, box1, box2


def authors_loaders(root, labeled_split, unlabeled_split, *, crop: int, batch: int, workers: int,
                    pin_memory: bool, samples: int = 100_000, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Labelled and unlabelled loaders (shuffled, ``drop_last``; workers kept alive between iterators)."""
    def loader(ds):
        g = torch.Generator().manual_seed(seed + len(ds))
        return DataLoader(ds, batch_size=batch, sampler=RandomSampler(ds, replacement=True, num_samples=samples,
                                                                      generator=g),
                          num_workers=workers, pin_memory=pin_memory, drop_last=True,
                          persistent_workers=workers > 0)
    return (loader(AuthorsSemiDataset(root, labeled_split, "train_l", crop)),
            loader(AuthorsSemiDataset(root, unlabeled_split, "train_u", crop)))


# ------------------------------------------------------------------------------ the device part
def authors_optimizer(model, lr: float = 5e-6, lr_multi: float = 40.0) -> torch.optim.AdamW:
    """AdamW: encoder parameters that require grad at ``lr``; all non-encoder parameters at ``lr * lr_multi``."""
    groups = [{"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": lr},
              {"params": [p for n, p in model.named_parameters() if not n.startswith("encoder.")],
               "lr": lr * lr_multi}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=0.01)


def comp_drop_scale(batch: int, channels: int, device) -> torch.Tensor:
    """(batch, channels) scales for ``cat((s1, s2))`` (batch = 2 x pairs): mask drawn on the CPU, copied over."""
    pairs = batch // 2
    first = torch.distributions.Binomial(probs=0.5).sample((pairs, channels)).to(device) * 2.0
    second = 2.0 - first
    kept = torch.randperm(pairs)[: int(pairs * 0.5)]
    first[kept, :] = 1.0
    second[kept, :] = 1.0
    return torch.cat((first, second))


def paste_reversed_(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """In place: where ``box == 1`` ((B, H, W)), ``x`` ((B, H, W) or (B, C, H, W)) takes the reversed
    batch's values. Returns ``x``."""
    sel = box == 1 if x.ndim == 3 else (box.unsqueeze(1).expand(x.shape) == 1)
    x[sel] = x.flip(0)[sel]
    return x


def unlabeled_view_loss(pred, labels, conf, ignore, threshold: float) -> torch.Tensor:
    """Confident-pixel CE summed, divided by the non-padded pixel count (a host number, as theirs)."""
    loss = F.cross_entropy(pred, labels, reduction="none")
    loss = loss * ((conf >= threshold) & (ignore != 255))
    return loss.sum() / (ignore != 255).sum().item()


class AuthorsStep:
    """One training iteration of their loop: ``step(batch_l, batch_u, iteration, total_iterations)``.

    batch_l: (img_x, mask_x); batch_u: (img_w, img_s1, img_s2, ignore, box1, box2), as the loaders give
    them. Returns the four logged figures (loss, loss_x, loss_s, mask ratio) as floats.
    """

    def __init__(self, model, device, *, lr: float = 5e-6, lr_multi: float = 40.0, conf_thresh: float = 0.95,
                 comp_drop: bool = True):
        self.model, self.device = model.train(), torch.device(device)
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad = False
        self.optimizer = authors_optimizer(model, lr, lr_multi)
        self.criterion_l = torch.nn.CrossEntropyLoss(ignore_index=255)
        self.lr, self.lr_multi, self.conf_thresh, self.comp_drop = lr, lr_multi, conf_thresh, comp_drop

    @staticmethod
    def configure_backends() -> None:
        """Their global settings: cuDNN on and benchmarking; no deterministic algorithms."""
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True

    def losses(self, batch_l, batch_u):
        """(loss, loss_x, loss_u_s, conf_u_w, ignore) with gradients, inputs moved to the device."""
        dev = self.device
        img_x, mask_x = (t.to(dev) for t in batch_l)
        img_w, img_s1, img_s2, ignore, box1, box2 = (t.to(dev) for t in batch_u)
        with torch.no_grad():
            pred_w = self.ema(img_w).detach()
            conf_w = pred_w.softmax(dim=1).max(dim=1)[0]
            mask_w = pred_w.argmax(dim=1)
        paste_reversed_(img_s1, box1)
        paste_reversed_(img_s2, box2)
        pred_x = self.model(img_x)
        strong = torch.cat((img_s1, img_s2))
        scale = comp_drop_scale(strong.shape[0], self.model.encoder.embed_dim, dev) if self.comp_drop else None
        pred_s1, pred_s2 = self.model(strong, channel_scale=scale).chunk(2)
        loss_x = self.criterion_l(pred_x, mask_x)
        views = [(pred_s1, box1), (pred_s2, box2)]
        loss_s = sum(unlabeled_view_loss(p, *(paste_reversed_(t.clone(), b) for t in (mask_w, conf_w, ignore)),
                                         self.conf_thresh) for p, b in views) / 2.0
        return (loss_x + loss_s) / 2.0, loss_x, loss_s, conf_w, ignore

    def __call__(self, batch_l, batch_u, iteration: int, total_iterations: int) -> tuple[float, ...]:
        loss, loss_x, loss_s, conf_w, ignore = self.losses(batch_l, batch_u)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        ratio = ((conf_w >= self.conf_thresh) & (ignore != 255)).sum().item() / (ignore != 255).sum()
        logged = (loss.item(), loss_x.item(), loss_s.item(), ratio.item())
        lr = self.lr * (1 - iteration / total_iterations) ** 0.9
        self.optimizer.param_groups[0]["lr"] = lr
        self.optimizer.param_groups[1]["lr"] = lr * self.lr_multi
        self.ema_update(iteration)
        return logged

    def ema_update(self, iteration: int) -> None:
        r = min(1 - 1 / (iteration + 1), 0.996)
        with torch.no_grad():
            for p, p_ema in zip(self.model.parameters(), self.ema.parameters(), strict=True):
                p_ema.copy_(p_ema * r + p.detach() * (1 - r))
            for b, b_ema in zip(self.model.buffers(), self.ema.buffers(), strict=True):
                b_ema.copy_(b_ema * r + b.detach() * (1 - r))

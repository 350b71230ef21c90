"""`leafseg eval` end to end on a fixture tree of every dataset layout: the report is written and its
mIoU equals an independent numpy computation from the saved predictions and the ground truth."""

import json

import numpy as np
import pytest
from PIL import Image

from dataset_trees import make_tree
from leafseg.cli import main
from leafseg.data.datasets import build_dataset, list_datasets


def numpy_miou(pred_dir, dataset) -> float:
    """Dataset-level mIoU (classes with a non-empty union) from prediction PNGs and the reader's masks."""
    c = dataset.num_classes
    conf = np.zeros((c, c), np.int64)
    for i in range(len(dataset)):
        item = dataset[i]
        gt = item["mask"].numpy().ravel()
        pred = np.asarray(Image.open(pred_dir / f"{item['name']}.png")).astype(np.int64).ravel()
        keep = gt != dataset.ignore_index
        conf += np.bincount(gt[keep] * c + pred[keep], minlength=c * c).reshape(c, c)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    return float((inter[union > 0] / union[union > 0]).mean())


@pytest.mark.parametrize("name", list_datasets())
def test_eval_runs_on_every_layout(name, tmp_path, capsys):
    kwargs = make_tree(name, tmp_path / "data")
    root, split = kwargs.pop("root"), kwargs.pop("split")
    out = tmp_path / "report"
    argv = ["eval", "kmeans", name, str(root), "--backbone", "pixels4", "--split", split, "--out", str(out),
            "--save-predictions", "--quiet", "labelling=hungarian", "num_clusters=8", "workers=0"]
    for key, value in kwargs.items():
        argv += ["--data-option", f"{key}={json.dumps(value)}"]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    dataset = build_dataset(name, root, split, **kwargs)
    assert metrics["miou"] == pytest.approx(numpy_miou(out / "predictions", dataset), abs=1e-6)
    assert list(metrics["per_class_iou"]) == list(dataset.classes)
    assert metrics["protocol"]["labelling"] == "hungarian" and metrics["num_images"] == 2
    assert list(out.rglob("overlays/**/*.png"))
    assert (out / "report.html").is_file() and (out / "per_class.csv").is_file()

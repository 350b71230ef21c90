"""The one captions.jsonl reader: records in file order, errors naming the file and the line."""

import json

import pytest

from leafseg.data import DataError, SyntheticWorld, read_captions, write_captions
from leafseg.data.synthetic_layout import SCENE_KEYS


def test_round_trip_keeps_order_and_extra_keys(tmp_path):
    records = [{"image": "b.png", "caption": "two dogs", "split": "val", "classes": [1, 2]},
               {"image": "a.png", "caption": "", "extra": {"k": 1}}]
    path = tmp_path / "captions.jsonl"
    write_captions(path, records)
    assert path.read_text().count("\n") == 2
    assert read_captions(path) == records
    path.write_text(path.read_text() + "\n   \n")
    assert read_captions(path, required=("image", "caption")) == records


def test_the_synthetic_world_writes_what_the_reader_reads(tmp_path):
    root = SyntheticWorld(seed=0, size=32).write(tmp_path / "w", 3)
    records = read_captions(root / "captions.jsonl", required=SCENE_KEYS)
    raw = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    assert records == raw and len(records) == 3
    assert all((root / r["image"]).is_file() and (root / r["mask"]).is_file() for r in records)


@pytest.mark.parametrize("line, problem", [
    ('{"image": "a.png", "caption": ', "not JSON"),
    ('["a.png", "a caption"]', "a JSON object is needed, got list"),
    ("7", "a JSON object is needed, got int"),
    ('{"caption": "no image"}', "missing image"),
    ('{"image": "a.png"}', "missing caption"),
])
def test_bad_lines_are_named(tmp_path, line, problem):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "ok.png", "caption": "fine"}\n\n' + line + "\n")
    with pytest.raises(DataError, match="captions.jsonl, line 3: malformed record") as err:
        read_captions(path, required=("image", "caption"))
    assert problem in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere[/\\]captions.jsonl: not found"):
        read_captions(tmp_path / "nowhere" / "captions.jsonl")

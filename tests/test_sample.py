"""abovqa.sample: an ABO-format tree that is deterministic, has the real quirks, and whose pictures show their metadata."""
import collections
import gzip
import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from abovqa.sample import (COLORS, GENERIC_IMAGE_IDS, PARTS_FIELD, PROBLEM_IMAGE_IDS, count_parts, dominant_color, sample_root,
                           write_sample)
from abovqa.testing import read_sample_truth

TREE_DIGEST = """
import hashlib, sys
from pathlib import Path
from abovqa.sample import write_sample
root = write_sample(Path(sys.argv[1]), n_listings=int(sys.argv[2]), seed=int(sys.argv[3]))
h = hashlib.sha256()
for p in sorted(root.rglob("*")):
    if p.is_file():
        h.update(str(p.relative_to(root)).encode()); h.update(p.read_bytes())
print(h.hexdigest())
"""


def read_records(root: Path):
    records, malformed = [], 0
    for path in sorted((root / "listings" / "metadata").glob("listings_*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    malformed += 1
    return records, malformed


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = write_sample(tmp_path_factory.mktemp("sample") / "abo", n_listings=300, seed=0)
    records, malformed = read_records(root)
    return root, records, malformed, read_sample_truth(root)


def tree_digest(root: Path, n: int, seed: int) -> str:
    run = subprocess.run([sys.executable, "-c", TREE_DIGEST, str(root), str(n), str(seed)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_same_seed_same_bytes_across_processes(tmp_path):
    first, second = tree_digest(tmp_path / "a", 80, 5), tree_digest(tmp_path / "b", 80, 5)
    assert first == second
    assert tree_digest(tmp_path / "c", 80, 6) != first


def test_layout_and_field_shapes(sample):
    root, records, malformed, _ = sample
    assert sorted(p.name for p in (root / "listings" / "metadata").iterdir()) == sorted(f"listings_{k:x}.json.gz" for k in range(16))
    assert len(records) == 300 and malformed == 3
    assert len({(r["item_id"], r["domain_name"]) for r in records}) == 300
    for r in records:
        assert isinstance(r["item_id"], str) and r["domain_name"].startswith("amazon.")
        assert r["product_type"] == [{"value": r["product_type"][0]["value"]}]
        for key in ("item_name", "brand", "item_keywords", "bullet_point", "material", "style", "pattern", "item_shape",
                    "fabric_type", "finish_type", "product_description"):
            for entry in r.get(key, []):
                assert set(entry) == {"language_tag", "value"}, (key, entry)
        for entry in r.get("color", []):
            assert set(entry) == {"language_tag", "value", "standardized_values"} and isinstance(entry["standardized_values"], list)
        for entry in r.get("model_number", []):
            assert set(entry) == {"value"}
        assert all(set(n) == {"node_id", "node_name"} for n in r["node"])
        assert isinstance(r.get("item_dimensions", {}), dict) and isinstance(r.get("item_weight", []), list)
        assert isinstance(r.get("other_image_id", []), list)
    present = collections.Counter(k for r in records for k in r)
    for optional in ("color", "item_shape", "material", "model_number", "item_dimensions", "item_weight", "product_description"):
        assert 0 < present[optional] < 300, optional  # sometimes present, sometimes missing


def test_languages_and_marketplace_quirks(sample):
    _, records, _, _ = sample
    name_tags = collections.Counter(r["item_name"][-1]["language_tag"] for r in records)
    assert name_tags.most_common(1)[0][0] == "en_IN"
    assert {"en_US", "en_GB", "en_AE", "de_DE", "ja_JP", "fr_FR"} <= set(name_tags)
    native = [r for r in records if not r["item_name"][-1]["language_tag"].startswith("en_")]
    mixed = [r for r in native if any(e["language_tag"].startswith("en_") for e in r.get("item_keywords", []))]
    assert 20 < len(native) < 120 and 5 < len(mixed) < len(native)
    assert sum(not r["item_name"][-1]["value"].isascii() for r in records) >= 10
    assert 3 <= sum("main_image_id" not in r for r in records) <= 12
    per_item = collections.Counter(r["item_id"] for r in records)
    assert sum(c == 2 for c in per_item.values()) >= 10


def test_image_quirks(sample):
    root, records, _, truth = sample
    images = pd.read_csv(root / "images" / "metadata" / "images.csv.gz")
    assert list(images.columns) == ["image_id", "height", "width", "path"]
    assert images.image_id.is_unique and images.image_id.str.len().eq(11).all()
    assert images.path.str.fullmatch(r"([0-9a-f]{2})/\1[0-9a-f]{6}\.(jpg|png)").all()
    assert set(PROBLEM_IMAGE_IDS) | set(GENERIC_IMAGE_IDS) <= set(images.image_id)
    usage = collections.Counter(i for r in records for i in [r.get("main_image_id"), *r.get("other_image_id", [])] if i)
    assert set(usage) <= set(images.image_id)
    items_per_image = collections.defaultdict(set)
    for r in records:
        for image_id in [r.get("main_image_id"), *r.get("other_image_id", [])]:
            items_per_image[image_id].add(r["item_id"])
    assert len(items_per_image[GENERIC_IMAGE_IDS[0]]) > 50  # exercises curation's "shared by > 50 items" rule
    assert sorted(len(v) for k, v in items_per_image.items() if k not in GENERIC_IMAGE_IDS)[-1] < 50
    assert ((images.width / images.height) > 4).sum() >= 2
    assert any(images.set_index("image_id").loc[r["main_image_id"]].pipe(lambda x: x.width / x.height > 4)
               for r in records if "main_image_id" in r)  # a banner as a main image
    assert images.path.str.endswith(".png").sum() >= 3
    merged = images.merge(truth, on="image_id")
    for row in merged[merged.defect != "missing"].sample(20, random_state=0).itertuples():
        with Image.open(root / "images" / "small" / row.path_x) as im:
            assert im.size == (row.file_width, row.file_height)
            assert row.width >= 4 * im.width and row.height >= 4 * im.height  # original size, not the file's


def test_every_image_decodes_except_the_deliberate_defects(sample):
    root, _, _, truth = sample
    broken = {}
    for row in truth.itertuples():
        path = root / "images" / "small" / row.path
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, FileNotFoundError) as e:
            broken[row.image_id] = type(e).__name__
    expected = truth[truth.defect.isin(["truncated", "empty", "missing"])]
    assert set(broken) == set(expected.image_id) == set(PROBLEM_IMAGE_IDS)
    mislabeled = truth[truth.defect == "png_named_jpg"].path.item()
    assert mislabeled.endswith(".jpg") and Image.open(root / "images" / "small" / mislabeled).format == "PNG"


def test_without_defects_everything_decodes(tmp_path):
    root = write_sample(tmp_path / "clean", n_listings=60, seed=1, defects=False)
    records, malformed = read_records(root)
    truth = read_sample_truth(root)
    assert malformed == 0 and len(records) == 60 and (truth.defect == "").all()
    for row in truth.itertuples():
        with Image.open(root / "images" / "small" / row.path) as im:
            im.load()


def _colour_and_count(args):
    path, color, n_parts = args
    with Image.open(path) as im:
        return dominant_color(im) == color, count_parts(im) == n_parts


def test_pictures_agree_with_metadata(sample):
    root, records, _, truth = sample
    products = truth[(truth.kind == "product") & truth.defect.isin(["", "png_named_jpg"])]
    jobs = [(root / "images" / "small" / r.path, r.color, int(r.n_parts)) for r in products.itertuples()]
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_colour_and_count, jobs, chunksize=16))
    wrong = [job for job, ok in zip(jobs, results) if not all(ok)]
    assert not wrong, wrong[:5]
    facts = truth.set_index("image_id")
    checked = 0
    for r in records:
        image_id = r.get("main_image_id")
        if image_id is None or facts.loc[image_id, "kind"] != "product":
            continue
        color, shape, n_parts = facts.loc[image_id, "color"], facts.loc[image_id, "shape"], int(facts.loc[image_id, "n_parts"])
        assert color in COLORS
        assert r[PARTS_FIELD] == [{"value": n_parts}]
        if "color" in r:
            assert r["color"][0]["standardized_values"] == [color.title()]
        for entry in r["item_name"]:
            if entry["language_tag"].startswith("en_"):
                assert (f"Set of {n_parts} " in entry["value"]) == (n_parts > 1)
                assert shape.title() in entry["value"] and r["product_type"][0]["value"] != ""
        if "item_shape" in r and r["item_shape"][0]["language_tag"].startswith("en_"):
            assert r["item_shape"][0]["value"].lower() == shape
        checked += 1
    assert checked > 250


def test_refuses_to_overwrite_and_bad_input(tmp_path):
    write_sample(tmp_path / "s", n_listings=10, seed=0)
    with pytest.raises(FileExistsError):
        write_sample(tmp_path / "s", n_listings=10, seed=0)
    write_sample(tmp_path / "s", n_listings=12, seed=0, overwrite=True)
    assert len(read_records(tmp_path / "s")[0]) == 12
    with pytest.raises(ValueError):
        write_sample(tmp_path / "t", n_listings=0)
    with pytest.raises(FileNotFoundError):
        read_sample_truth(tmp_path / "nowhere")


def _root_in_process(cache: str) -> str:
    import os
    os.environ["ABOVQA_CACHE"] = cache
    return str(sample_root(n_listings=40, seed=2))


def test_sample_root_builds_once_even_when_processes_race(tmp_path):
    cache = str(tmp_path / "cache")
    with ProcessPoolExecutor(2) as pool:
        roots = list(pool.map(_root_in_process, [cache] * 4))
    assert len(set(roots)) == 1
    root = Path(roots[0])
    siblings = list(root.parent.iterdir())
    assert siblings == [root], siblings  # the losers' temporary trees are gone
    assert len(read_records(root)[0]) == 40
    before = root.stat().st_mtime_ns
    assert _root_in_process(cache) == str(root) and root.stat().st_mtime_ns == before

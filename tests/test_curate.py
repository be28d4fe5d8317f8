"""abovqa.curate: every preset, the split invariants, bad images and the papermill run of the pipeline notebook."""
import json
import os
import subprocess

import pandas as pd
import pytest
from PIL import Image

from conftest import BIN, REPO
from abovqa.abo import write_images_csv, write_listings
from abovqa.curate import OUTPUT_COLUMNS, PRESETS, PROBLEM_IMAGE_IDS, curate, listing_groups, load_curated


@pytest.fixture(scope="module")
def sample():
    from abovqa.sample import sample_root
    return sample_root()


def read(work):
    kept, root = load_curated(work)
    return kept, pd.read_parquet(work / "curated" / "dropped.parquet"), json.loads((work / "curated" / "stats.json").read_text()), root


def assert_invariants(work):
    kept, dropped, stats, _ = read(work)
    assert list(kept.columns[: len(OUTPUT_COLUMNS)]) == OUTPUT_COLUMNS
    assert len(kept) == stats["kept"] and len(kept) + len(dropped) == stats["steps"]["listings_read"]
    assert dropped.reason.notna().all() and (dropped.reason != "").all()
    assert kept.image_id.is_unique
    for col in ("image_id", "item_id", "group_id"):
        assert kept.groupby(col).split.nunique().max() == 1, f"{col} in two splits"
    assert set(kept.split) <= {"train", "val", "test"}
    counts = list(stats["steps"].values())
    assert counts == sorted(counts, reverse=True), "counts only go down"
    return kept, dropped, stats


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_on_the_sample(sample, tmp_path, preset):
    curate(sample, tmp_path, preset=preset, image_check=False, target_size=100)
    kept, dropped, stats = assert_invariants(tmp_path)
    assert stats["preset"] == preset and len(kept) > 30
    assert (tmp_path / "figures" / "curate_product_types.png").stat().st_size > 1000
    if preset == "seed000":
        assert not set(kept.image_id) & PROBLEM_IMAGE_IDS
        assert kept.name.str.isascii().all() and (kept.keywords.map(len) > 0).all() and kept.color.notna().all()
    if preset == "seed001":
        assert (kept.n_english_attributes >= 5).all()
    if preset == "seed002":
        assert (kept.keywords.map(len) > 0).all()
    if preset == "seed003":
        notes = stats["notes"]["diversity_sample"]
        assert len(kept) <= 100 and notes["target"] == 100
        assert notes["stage1_strata"] + notes["stage2_top_types"] + notes["stage3_rare_types"] + notes["backfill"] == len(kept)
        assert notes["stage1_strata"] > notes["stage2_top_types"] >= 0
        pool = pd.concat([kept.product_type, dropped[dropped.step == "diversity_sampled"].product_type])
        top = pool.value_counts().index[0]
        assert (kept.product_type == top).mean() < (pool == top).mean(), "the sample is more diverse than its pool"
    if preset == "balanced":
        assert kept.item_id.is_unique and kept.language.str.startswith("en").all()
        assert kept.product_type.value_counts().max() <= stats["notes"]["cap_per_type"]
        assert kept.metadata_text.str.startswith("name: ").all() and "n_parts" in kept.columns


def test_max_per_type_caps_and_seed_changes_the_sample_not_the_rules(sample, tmp_path):
    curate(sample, tmp_path / "a", preset="seed000", max_per_type=5, image_check=False)
    curate(sample, tmp_path / "b", preset="seed000", max_per_type=5, image_check=False, seed=7)
    a, b = assert_invariants(tmp_path / "a")[0], assert_invariants(tmp_path / "b")[0]
    assert a.product_type.value_counts().max() == 5 == b.product_type.value_counts().max()
    assert set(a.image_id) != set(b.image_id)


def test_rerun_writes_identical_bytes(sample, tmp_path):
    files = ["curated/listings.parquet", "curated/dropped.parquet", "curated/stats.json"]
    curate(sample, tmp_path, preset="balanced")
    first = {f: (tmp_path / f).read_bytes() for f in files}
    curate(sample, tmp_path, preset="balanced")
    assert {f: (tmp_path / f).read_bytes() for f in files} == first


def test_image_checks_on_the_sample_defects(sample, tmp_path):
    curate(sample, tmp_path, preset="seed002")
    kept, dropped, stats = assert_invariants(tmp_path)
    reasons = set(dropped[dropped.step == "image_ok"].reason)
    assert {"truncated", "missing_file", "banner"} <= reasons, reasons
    root = read(tmp_path)[3]
    assert all((root / p).is_file() for p in kept.image_path)
    assert "PNG" in set(kept.image_format)  # a PNG under a .jpg name decodes: kept, and visible


@pytest.fixture
def tiny_tree(tmp_path):
    "Hand-made tree: every kind of bad image, chains of shared images, a generic image on 60 listings."
    root = tmp_path / "abo"
    small = root / "images" / "small"
    rows, records = [], []

    def image(image_id, make):
        path = f"{image_id[:2]}/{image_id}.jpg"
        (small / path).parent.mkdir(parents=True, exist_ok=True)
        make(small / path)
        rows.append({"image_id": image_id, "height": 256, "width": 256, "path": path})

    def listing(item, main, others=(), domain="amazon.com"):
        records.append({"item_id": item, "domain_name": domain, "main_image_id": main, "other_image_id": list(others),
                        "item_name": [{"language_tag": "en_US", "value": f"Thing {item}"}], "product_type": [{"value": "THING"}],
                        "color": [{"language_tag": "en_US", "value": "Red"}],
                        "item_keywords": [{"language_tag": "en_US", "value": "thing"}]})

    good = lambda p: Image.new("RGB", (64, 64), "red").save(p, format="JPEG")  # noqa: E731
    image("zz_generic", good)
    for i in range(120):
        image(f"ok{i:03d}", good)
        # chains: item i shares its main image with item i+1 as an "other" image, in runs of 4
        listing(f"I{i:03d}", f"ok{i:03d}", [f"ok{i + 1:03d}"] if i % 4 != 3 else [])
    for i in range(60):
        image(f"gm{i:03d}", good)
        listing(f"G{i:03d}", f"gm{i:03d}", ["zz_generic"])
    listing("I000", "ok000", domain="amazon.co.uk")  # the same item in another marketplace
    listing("X_generic_main", "zz_generic")
    noise = Image.effect_noise((256, 256), 80).convert("RGB")
    bad = {
        "bad_trunc": lambda p: (noise.save(p, format="JPEG", quality=95), p.write_bytes(p.read_bytes()[:3000])),
        "bad_zero": lambda p: p.write_bytes(b""),
        "bad_text": lambda p: p.write_text("<html>not an image</html>"),
        "bad_banner": lambda p: Image.new("RGB", (250, 40), "blue").save(p, format="JPEG"),
        "bad_gone": lambda p: None,
    }
    for image_id, make in bad.items():
        image(image_id, make)
        listing(f"L_{image_id}", image_id)
    write_listings(records[:100], root / "listings" / "metadata" / "listings_0.json.gz")
    write_listings(records[100:], root / "listings" / "metadata" / "listings_1.json.gz")
    write_images_csv(rows, root / "images" / "metadata" / "images.csv.gz")
    return root


def test_bad_images_each_get_their_reason(tiny_tree, tmp_path):
    curate(tiny_tree, tmp_path, preset="seed002")
    kept, dropped, stats = assert_invariants(tmp_path)
    by_item = dropped.set_index("item_id").reason.to_dict()
    assert by_item["L_bad_trunc"] == "truncated" and by_item["L_bad_zero"] == "zero_bytes"
    assert by_item["L_bad_text"] == "not_an_image" and by_item["L_bad_banner"] == "banner"
    assert by_item["L_bad_gone"] == "missing_file" and by_item["X_generic_main"] == "not_generic_image"
    assert not kept.item_id.str.startswith("L_").any()


def test_groups_follow_shared_images_and_ignore_generic_ones(tiny_tree, tmp_path):
    curate(tiny_tree, tmp_path, preset="seed002", image_check=False)
    kept, _, stats = assert_invariants(tmp_path)
    assert stats["groups"]["generic_images"] == 1
    chains = kept[kept.item_id.str.startswith("I")].assign(chain=lambda d: d.item_id.str[1:].astype(int) // 4)
    assert (chains.groupby("chain").group_id.nunique() == 1).all(), "listings sharing images form one group"
    assert chains.group_id.nunique() == 30
    generic_listings = kept[kept.item_id.str.startswith("G")]
    assert generic_listings.group_id.nunique() == len(generic_listings) == 60, "a generic image glues nothing"
    assert set(kept.split) == {"train", "val", "test"}


def test_the_same_item_in_two_marketplaces_is_kept_once_by_balanced(tiny_tree, tmp_path):
    curate(tiny_tree, tmp_path, preset="balanced", image_check=False, max_per_type=1000)
    kept, dropped, _ = assert_invariants(tmp_path)
    assert (kept.item_id == "I000").sum() == 1
    assert "one_listing_per_item" in set(dropped[dropped.item_id == "I000"].reason)


def test_listing_groups_direct():
    groups, generic = listing_groups(["a", "b", "c", None], ["1", "2", "3", "4"], [["2"], [], [], []])
    assert groups[0] == groups[1] != groups[2] and groups[3] is None and generic == set()


def test_errors_are_clear(sample, tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        curate(sample, tmp_path, preset="best")
    with pytest.raises(FileNotFoundError, match="run `abovqa curate"):
        load_curated(tmp_path / "empty")


def test_pipeline_notebook_runs_under_papermill(sample, tmp_path):
    out, work = tmp_path / "10_curate.ipynb", tmp_path / "work"
    params = ["-p", "abo_root", str(sample), "-p", "work", str(work), "-p", "preset", "seed003", "-p", "target_size", "80"]
    run = subprocess.run([str(BIN / "papermill"), "-k", "python3", "--cwd", str(tmp_path), str(REPO / "nbs/pipeline/10_curate.ipynb"),
                          str(out)] + params, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert run.returncode == 0, run.stderr[-3000:]
    kept, _, stats = assert_invariants(work)
    assert stats["preset"] == "seed003" and len(kept) <= 80
    assert "curation checks passed" in out.read_text()


def test_odd_metadata_does_not_break_the_outputs(tmp_path):
    "Extra fields of mixed types, numbers where text is expected, listings without item ids."
    root = tmp_path / "abo"
    small = root / "images" / "small" / "aa"
    small.mkdir(parents=True)
    records, rows = [], []
    for i in range(12):
        Image.new("RGB", (32, 32), "red").save(small / f"im{i}.jpg")
        rows.append({"image_id": f"im{i}", "height": 32, "width": 32, "path": f"aa/im{i}.jpg"})
        records.append({"item_id": f"X{i}" if i else None, "domain_name": "amazon.com", "main_image_id": f"im{i}",
                        "item_name": [{"language_tag": "en_US", "value": 12345 if i == 3 else f"Mug {i}"}],
                        "product_type": [{"value": "MUG"}], "color": [{"language_tag": "en_US", "value": "Red"}],
                        "item_keywords": [{"language_tag": "en_US", "value": "mug"}],
                        "gift_wrap": "yes" if i % 2 else 1})
    write_listings(records, root / "listings" / "metadata" / "listings_0.json.gz")
    write_images_csv(rows, root / "images" / "metadata" / "images.csv.gz")
    stats = curate(root, tmp_path / "work", preset="balanced")
    kept, dropped, _ = assert_invariants(tmp_path / "work")
    assert stats["steps"]["has_item_id"] == 11 and dropped.loc[dropped.item_id.isna(), "reason"].tolist() == ["has_item_id"]
    assert "12345" in set(kept.name) and set(kept.gift_wrap) == {"yes", "1"}


# ---- the speed-up changes nothing: outputs against fingerprints of the implementation before it ----------------

import curate_fingerprint as fp  # noqa: E402

REFERENCE = json.loads((REPO / "tests" / "data" / "curate_reference.json").read_text())


@pytest.fixture(scope="module")
def damaged(sample, tmp_path_factory):
    return fp.damaged_copy(sample, tmp_path_factory.mktemp("damaged") / "abo")


@pytest.mark.parametrize("name,kwargs", fp.CASES + fp.DAMAGED, ids=[n for n, _ in fp.CASES + fp.DAMAGED])
def test_outputs_match_the_reference_implementation(sample, damaged, tmp_path, name, kwargs):
    root = damaged if name.startswith("damaged") else sample
    assert fp.run_case(root, tmp_path, kwargs) == REFERENCE[name]


def _outputs(work):
    return {f: (work / "curated" / f).read_bytes() for f in ("listings.parquet", "dropped.parquet", "stats.json")}


def test_a_second_run_reads_the_cached_parse_and_writes_the_same_bytes(sample, tmp_path, monkeypatch):
    import abovqa.abo as abo
    root = tmp_path / "abo"
    import shutil
    shutil.copytree(sample, root)  # a tree of its own: the cache key holds the files' paths
    curate(root, tmp_path / "a", preset="seed002", image_check=False)
    parsed = []
    real = abo._parse
    monkeypatch.setattr(abo, "_parse", lambda *a: parsed.append(a) or real(*a))
    curate(root, tmp_path / "b", preset="seed002", image_check=False)
    assert parsed == [], "the second run parsed nothing"
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")
    curate(root, tmp_path / "c", preset="seed002", image_check=False, listings_cache=False)
    assert len(parsed) == 1 and _outputs(tmp_path / "c") == _outputs(tmp_path / "a")
    # touching a listings file (new mtime), then changing its content: parsed again, and the change shows
    path = sorted((root / "listings" / "metadata").glob("listings_*.json.gz"))[0]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    curate(root, tmp_path / "d", preset="seed002", image_check=False)
    assert len(parsed) == 2 and _outputs(tmp_path / "d") == _outputs(tmp_path / "a")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short: a truncated download
    stats = curate(root, tmp_path / "e", preset="seed002", image_check=False)
    assert len(parsed) == 3 and stats["read_errors"]["truncated_files"] == [str(path)]
    assert stats["steps"]["listings_read"] < json.loads((tmp_path / "a" / "curated" / "stats.json").read_text())["steps"]["listings_read"]
    missing = tmp_path / "gone"
    shutil.copytree(root, missing)
    listings = sorted((missing / "listings" / "metadata").glob("listings_*.json.gz"))
    with pytest.raises(FileNotFoundError):
        from abovqa.abo import load_listings
        load_listings([*listings, missing / "listings" / "metadata" / "listings_z.json.gz"], cache=True)


def test_parsing_in_worker_processes_matches_the_reference(damaged, tmp_path, monkeypatch):
    "The worker-process parse (used above 8 MB of listings) on a tree with malformed lines and a truncated file."
    import abovqa.abo as abo
    monkeypatch.setattr(abo, "_PARALLEL_BYTES", 0)
    used = []
    real = abo._parse_in_processes
    monkeypatch.setattr(abo, "_parse_in_processes", lambda *a: used.append(a) or real(*a))
    name, kwargs = fp.DAMAGED[1]
    assert fp.run_case(damaged, tmp_path, dict(kwargs, workers=2, listings_cache=False)) == REFERENCE[name] and used


def test_holdout_types_moves_whole_product_types_to_the_ood_split(sample, tmp_path):
    from abovqa.curate import OOD_SPLIT, pick_holdout_types
    stats = curate(sample, tmp_path, preset="balanced", image_check=False, holdout_types=1)
    kept, dropped, _ = read(tmp_path)[:3]
    held = stats["notes"]["holdout_types"]
    assert len(held) == 1 and stats["params"]["holdout_types"] == 1
    assert (kept.product_type == held[0]).sum() > 0 and set(kept.loc[kept.product_type == held[0], "split"]) == {OOD_SPLIT}
    assert held[0] not in set(kept.loc[kept.split.isin(["train", "val", "test"]), "product_type"]), "no held-out item in train/val/test"
    assert stats["splits"][OOD_SPLIT] == (kept.split == OOD_SPLIT).sum() and {"train", "val", "test"} <= set(kept.split)
    for col in ("image_id", "item_id", "group_id"):
        assert kept.groupby(col).split.nunique().max() == 1, f"{col} in two splits"
    assert len(kept) + len(dropped) == stats["steps"]["listings_read"]
    # the same seed holds out the same type for any preset; another seed may pick another
    again = curate(sample, tmp_path / "b", preset="seed002", image_check=False, holdout_types=1)
    assert again["notes"]["holdout_types"] == held
    from abovqa.abo import find_abo_files, load_listings
    listings = load_listings(find_abo_files(sample))
    assert held == pick_holdout_types(listings.product_type, listings.item_id, 1, seed=42)  # the rule counts every listing read
    with pytest.raises(ValueError, match="product types have 10 items or more"):
        curate(sample, tmp_path / "c", preset="balanced", image_check=False, holdout_types=50)

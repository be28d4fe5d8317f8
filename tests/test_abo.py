"""abovqa.abo: the readers on files in the exact ABO format (hand-made edge cases and the embedded sample)."""
import gzip

import pandas as pd
import pytest

from abovqa.abo import (AboFiles, find_abo_files, flatten_listing, iter_listing_records, load_listings, pick_all,
                        pick_language, read_images_csv, write_images_csv, write_listings)


def tagged(tag, *values):
    return [{"language_tag": tag, "value": v} for v in values]


RECORDS = [
    {"item_id": "B1", "domain_name": "amazon.com", "main_image_id": "m1", "other_image_id": ["o1"],
     "item_name": tagged("fr_FR", "Chaise") + tagged("en_AU", "Chair AU") + tagged("en_US", "Chair US"),
     "product_type": [{"value": "CHAIR"}], "color": [{"language_tag": "en_US", "value": "Navy", "standardized_values": ["Blue"]}],
     "item_keywords": tagged("en_US", "a", "A ", "b") + tagged("de_DE", "c"), "number_of_items": [{"value": 4}]},
    {"item_id": "B2", "domain_name": "amazon.co.jp", "item_name": tagged("ja_JP", "椅子")},
    {},
]
IMAGES = [{"image_id": "m1", "height": 10, "width": 20, "path": "m1/m1.jpg"},
          {"image_id": "1E5", "height": 30, "width": 40, "path": "1e/1E5.jpg"}]


@pytest.fixture
def kaggle_like(tmp_path):
    "A Kaggle-style copy: other folder names, uncompressed csv and listings, images folder elsewhere."
    root = tmp_path / "input"
    write_listings(RECORDS[:2], root / "abo-listings" / "listings" / "metadata" / "listings_0.json")
    write_listings(RECORDS[2:], root / "abo-listings" / "listings" / "metadata" / "listings_1.json.gz")
    write_images_csv(IMAGES, root / "abo-images-small" / "images" / "metadata" / "images.csv")
    (root / "abo-images-small" / "images" / "small" / "m1").mkdir(parents=True)
    (root / "abo-images-small" / "images" / "small" / "m1" / "m1.jpg").write_bytes(b"x")
    return root


def test_find_abo_files_by_glob_in_a_kaggle_layout(kaggle_like):
    files = find_abo_files(kaggle_like)
    assert isinstance(files, AboFiles)
    assert [p.name for p in files.listings] == ["listings_0.json", "listings_1.json.gz"]
    assert files.images_csv.name == "images.csv"
    assert files.images_root == kaggle_like / "abo-images-small" / "images" / "small"


def test_find_abo_files_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_abo_files(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="listings"):
        find_abo_files(tmp_path)
    write_listings(RECORDS, tmp_path / "listings_0.json.gz")
    with pytest.raises(FileNotFoundError, match="images.csv"):
        find_abo_files(tmp_path)


def test_gzip_and_plain_files_and_malformed_lines(kaggle_like, tmp_path):
    path = kaggle_like / "abo-listings" / "listings" / "metadata" / "listings_0.json"
    with open(path, "ab") as f:
        f.write(b"not json\n[1, 2]\n\n")
    errors = {}
    records = list(iter_listing_records(find_abo_files(kaggle_like).listings, errors))
    assert len(records) == 3 and errors["malformed_lines"] == 2


def test_truncated_gzip_keeps_complete_lines(tmp_path):
    path = write_listings(RECORDS[:1] * 2000, tmp_path / "listings_0.json.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    errors = {}
    records = list(iter_listing_records(path, errors))
    assert 0 < len(records) < 2000 and errors["truncated_files"] == [str(path)]
    assert all(r["item_id"] == "B1" for r in records)


def test_concatenated_gzip_members(tmp_path):
    path = tmp_path / "listings_0.json.gz"
    path.write_bytes(gzip.compress(b'{"item_id": "a"}\n') + gzip.compress(b'{"item_id": "b"}\n'))
    assert [r["item_id"] for r in iter_listing_records(path)] == ["a", "b"]


def test_language_policy():
    name = RECORDS[0]["item_name"]
    assert pick_language(name) == "Chair US"
    assert pick_language(name, prefer=("en_*",)) == "Chair AU"  # first English value in order
    assert pick_language(name, prefer=("fr_*", "en_US")) == "Chaise"
    assert pick_language(RECORDS[1]["item_name"]) is None
    assert pick_language([{"value": "CHAIR"}], prefer=("de_DE",)) == "CHAIR"
    assert pick_language([{"language_tag": "en_US", "value": ""}, {"language_tag": "en_GB", "value": "x"}]) == "x"
    assert pick_all(RECORDS[0]["item_keywords"]) == ["a", "b"]
    assert pick_all(RECORDS[0]["item_keywords"], prefer=("*",)) == ["a", "b", "c"]
    assert pick_language("garbage") is None and pick_all([None, 3]) == []


def test_flatten_listing_fields_and_missing_values():
    row = flatten_listing(RECORDS[0])
    assert (row["name"], row["language"], row["color"], row["color_standardized"]) == ("Chair US", "en_US", "Navy", "Blue")
    assert row["other_image_ids"] == ["o1"] and row["keywords"] == ["a", "b"] and row["n_parts"] == 4
    assert row["name_languages"] == ["fr_FR", "en_AU", "en_US"]
    assert row["n_english_attributes"] == 4  # color, product_type, keywords, name
    empty = flatten_listing({})
    assert empty["item_id"] is None and empty["keywords"] == [] and empty["other_image_ids"] == []


def test_read_images_csv_keeps_ids_as_strings(kaggle_like):
    df = read_images_csv(find_abo_files(kaggle_like).images_csv)
    assert list(df.columns) == ["image_id", "height", "width", "path"]
    assert df.image_id.tolist() == ["m1", "1E5"] and df.width.tolist() == [20, 40]


def test_read_images_csv_rejects_other_csvs(tmp_path):
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "images.csv", index=False)
    with pytest.raises(ValueError, match="missing columns"):
        read_images_csv(tmp_path / "images.csv")


def test_load_listings_from_root_files_or_one_file(kaggle_like):
    files = find_abo_files(kaggle_like)
    df = load_listings(kaggle_like)
    assert len(df) == 3 and df.attrs["read_errors"]["malformed_lines"] == 0
    assert df.name.tolist()[0] == "Chair US" and pd.isna(df.name.tolist()[1])
    assert len(load_listings(files.listings)) == 3 and len(load_listings(files.listings[0])) == 2
    assert load_listings(files, prefer=("ja_JP",)).name.tolist()[1] == "椅子"


def test_load_listings_on_the_sample():
    from abovqa.sample import sample_root
    files = find_abo_files(sample_root())
    df = load_listings(files)
    assert len(files.listings) == 16 and len(df) >= 250
    assert df.attrs["read_errors"]["malformed_lines"] >= 1  # the sample carries malformed lines
    assert df.language.isna().any() and (df.language == "en_US").any()
    assert df.n_parts.between(1, 10).all()
    images = read_images_csv(files.images_csv)
    assert df.main_image_id.dropna().isin(images.image_id).mean() > 0.9


def test_worker_processes_give_what_one_process_gives(kaggle_like, monkeypatch):
    "Files parsed by worker interpreters: same rows, extras of mixed types, read errors in file order."
    import abovqa.abo as abo
    meta = kaggle_like / "abo-listings" / "listings" / "metadata"
    write_listings([{"item_id": "E1", "gift_wrap": 1}, {"item_id": "E2", "gift_wrap": "yes"}], meta / "listings_2.json.gz")
    with open(meta / "listings_0.json", "ab") as f:
        f.write(b"not json\n")
    one = load_listings(kaggle_like, workers=1)
    monkeypatch.setattr(abo, "_PARALLEL_BYTES", 0)
    used = []
    real = abo._parse_in_processes
    monkeypatch.setattr(abo, "_parse_in_processes", lambda *a: used.append(a) or real(*a))
    many = load_listings(kaggle_like, workers=2)
    assert used, "the worker processes ran"
    pd.testing.assert_frame_equal(one, many)
    assert many.attrs == one.attrs and one.attrs["read_errors"]["examples"] == ["listings_0.json:3"]
    assert many.gift_wrap.tolist()[-2:] == [1, "yes"] and many.n_parts.tolist()[0] == 4
    arrow = load_listings(kaggle_like, workers=2, lists="arrow")
    assert [list(k) for k in arrow.keywords] == one.keywords.tolist()


def test_listings_cache_hits_and_invalidates(kaggle_like, monkeypatch):
    import os

    import abovqa.abo as abo
    first = load_listings(kaggle_like, cache=True)
    parsed = []
    real = abo._parse
    monkeypatch.setattr(abo, "_parse", lambda *a: parsed.append(a) or real(*a))
    again = load_listings(kaggle_like, cache=True)
    pd.testing.assert_frame_equal(first, again)
    assert again.attrs == first.attrs and parsed == [], "a second read of unchanged files parses nothing"
    path = find_abo_files(kaggle_like).listings[0]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_listings(kaggle_like, cache=True)
    assert len(parsed) == 1, "a touched file is parsed again"
    with open(path, "ab") as f:
        f.write(b'{"item_id": "B9"}\n')
    assert "B9" in load_listings(kaggle_like, cache=True).item_id.tolist() and len(parsed) == 2

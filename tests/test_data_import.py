"""`mor data import/check/show`: a member's own CSV/JSONL/Parquet + images -> a dataset, all or nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpus import build_client_pairs, save_pairs
from corpus.checks import check_dataset
from corpus.dataset import dataset_info, load_pair_dataset, load_prompt_dataset
from corpus.errors import FormatError
from corpus.importer import DataImportError, import_table
from mor_cli.main import main

HEADER = "image,question,domain,gold,chosen,rejected,site\n"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    (root / "xr").mkdir(parents=True)
    Image.new("RGB", (512, 300), "red").save(root / "xr/a.jpg")
    ramp = (np.arange(200 * 100).reshape(100, 200) * 3).astype(np.uint16)
    Image.fromarray(ramp).save(root / "xr/b16.png")  # 16-bit greyscale, values up to ~60000
    Image.new("L", (64, 64), 7).save(root / "c.tif")
    Image.new("RGB", (40, 30), "blue").save(root / "d.bmp")
    return root


def _csv(tmp_path: Path, body: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + body, encoding="utf-8")
    return path


GOOD = ("xr/a.jpg,What colour?,radiology,red,Red.,Blue.,A\n"
        "xr/b16.png,Is there a gradient?,radiology,yes,Yes.,No.,B\n"
        "c.tif,Is it dark?,dermatology,,It is dark.,It is bright.,A\n"
        "d.bmp,Which colour?,dermatology,blue,Blue.,Green.,C\n")


def test_import_pairs_any_format_size_and_domain(tmp_path, images):
    info = import_table(_csv(tmp_path, GOOD), images, tmp_path / "ds", kind="pairs")
    assert (info.kind, info.count, info.domains) == ("pairs", 4, {"dermatology": 2, "radiology": 2})
    data = load_pair_dataset(tmp_path / "ds")
    assert data.info.digest == info.digest and len(data) == 4
    first, ramp = data.pairs[0], data.pairs[1]
    assert first.prompt.image.size == (512, 300) and first.prompt.image.mode == "RGB"  # kept at its own size
    assert first.meta == {"site": "A"} and first.prompt.gold == "red" and data.pairs[2].prompt.gold is None
    pixels = np.asarray(ramp.prompt.image)[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255  # 16-bit scaled to its own range, not clipped
    record = json.loads((tmp_path / "ds/pairs.jsonl").read_text().splitlines()[1])
    assert record["source"]["image_mode"] == "I;16" and len(record["source"]["image_sha256"]) == 64


def test_jsonl_and_parquet_tables_and_prompts_kind(tmp_path, images):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "p1", "image": "xr/a.jpg", "question": "What is shown?", "gold": None, "ward": 3},
            {"id": "p2", "image": "c.tif", "question": "Is it dark?", "gold": "yes", "ward": 4}]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    a = import_table(jsonl, images, tmp_path / "a")
    b = import_table(tmp_path / "p.parquet", images, tmp_path / "b")
    assert a.digest == b.digest and a.domains == {"general": 2}  # no domain column -> "general"
    prompts = load_prompt_dataset(tmp_path / "a")
    assert [p.prompt_id for p in prompts] == ["p1", "p2"] and prompts.meta["p2"] == {"ward": 4}
    with pytest.raises(FormatError, match="is a prompts dataset"):
        load_pair_dataset(tmp_path / "a")


def test_today_layout_keeps_loading(tmp_path):
    save_pairs(build_client_pairs("medical", 4, seed=0), tmp_path / "old")
    data = load_pair_dataset(tmp_path / "old")
    assert data.info.layout == "pairs.jsonl/1" and len(data) == 4 and data.info.domains == {"medical": 4}
    assert dataset_info(tmp_path / "old").digest == data.info.digest
    assert check_dataset(tmp_path / "old").problems == []


def _refused(tmp_path: Path, images: Path, body: str, match: str, **kwargs) -> None:
    table = body if isinstance(body, Path) else _csv(tmp_path, body)
    with pytest.raises(FormatError, match=match):
        import_table(table, images, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left


@pytest.mark.parametrize(("row", "match"), [
    ("nope.png,Q?,x,,a,b,A\n", r"t.csv:6: image: nope.png: no such file"),
    ("../outside.png,Q?,x,,a,b,A\n", r"t.csv:6: image: '../outside.png' escapes the images folder .*'\.\.'"),
    ("/etc/hosts,Q?,x,,a,b,A\n", r"t.csv:6: image: '/etc/hosts' is an absolute path"),
    ("c.tif,  ,x,,a,b,A\n", r"t.csv:6: question: empty"),
    ("c.tif,Q?,,,a,b,A\n", r"t.csv:6: domain: empty"),
    ("c.tif,Q?,x,,,b,A\n", r"t.csv:6: chosen: empty"),
])
def test_bad_rows_are_named_and_nothing_is_written(tmp_path, images, row, match):
    (tmp_path / "outside.png").write_bytes(b"x")
    _refused(tmp_path, images, GOOD + row, match, kind="pairs")


def test_bad_files_symlink_bomb_truncated_non_utf8_duplicate_id(tmp_path, images):
    os.symlink(tmp_path / "secret.png", images / "link.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    _refused(tmp_path, images, "link.png,Q?,x,,a,b,A\n", r"escapes the images folder .*symbolic link", kind="pairs")
    data = (images / "c.tif").read_bytes()
    (images / "cut.png").write_bytes((images / "xr/b16.png").read_bytes()[:200])
    _refused(tmp_path, images, "xr/cut.png,Q?,x,,a,b,A\n", r"no such file", kind="pairs")
    (images / "xr/cut.png").write_bytes((images / "xr/b16.png").read_bytes()[:200])
    _refused(tmp_path, images, "xr/cut.png,Q?,x,,a,b,A\n", r"t.csv:2: image: xr/cut.png: truncated or corrupt",
             kind="pairs")
    (images / "junk.png").write_bytes(data[:0] + b"not an image")
    _refused(tmp_path, images, "junk.png,Q?,x,,a,b,A\n", r"not an image Pillow can read", kind="pairs")
    Image.new("1", (5000, 5000)).save(images / "bomb.png")  # tiny file, 25 Mpx when decoded
    _refused(tmp_path, images, "bomb.png,Q?,x,,a,b,A\n", r"25000000 pixels exceeds the cap of 1000000",
             kind="pairs", max_pixels=1_000_000)
    latin = tmp_path / "latin.csv"
    latin.write_bytes((HEADER + "c.tif,Caf\u00e9?,x,,a,b,A\n").encode("latin-1"))
    _refused(tmp_path, images, latin, r"latin.csv:2: not UTF-8 text \(byte 0xe9 at column 10\)", kind="pairs")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "image": "c.tif", "question": "Q?"}\n{"id": "a", "image": "d.bmp", "question": "R"}\n')
    _refused(tmp_path, images, dup, r"dup.jsonl:2: id: duplicate id 'a' \(first at .*dup.jsonl:1\)")


def test_existing_out_is_never_overwritten(tmp_path, images):
    (tmp_path / "out").mkdir()
    with pytest.raises(FormatError, match="already exists"):
        import_table(_csv(tmp_path, GOOD), images, tmp_path / "out", kind="pairs")


def test_every_problem_is_listed_at_once(tmp_path, images):
    with pytest.raises(DataImportError) as caught:
        import_table(_csv(tmp_path, "nope.png,Q?,x,,a,b,A\nc.tif,,x,,a,b,A\n"), images, tmp_path / "o", kind="pairs")
    assert len(caught.value.problems) == 2


def test_check_lists_quality_problems_and_cli(tmp_path, images, capsys):
    body = GOOD + "c.tif,Is it dark?,dermatology,,Same.,same.,A\nd.bmp,Which colour?,dermatology,blue,Green.,Blue.,C\n"
    table = _csv(tmp_path, body)
    assert main(["data", "import", "--table", str(table), "--images", str(images), "--out",
                 str(tmp_path / "ds"), "--kind", "pairs"]) == 0
    assert main(["data", "check", str(tmp_path / "ds")]) == 2
    out = capsys.readouterr().out
    assert "domains: dermatology 4, radiology 2" in out and "512x300 (1)" in out
    assert "pairs.jsonl:5: rejected: equals chosen" in out
    assert "pairs.jsonl:6: chosen: contradicts line 4" in out
    assert main(["data", "show", str(tmp_path / "ds"), "--n", "1"]) == 0
    assert "What colour?" in capsys.readouterr().out
    records = tmp_path / "ds/pairs.jsonl"
    records.write_text(records.read_text().replace("Red.", "Crimson."))
    assert main(["data", "check", str(tmp_path / "ds")]) == 2
    assert "dataset.json:1: digest: differs" in capsys.readouterr().out
    with pytest.raises(FormatError, match="digest differs"):
        load_pair_dataset(tmp_path / "ds")
    assert main(["data", "import", "--table", str(tmp_path / "missing.csv"), "--images", str(images),
                 "--out", str(tmp_path / "x")]) == 2
    assert "missing.csv: table not found" in capsys.readouterr().err


def test_check_flags_duplicate_prompts(tmp_path, images):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"image": "c.tif", "question": "Q?"}\n{"image": "c.tif", "question": " q? "}\n')
    import_table(jsonl, images, tmp_path / "p")
    problems = check_dataset(tmp_path / "p").problems
    assert problems == [f"{tmp_path / 'p/prompts.jsonl'}:2: prompt.question: duplicate prompt "
                        "(same image and question as line 1)"]

"""Storage round-trip and precise loading errors (file:line, image file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpus import FormatError, MissingImageError, build_client_pairs, load_pairs, save_pairs


@pytest.fixture(scope="module")
def pairs():
    return build_client_pairs("detail", 6, seed=1) + build_client_pairs("finance", 6, seed=1)


def test_round_trip_preserves_every_field(pairs, tmp_path: Path) -> None:
    save_pairs(pairs, tmp_path)
    loaded = load_pairs(tmp_path)
    assert loaded == pairs  # dataclass equality: ids, texts, facts, meta and image pixels
    # shared prompts store their image once
    assert len(list((tmp_path / "images").glob("*.png"))) == len({p.prompt.prompt_id for p in pairs})


def test_corrupt_line_names_file_and_line(pairs, tmp_path: Path) -> None:
    save_pairs(pairs, tmp_path)
    path = tmp_path / "pairs.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]  # truncate line 3
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=rf"{path}:3: invalid JSON"):
        load_pairs(tmp_path)


def test_missing_key_and_empty_domain_are_named(pairs, tmp_path: Path) -> None:
    save_pairs(pairs, tmp_path)
    path = tmp_path / "pairs.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    del records[0]["chosen"]
    records[4]["prompt"]["domain"] = " "
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(FormatError, match=rf"{path}:1: key 'chosen': missing"):
        load_pairs(tmp_path)
    records[0]["chosen"] = "x"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(FormatError, match=rf"{path}:5: .*domain must be a non-empty string"):
        load_pairs(tmp_path)
    records[4]["prompt"]["domain"] = "radiology"  # domains are free names: any non-empty string loads
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert load_pairs(tmp_path)[4].prompt.domain == "radiology"


def test_missing_or_altered_image_names_the_image(pairs, tmp_path: Path) -> None:
    save_pairs(pairs, tmp_path)
    record = json.loads((tmp_path / "pairs.jsonl").read_text().splitlines()[0])
    image = tmp_path / record["prompt"]["image"]
    image.write_bytes(image.read_bytes() + b"x")
    with pytest.raises(MissingImageError, match="does not match its checksum"):
        load_pairs(tmp_path)
    image.unlink()
    with pytest.raises(MissingImageError, match=rf"{image}: image referenced at .*pairs.jsonl:1"):
        load_pairs(tmp_path)


def test_image_path_escape_is_refused(pairs, tmp_path: Path) -> None:
    save_pairs(pairs[:1], tmp_path)
    path = tmp_path / "pairs.jsonl"
    record = json.loads(path.read_text())
    record["prompt"]["image"] = "../../etc/passwd.png"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(FormatError, match=r":1: key 'prompt.image'"):
        load_pairs(tmp_path)


def test_missing_directory_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="pairs.jsonl: not found"):
        load_pairs(tmp_path / "nope")

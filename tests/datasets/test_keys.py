from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedmol.datasets.keys import derive, generate_key_file, key_fingerprint, load_key
from fedmol.errors import InputError


def test_generate_and_load(tmp_path: Path) -> None:
    path = generate_key_file(tmp_path / "k.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key(path)
    assert len(key) == 32
    with pytest.raises(InputError, match="already exists"):
        generate_key_file(path)
    assert load_key(path) == key  # not overwritten


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no key"),
        ("# only a comment\n\n", "holds no key"),
        ("zz" * 40 + "\n", "malformed"),
        ("ab" * 16 + "\n", "too short"),
        ("ab" * 32 + "\n" + "cd" * 32 + "\n", "non-comment lines"),
    ],
)
def test_malformed_keys(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        load_key(path)
    assert "\n" not in str(info.value)


def test_missing_key_says_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="fedmol keygen"):
        load_key(tmp_path / "nope.key")


def test_comments_and_blank_lines_allowed(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "k.key"
    path.write_text(f"# consortium A\n\n  {key.hex()}  \n# end\n")
    assert load_key(path) == key


def test_derive_and_fingerprint(key: bytes, other_key: bytes) -> None:
    assert derive(key, "permutation") != derive(key, "folds")
    assert derive(key, "folds") != derive(other_key, "folds")
    assert len(derive(key, "folds")) == 32
    fp = key_fingerprint(key)
    assert fp == key_fingerprint(key) and fp != key_fingerprint(other_key)
    assert len(fp) == 16 and fp not in key.hex()

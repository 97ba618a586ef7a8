"""Fixtures for training tests (builders in train_sft_fixtures.py)."""
from __future__ import annotations

import pytest
from train_sft_fixtures import make_records, make_validate, recipe_dict

from tasks.store import ArtifactStore


@pytest.fixture
def records():
    return make_records(120)


@pytest.fixture
def prepared(tmp_path, records):
    """(root, recipe, validate manifest, tokenizer manifest)."""
    from tasks.tokens.tokenizer import build_tokenizer

    root = str(tmp_path / "artifacts")
    store = ArtifactStore(root)
    vm = make_validate(store, records)
    recipe = recipe_dict(tmp_path)
    tm = build_tokenizer(root, recipe, vm)
    return root, recipe, vm, tm

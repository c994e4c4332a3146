"""A checkpoint's identity (path, step, weights digest, tokenizer) and what changed since it was recorded."""

from __future__ import annotations

import hashlib

from model.identity import checkpoint_identity, identity_changes
from tests.model.conftest import save_tiny


def test_identity_records_path_step_digest_and_tokenizer(tmp_path):
    run = save_tiny(tmp_path / "run")
    ident = checkpoint_identity(run)
    weights = (run / "checkpoint" / "model.safetensors").read_bytes()
    assert ident["path"] == str(run) and ident["step"] == 3
    assert ident["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert ident["tokenizer"]["name"] == "bytes"
    assert identity_changes(ident, run) == []
    assert identity_changes(ident, run / "checkpoint") == []  # the same checkpoint by its inner folder


def test_replaced_checkpoint_is_named(tmp_path):
    run = save_tiny(tmp_path / "run")
    ident = checkpoint_identity(run)
    save_tiny(run, seed=1)  # retrained at the same path: other weights
    assert identity_changes(ident, run) == ["different weights"]


def test_missing_checkpoint_is_a_change(tmp_path):
    run = save_tiny(tmp_path / "run")
    ident = checkpoint_identity(run)
    (run / "checkpoint" / "model.json").unlink()
    (changes,) = identity_changes(ident, run)
    assert "no readable checkpoint" in changes

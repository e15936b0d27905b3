"""IRRA tokenizer: exact parity with the reference fixture, truncation and special ids."""
from __future__ import annotations

import json

import pytest
import torch

from irra_core.data.tokenizer import EOT_ID, MASK_ID, SOT_ID, get_tokenizer, token_length, tokenize


@pytest.fixture(scope="module")
def cases(fixtures_dir):
    return json.loads((fixtures_dir / "tokenizer_cases.json").read_text(encoding="utf-8"))


@pytest.mark.parity
def test_tokenize_matches_reference_fixture_exactly(cases):
    texts = [c["text"] for c in cases["cases"]]
    ids = tokenize(texts, cases["context_length"])
    assert ids.dtype == torch.long and ids.shape == (len(texts), cases["context_length"])
    mismatched = [(c["kind"], c["text"][:40]) for c, row in zip(cases["cases"], ids) if row.tolist() != c["ids"]]
    assert not mismatched, mismatched


@pytest.mark.parity
def test_untruncated_lengths_match_reference(cases):
    for c in cases["cases"]:
        assert token_length(c["text"]) == c["untruncated_length"], c["kind"]


@pytest.mark.parity
def test_special_ids_and_vocab_size(cases):
    tok = get_tokenizer()
    assert (MASK_ID, SOT_ID, EOT_ID) == (cases["mask_id"], cases["sot_id"], cases["eot_id"])
    assert len(tok.encoder) == cases["vocab_size"]
    assert tokenize("a <|MASK|> b")[0, 2].item() == MASK_ID


def test_truncation_keeps_eot_last_and_padding_is_zero():
    long = " ".join(["red"] * 100)
    row = tokenize(long, 20)[0]
    assert row[0].item() == SOT_ID and row[-1].item() == EOT_ID and (row[1:-1] != 0).all()
    short = tokenize("a man", 10)[0]
    eot = short.tolist().index(EOT_ID)
    assert (short[eot + 1:] == 0).all()


def test_repeated_text_is_consistent_and_decodes():
    a = tokenize(["a woman in a red coat"] * 3 + ["A WOMAN in a red   coat"], 16)
    assert torch.equal(a[0], a[3]) and torch.equal(a[0], a[1])
    tok = get_tokenizer()
    assert tok.decode(tok.encode("a woman in a red coat")).strip() == "a woman in a red coat"


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="caption 1"):
        tokenize(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="context_length"):
        tokenize("x", 1)

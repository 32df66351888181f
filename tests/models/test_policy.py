"""Tests for jaxgrpo.models.policy's token ids: the padding id and the ids that end a completion."""
from __future__ import annotations

import types

from jaxgrpo.models.policy import eos_ids, pad_id


class _Tok:
    def __init__(self, vocab, eos=None, pad=None, unk=None):
        self.vocab, self.eos_token_id, self.pad_token_id, self.unk_token_id = vocab, eos, pad, unk

    def convert_tokens_to_ids(self, tok):
        return self.vocab.get(tok, self.unk_token_id)


def test_pad_id_prefers_pad_then_eos_then_zero():
    assert pad_id(_Tok({}, eos=2, pad=5)) == 5
    assert pad_id(_Tok({}, eos=2)) == 2
    assert pad_id(_Tok({})) == 0


def test_eos_ids_join_config_tokenizer_and_end_of_turn_tokens():
    model = types.SimpleNamespace(config=types.SimpleNamespace(eos_token_ids=(7, 3)))
    tok = _Tok({"<|im_end|>": 11, "<|endoftext|>": 3}, eos=9, unk=0)
    assert eos_ids(model, tok) == (3, 7, 9, 11)  # sorted, 3 once, "<|eot_id|>" is unknown
    none = types.SimpleNamespace(config=types.SimpleNamespace(eos_token_ids=()))
    assert eos_ids(none, _Tok({}, unk=0)) == ()

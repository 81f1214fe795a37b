"""Greedy decoding with the KV cache gives what transformers' own greedy generate gives."""

from __future__ import annotations

import torch

from ctxext.eval.generation import greedy_generate

from support.models import make_model, tokens


class IdsTokenizer:
    """Hands out fixed prompt ids and decodes to the id list, to compare token for token."""

    eos_token_id = None

    def __init__(self, ids):
        self.ids = ids

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        return {"input_ids": self.ids if return_tensors == "pt" else self.ids[0].tolist()}

    def decode(self, ids, skip_special_tokens=True):
        return ids


def test_matches_generate_for_every_family(family):
    model = make_model(family)
    model.generation_config.eos_token_id = None
    prompt = tokens(40)
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, 40:].tolist()
    generated, n_prompt = greedy_generate(model, IdsTokenizer(prompt), "ignored", 8)
    assert generated == expected and n_prompt == 40


def test_stops_at_eos():
    model = make_model("llama")
    prompt = tokens(20)
    with torch.no_grad():
        first = int(model(input_ids=prompt).logits[0, -1].argmax())
    tokenizer = IdsTokenizer(prompt)
    tokenizer.eos_token_id = first
    assert greedy_generate(model, tokenizer, "ignored", 8)[0] == [first]

"""Greedy decoding with the KV cache: the prompt is read once, then one token per step. The prompt's token ids
and the ids that end an answer are the same for every backend (``prompt_ids``, ``stop_ids``)."""

from __future__ import annotations

import torch

from ..model.compat import cache_keyword, returned_cache


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """``prompt`` as a model reads it: with the tokenizer's special tokens."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def stop_ids(generation_config, tokenizer) -> set[int]:
    """The ids that end an answer: the tokenizer's end of sequence and the generation config's."""
    found: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(value, (list, tuple)):
            found.update(value)
        elif value is not None:
            found.add(value)
    return found


@torch.no_grad()
def greedy_generate(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """The greedy continuation of ``prompt`` (special tokens dropped) and the prompt's token count."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=device)
    eos = stop_ids(model.generation_config, tokenizer)
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    keyword = cache_keyword(model)
    generated: list[int] = []
    while True:
        next_id = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        generated.append(int(next_id))
        if generated[-1] in eos or len(generated) >= max_new_tokens:
            break
        out = model(input_ids=next_id, **{keyword: returned_cache(out)}, use_cache=True, logits_to_keep=1)
    return tokenizer.decode(generated, skip_special_tokens=True), input_ids.shape[1]

"""Greedy decoding with the KV cache: the prompt is read once, then one token per step."""

from __future__ import annotations

import torch

from ..model.compat import cache_keyword, returned_cache


def eos_ids(model, tokenizer) -> set[int]:
    """The token ids that end an answer: the tokenizer's end of sequence and the generation config's."""
    ids = (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None))  # either may be a list
    found: set[int] = set()
    for value in ids:
        if isinstance(value, (list, tuple)):
            found.update(value)
        elif value is not None:
            found.add(value)
    return found


@torch.no_grad()
def greedy_generate(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """The greedy continuation of ``prompt`` (special tokens dropped) and the prompt's token count."""
    device = next(model.parameters()).device
    input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=True)["input_ids"].to(device)
    eos = eos_ids(model, tokenizer)
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

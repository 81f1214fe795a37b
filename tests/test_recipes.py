"""Recipe files, PoSE position ids, training data, the public perplexity name, and position ids reaching attention."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ctxext.errors import CtxextError
from ctxext.eval.perplexity import perplexity as eval_perplexity
from ctxext.eval.perplexity import text_ids
from ctxext.model.compat import cache_keyword, returned_cache
from ctxext.recipes import list_recipes, load_recipe, perplexity, pose_position_ids
from ctxext.recipes.data import read_texts

from support.models import FAMILIES, byte_tokenizer, make_model, tokens


def draw(seq_len: int, target: int, seed: int, chunks: int = 2) -> torch.Tensor:
    return pose_position_ids(seq_len, target, chunks, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seq_len,target,chunks", [(16, 64, 2), (16, 64, 4), (32, 1024, 2), (5, 6, 3), (8, 8, 2)])
def test_pose_ids_increase_from_zero_and_stay_below_the_target(seq_len, target, chunks):
    for seed in range(50):
        ids = draw(seq_len, target, seed, chunks)
        assert ids.shape == (seq_len,) and ids.dtype == torch.long
        assert ids[0] == 0
        assert bool((ids.diff() > 0).all())
        assert int(ids.max()) < target
        assert int((ids.diff() > 1).sum()) <= chunks - 1  # one jump per chunk boundary at most


def test_pose_ids_are_deterministic_for_a_seed():
    assert torch.equal(draw(64, 4096, seed=3), draw(64, 4096, seed=3))
    assert not all(torch.equal(draw(64, 4096, seed=3), draw(64, 4096, seed=s)) for s in range(4, 10))


def test_pose_covered_range_is_the_window_plus_the_skips():
    assert torch.equal(draw(32, 32, seed=0), torch.arange(32))  # no room: no skips
    for seed in range(20):
        ids = draw(32, 512, seed, chunks=3)
        assert int(ids[-1]) + 1 == 32 + int((ids.diff() - 1).sum())
    spans = {target: sum(int(draw(32, target, s)[-1]) + 1 for s in range(200)) / 200 for target in (64, 256, 1024)}
    assert 32 < spans[64] < spans[256] < spans[1024]
    seen = torch.zeros(256, dtype=torch.bool)
    for seed in range(300):
        seen[draw(16, 256, seed)] = True
    assert seen.float().mean() > 0.9  # the positions of the whole target length get trained


def test_pose_rejects_a_window_longer_than_the_target():
    with pytest.raises(ValueError, match="above the target length"):
        draw(65, 64, seed=0)


def test_packaged_recipes():
    assert list_recipes() == ["longlora-lite", "pi-lora", "pose-lora"]
    pose, longlora, pi = load_recipe("pose-lora"), load_recipe("longlora-lite"), load_recipe("pi-lora")
    assert (pose.positions, pose.lora_targets, pose.method) == ("pose", "attention", "yarn")
    assert longlora.train_embeddings and longlora.train_norms and longlora.positions == "dense"
    assert pi.method == "pi" and not pi.train_embeddings
    assert pose.with_overrides(seq_len=512, lr=None).seq_len == 512
    with pytest.raises(CtxextError, match="seq_len must be a positive integer"):
        pose.with_overrides(seq_len=0)
    with pytest.raises(CtxextError, match=r"unknown recipe 'pose' \(valid: longlora-lite, pi-lora, pose-lora\)"):
        load_recipe("pose")


def test_training_text_formats_and_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert read_texts(tmp_path / "a.jsonl") == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"text": "one"}\n[1]\n')
    with pytest.raises(CtxextError, match=r"bad.jsonl:2: expected a JSON object with a 'text' field"):
        read_texts(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(CtxextError, match="no text in it"):
        read_texts(tmp_path / "empty.txt")
    with pytest.raises(CtxextError, match="no such file or directory"):
        read_texts(tmp_path / "missing.txt")


def test_the_public_perplexity_is_the_evaluation_one():
    """``ctxext.recipes.perplexity`` keeps its name and signature; the number is ``ctxext.eval``'s, and text is
    tokenized as the eval runner tokenizes its corpus (with the tokenizer's BOS)."""
    model, ids = make_model("llama"), tokens(111)[0]
    assert perplexity(model, ids, 40, stride=20) == eval_perplexity(model, ids, 40, stride=20)
    assert perplexity(model, ids, 40, max_windows=1) == eval_perplexity(model, ids[:41], 40)
    tokenizer = byte_tokenizer()
    byte_model = AutoModelForCausalLM.from_config(LlamaConfig(**{**FAMILIES["llama"]().to_dict(), "vocab_size": 260}))
    text = "Call me Ishmael. Some years ago, never mind how long precisely."
    ids = text_ids(tokenizer, text)
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(text) + 1
    assert perplexity(byte_model, tokenizer, 32, text=text, stride=8) == eval_perplexity(byte_model, ids, 32, stride=8)
    with pytest.raises(CtxextError, match="reads 61 token ids"):
        perplexity(model, tokens(60)[0], 60)


def test_jumping_position_ids_reach_the_rotary_module_and_keep_the_causal_mask():
    """A PoSE window in one forward equals a two-part reference whose second part reads the first from the cache."""
    model = make_model("llama")
    ids = tokens(24)
    positions = torch.cat([torch.arange(10), torch.arange(10, 24) + 30])[None]
    with torch.no_grad():
        whole = model(input_ids=ids, position_ids=positions, attention_mask=torch.ones_like(ids)).logits
        first = model(input_ids=ids[:, :10], position_ids=positions[:, :10], use_cache=True)
        second = model(
            input_ids=ids[:, 10:],
            position_ids=positions[:, 10:],
            **{cache_keyword(model): returned_cache(first)},
            attention_mask=torch.ones_like(ids),
        ).logits
        dense = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        no_mask = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert torch.allclose(whole, torch.cat([first.logits, second], dim=1), atol=1e-5)
    assert not torch.allclose(whole[:, 10:], dense[:, 10:], atol=1e-3)  # the jump changed the rotations
    # Without an attention mask (and without a cache) transformers reads the jump as the start of a new packed
    # sequence and cuts attention there, which is why training always passes one.
    assert not torch.allclose(whole[:, 10:], no_mask[:, 10:], atol=1e-3)

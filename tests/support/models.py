"""Tiny random models of every supported family, built from configs (no downloads), and their inputs.

``NATIVE`` is the native context length of every tiny model; ``FAMILIES`` maps a model type to
its config; ``make_model`` builds one, ``logits`` runs it without gradients, ``tokens`` makes
seeded token ids, ``byte_tokenizer`` an offline byte-level tokenizer, ``word_tokenizer`` a
word-level one over ``WORDS`` (ids below the tiny vocabulary), ``yarn_checkpoint`` a tiny Llama whose
own config ships YaRN scaling, and ``unsupported`` says which method a family refuses.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

NATIVE = 64  # native context length of the tiny models
COMMON = dict(
    vocab_size=128,
    num_hidden_layers=2,
    intermediate_size=64,
    max_position_embeddings=NATIVE,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

FAMILIES = {
    "llama": lambda: LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **COMMON),
    "mistral": lambda: MistralConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=None, **COMMON
    ),
    "qwen2": lambda: Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **COMMON),
    "qwen3": lambda: Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32, **COMMON),
    "phi3": lambda: Phi3Config(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        partial_rotary_factor=0.5,
        original_max_position_embeddings=NATIVE,
        **COMMON,
    ),
    "gpt_neox": lambda: GPTNeoXConfig(hidden_size=64, num_attention_heads=4, rotary_pct=0.25, **COMMON),
    "gemma3_text": lambda: Gemma3TextConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=16,
        **{**COMMON, "num_hidden_layers": 3},
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    ),
}


def unsupported(family: str, method: str) -> str | None:
    """Why ``method`` cannot patch ``family`` (None when it can); extend() refuses these."""
    if family == "phi3" and method not in ("longrope", "ntk"):
        return "transformers' Phi-3 config accepts only the longrope rope type"
    if family == "gemma3_text" and method == "dynamic-yarn":
        return "dynamic-yarn refuses per-layer-type configs"
    return None


def make_model(family: str = "llama", seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    config = FAMILIES[family]()
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return model


def logits(model, input_ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).logits


def tokens(length: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (batch, length), generator=generator)


def byte_tokenizer():
    """A byte-level tokenizer built offline (ids 3..258 are the bytes; 1 = BOS, 2 = EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(sorted(byte_chars))}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


WORDS = "the sky is blue and the grass is green while a river runs down to the sea".split()


def word_tokenizer():
    """A word-level tokenizer over ``WORDS`` (ids 0..3 are <pad>, <s>, </s>, <unk>), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tok.train_from_iterator([" ".join(WORDS)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny_eval_checkpoint(path):
    """A tiny Llama (vocabulary 260) with the byte-level tokenizer, saved together at ``path``."""
    torch.manual_seed(0)
    config = FAMILIES["llama"]()
    config.vocab_size = 260
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def yarn_checkpoint(factor: float = 2.0):
    """A tiny Llama whose own config ships YaRN scaling (like a Qwen or Llama-3 checkpoint would)."""
    config = FAMILIES["llama"]()
    config.rope_parameters = {
        "rope_type": "yarn",
        "factor": factor,
        "rope_theta": 10000.0,
        "original_max_position_embeddings": NATIVE,
    }
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()

"""Training text: a text file, a JSON-lines file or a local Hugging Face dataset folder, as token ids.

Texts are tokenized and joined into one stream (separated by the tokenizer's EOS token);
:class:`WindowSampler` draws training windows from it with their position ids, dense or PoSE.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core.user_files import read_text_file
from ..errors import CtxextError
from .pose import pose_position_ids


def read_texts(path: str | Path) -> list[str]:
    """The texts in ``path``: a .jsonl file ("text" field per line), a saved HF dataset folder, or plain text."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CtxextError(f"data {path}: no such file or directory")
    if path.is_dir():
        texts = _dataset_texts(path)
    elif path.suffix == ".jsonl":
        texts = []
        lines = read_text_file(path, "data file", f"data {path}").splitlines()
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (ValueError, KeyError, TypeError):
                    raise CtxextError(f"data {path}:{number}: expected a JSON object with a 'text' field") from None
    else:
        texts = [read_text_file(path, "data file", f"data {path}")]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise CtxextError(f"data {path}: no text in it")
    return texts


def _dataset_texts(path: Path) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise CtxextError(
            f"data {path} is a folder: reading a saved Hugging Face dataset needs 'pip install datasets'"
        ) from None
    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise CtxextError(f"data {path}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise CtxextError(f"data {path}: the dataset has no 'train' split (splits: {', '.join(dataset)})")
        dataset = dataset["train"]
    if "text" not in dataset.column_names:
        raise CtxextError(f"data {path}: the dataset has no 'text' column (columns: {', '.join(dataset.column_names)})")
    return list(dataset["text"])


def token_ids(texts: list[str], tokenizer) -> torch.Tensor:
    """``texts`` tokenized into one 1-D stream, EOS between texts."""
    ids: list[int] = []
    for text in texts:
        if ids and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def check_token_tensor(data: torch.Tensor) -> None:
    """Training data given as a tensor: whole, non-negative token ids."""
    if data.dtype.is_floating_point or data.dtype.is_complex or data.dtype == torch.bool:
        raise CtxextError(f"token ids must be a tensor of whole numbers, got {data.dtype}")
    if data.numel() and int(data.min()) < 0:
        raise CtxextError(f"token ids must not be negative, got {int(data.min())}")


class WindowSampler:
    """Random windows of ``seq_len`` tokens from ``ids``, with dense or PoSE position ids."""

    def __init__(
        self,
        ids: torch.Tensor,
        seq_len: int,
        target_length: int,
        positions: str,
        chunks: int,
        generator: torch.Generator,
    ):
        self.check(ids, seq_len)
        self.ids, self.seq_len, self.target_length = ids, seq_len, target_length
        self.positions, self.chunks, self.generator = positions, chunks, generator

    @staticmethod
    def check(ids: torch.Tensor, seq_len: int) -> None:
        """Refuse training data too short for one window (``finetune`` asks before the model loads)."""
        if ids.numel() < seq_len + 1:
            raise CtxextError(f"the training data has {ids.numel()} tokens, fewer than seq-len {seq_len} + 1")

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, position_ids), both ``size x seq_len``."""
        starts = torch.randint(0, self.ids.numel() - self.seq_len + 1, (size,), generator=self.generator)
        input_ids = torch.stack([self.ids[s : s + self.seq_len] for s in starts.tolist()])
        if self.positions == "pose":
            position_ids = torch.stack(
                [pose_position_ids(self.seq_len, self.target_length, self.chunks, self.generator) for _ in range(size)]
            )
        else:
            position_ids = torch.arange(self.seq_len).expand(size, -1)
        return input_ids, position_ids

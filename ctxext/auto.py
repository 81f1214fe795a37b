"""``--method auto``: the tune cache (``ctxext tune``'s winners) and the fallback rule, below the API.

``resolve`` picks a concrete method and parameters for a model and target length:

1. the cached ``ctxext tune`` winner for (model path, config.json hash, target length), when there is one;
   for a config-only patch its best config-only candidate (``config_only_winner``: a method stock
   engines load, such as yarn or the searched longrope) where the result names one;
2. otherwise a fixed rule: ``rerope`` with ``log_scaling=True`` where the model is run through
   ctxext (``extend`` on a loaded model, ``ctxext eval``, or a checkpoint reloaded with
   ``ctxext.from_pretrained``); ``yarn`` where only the config is patched for other engines
   (``ctxext patch``), since stock transformers, vLLM and llama.cpp load yarn. The evidence is
   the prose retrieval table on SmolLM2-135M-Instruct in BENCHMARKS.md (RULER's ``niah_single_2``,
   10 prompts per cell, fp32, greedy): at 16k (2x) ReRoPE with log-n scaling found 5/10, the best
   row measured, ahead of LM-Infinite with top-k retrieval (4/10, at about 1.7x its time per
   prompt), yarn and SelfExtend (2/10 each; yarn the best config-only row measured); inside the
   native length (8k, applied for 16k) it found 8/10 against the unpatched model's 6/10, so it
   loses nothing there. Only 2x is measured in prose: the same rule stands for 4x and 8x, where
   no row has a prose cell yet (``ctxext tune`` measures them for your model).

The cache is one JSON file per key in ``$CTXEXT_CACHE`` (default ``~/.cache/ctxext/tune``). Its folder is
checked before any work (``check_cache_dir``: ``tune`` needs to write it, ``auto`` to read it), and a cached
file that is there but damaged or edited is refused, naming the file and the field (``read_cached``), never
taken for "no result". This module reads and writes files only; it never loads a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .checkpoint.atomic import write_json
from .core.registry import get_method
from .core.user_files import permitted, special_kind
from .errors import CtxextError

AUTO = "auto"
RULE_LOADED = ("rerope", {"log_scaling": True})  # the model runs through ctxext
RULE_CONFIG_ONLY = ("yarn", {})  # only config.json (or GGUF metadata) is patched, for stock engines
EVIDENCE = "BENCHMARKS.md, prose retrieval (niah_single_2) at 16k and 8k on SmolLM2"


def is_auto(method: Any) -> bool:
    return isinstance(method, str) and method.strip().lower() == AUTO


def cache_dir() -> Path:
    """``$CTXEXT_CACHE`` if set, else ``~/.cache/ctxext/tune``."""
    override = os.environ.get("CTXEXT_CACHE")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "ctxext" / "tune"


def check_cache_dir(*, writable: bool) -> Path:
    """The cache folder, refused now rather than after the work when it cannot serve: something other than a
    folder there, a folder that cannot be read, or (``writable``: ``tune``) one that cannot be written or
    created."""
    folder = cache_dir()
    label = f"CTXEXT_CACHE={folder}" if os.environ.get("CTXEXT_CACHE") else str(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    kind = special_kind(existing) if existing.exists() else "a broken symbolic link"
    if kind != "a directory":
        what = f"{existing} is {kind or 'a file'}" if existing != folder else f"is {kind or 'a file'}"
        raise CtxextError(f"{label}: {what}, not a folder for the tune cache; set CTXEXT_CACHE to a folder")
    if existing == folder and not permitted(folder, os.R_OK | os.X_OK, 0o444):
        raise CtxextError(f"{label}: the tune cache folder is not readable; set CTXEXT_CACHE to a readable folder")
    if writable and not permitted(existing, os.W_OK | os.X_OK, 0o222):
        where = "the tune cache folder" if existing == folder else f"{existing}, where it would be created,"
        raise CtxextError(f"{label}: {where} is not writable; set CTXEXT_CACHE to a writable folder")
    return folder


def damaged(path: Path, field: str, problem: str) -> CtxextError:
    """The one-line refusal of an edited or damaged cached tune result."""
    return CtxextError(
        f"{path}: damaged tune cache, {field}: {problem}; delete the file or run 'ctxext tune --refresh'"
    )


def config_hash(directory: str | Path) -> str | None:
    """sha256 of a model directory's config.json (None when there is none)."""
    path = Path(directory) / "config.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def model_key(model: str | Path) -> str:
    """The model as the cache names it: the alias as given, otherwise the resolved path."""
    text = str(model)
    return text if not (Path(text).expanduser().exists()) else str(Path(text).expanduser().resolve())


def cache_key(model: str | Path, directory: str | Path, target_length: int) -> str:
    """Key of (model path, config.json hash, target length)."""
    text = f"{model_key(model)}\n{config_hash(directory)}\n{int(target_length)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def cache_path(model: str | Path, directory: str | Path, target_length: int) -> Path:
    return cache_dir() / f"{cache_key(model, directory, target_length)}.json"


def read_cached(model: str | Path, directory: str | Path, target_length: int) -> dict | None:
    """The cached tune result for this key, or None when there is none. A file that is there but is not the
    result ``tune`` wrote (not JSON, a winner that is no method, parameters the method refuses) is refused."""
    path = cache_path(model, directory, target_length)
    if not path.exists() and not path.is_symlink():
        return None
    kind = special_kind(path)
    if kind is not None:
        raise damaged(path, "the file", f"is {kind}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise damaged(path, "the file", f"cannot be read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise damaged(path, "the file", f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise damaged(path, "the file", "not a JSON object")
    _check_pick(path, "winner", data.get("winner"))
    if data.get("config_only_winner") is not None:
        _check_pick(path, "config_only_winner", data["config_only_winner"], stock_loadable=True)
    return data


def _check_pick(path: Path, field: str, pick: Any, *, stock_loadable: bool = False) -> None:
    """A cached choice: {"method": a registered method, "params": its parameters, "label": text}."""
    if not isinstance(pick, dict):
        raise damaged(path, field, f"must be an object with method and params, got {pick!r}")
    method, params = pick.get("method"), pick.get("params", {})
    if not isinstance(method, str) or is_auto(method):
        raise damaged(path, f"{field}.method", f"must be a method name, got {method!r}")
    if not isinstance(params, dict):
        raise damaged(path, f"{field}.params", f"must be an object, got {params!r}")
    if not isinstance(pick.get("label", ""), str):
        raise damaged(path, f"{field}.label", f"must be text, got {pick['label']!r}")
    try:
        found = get_method(method)
    except CtxextError:
        raise damaged(path, f"{field}.method", f"{method!r} is not a ctxext method") from None
    try:
        found.config_class.from_params(found.name, params)
    except (CtxextError, TypeError) as exc:
        raise damaged(path, f"{field}.params", str(exc)) from None
    if stock_loadable and not found.stock_loadable:
        raise damaged(path, f"{field}.method", f"'{method}' is not loaded by stock engines from config.json")


def write_cached(model: str | Path, directory: str | Path, target_length: int, data: dict) -> Path:
    path = cache_path(model, directory, target_length)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data, indent=1)
    except OSError as exc:
        raise CtxextError(
            f"{path.parent}: cannot write the tune cache there ({exc.strerror or exc}); "
            "set CTXEXT_CACHE to a writable folder"
        ) from None
    return path


def resolve(
    model: str | Path | None,
    directory: str | Path | None,
    target_length: int,
    *,
    config_only: bool = False,
    own_temperature: bool = False,
    params: dict | None = None,
) -> tuple[str, dict, dict]:
    """(method, params, note) for ``auto``: the cached tune winner, else the rule. Every entry point
    (``extend``, ``patch``, ``eval``) resolves ``auto`` here. ``note`` is what the patch record keeps:
    {"chose": method, "params": ..., "reason": ...}. ``own_temperature``: the model's rope already
    scales the logits (a YaRN checkpoint), so the rule leaves log-n scaling off. ``params``: method
    parameters the caller was given, refused (``auto`` chooses its own)."""
    if params:
        raise CtxextError(f"method 'auto' chooses its parameters; give a method to set {', '.join(sorted(params))}")
    check_cache_dir(writable=False)
    if model is not None and directory is not None:
        cached = read_cached(model, directory, target_length)
        if cached is not None:
            config_only_winner = cached.get("config_only_winner") if config_only else None
            use_config_only = isinstance(config_only_winner, dict)
            winner = config_only_winner if use_config_only else cached["winner"]
            method, params = winner["method"], dict(winner.get("params") or {})
            which = "its best config-only candidate, " if use_config_only else ""
            return (
                method,
                params,
                {
                    "chose": method,
                    "params": params,
                    "reason": f"ctxext tune result for {target_length} tokens ({which}"
                    f"{cache_path(model, directory, target_length)})",
                },
            )
    method, params = RULE_CONFIG_ONLY if config_only else RULE_LOADED
    params = dict(params)
    why = (
        "config-only patch: stock engines load yarn"
        if config_only
        else "runs through ctxext: ReRoPE with log-n scaling, the best prose retrieval measured at 2x"
    )
    if not config_only and own_temperature:
        params["log_scaling"] = False
        why += "; without log-n scaling, which would stack on the rope's own attention factor"

    return (
        method,
        params,
        {
            "chose": method,
            "params": params,
            "reason": f"no ctxext tune result cached; rule ({why}; evidence: {EVIDENCE})",
        },
    )

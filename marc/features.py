"""Backbone states of item texts, computed once and cached on disk:

* `pooled_states`: pooled states per layer in one forward pass (one ``.npy`` per layer), so training
  in frozen mode, evaluation and the layer probe never run the backbone twice over the same items;
* `token_states`: every token's state after one block (one ``.npz``), which LoRA on the top m kept
  layers starts from, so a LoRA step runs m blocks instead of all L."""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from marc.backbone import Backbone, Pooling, layer_view, pool, truncate
from marc.determinism import kernel_profile

log = logging.getLogger(__name__)

# Part of every cache key: bump it when the computation changes, so stale files are never read.
# v2: layer states captured by hooks (v1 read wrong states for mid-layer-only requests).
CACHE_VERSION = 2


def backbone_fingerprint(backbone: Backbone) -> str:
    """Identifies the weights, not just the name: source + architecture config + a checksum of every
    parameter (so a LoRA-merged or otherwise modified backbone never reads a stale cache)."""
    digest = hashlib.sha256()
    digest.update(backbone.source.encode())
    digest.update(backbone.model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, param in backbone.model.named_parameters():
            digest.update(name.encode())
            digest.update(np.float64(param.double().sum().item()).tobytes())
    return digest.hexdigest()


def _cache_key(backbone: Backbone, texts: Sequence[str], pooling: Pooling, max_length: int) -> str:
    digest = hashlib.sha256()
    digest.update(backbone_fingerprint(backbone).encode())
    digest.update(f"|v{CACHE_VERSION}|{kernel_profile()}|{pooling}|{max_length}|{len(texts)}|".encode())
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))  # length prefix: no ambiguity between texts
        digest.update(encoded)
    return digest.hexdigest()[:32]


def _truncated_view(model: PreTrainedModel, layer: int) -> PreTrainedModel:
    """A copy of ``model`` cut to ``layer`` blocks that shares the parameters (no weight copy):
    its own module dict and config, so cutting it leaves the caller's model intact."""
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view.config = copy.deepcopy(model.config)
    return truncate(view, layer)


def pooled_states(
    backbone: Backbone,
    texts: list[str],
    layers: list[int],
    pooling: Pooling = "mean",
    max_length: int = 64,
    batch_size: int = 32,
    cache_dir: Path | None = None,
) -> dict[int, np.ndarray]:
    """Pooled hidden states, float32 ``[len(texts), hidden_size]`` per requested layer.

    Layer ``i`` means ``hidden_states[i]`` of the full backbone (1..N; N is the final layer, which
    Hugging Face returns after the final norm). The backbone runs once, cut to the deepest layer
    that is needed; texts are sorted by token count so batches carry little padding.
    """
    total = backbone.num_layers
    wanted = sorted(set(layers))
    if not wanted:
        raise ValueError("pooled_states: no layers requested")
    bad = [layer for layer in wanted if not 1 <= layer <= total]
    if bad:
        raise ValueError(f"layers {bad} out of range: this backbone has layers 1..{total}")
    if not texts:
        raise ValueError("pooled_states: no texts given")

    cache_paths: dict[int, Path] = {}
    result: dict[int, np.ndarray] = {}
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        key = _cache_key(backbone, texts, pooling, max_length)
        cache_paths = {layer: cache_dir / f"pooled-{key}-L{layer}.npy" for layer in wanted}
        for layer, path in cache_paths.items():
            if path.is_file():
                cached = np.load(path, allow_pickle=False)
                if cached.shape == (len(texts), backbone.hidden_size):
                    result[layer] = cached
        if len(result) == len(wanted):
            log.debug("pooled states for layers %s read from %s", wanted, cache_dir)
            return {layer: result[layer] for layer in layers}

    missing = [layer for layer in wanted if layer not in result]
    computed = _compute(backbone, texts, missing, pooling, max_length, batch_size)
    result.update(computed)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for layer, states in computed.items():
            # Write then rename, so a concurrent reader never sees half a file.
            tmp = cache_paths[layer].with_suffix(".tmp.npy")
            np.save(tmp, states, allow_pickle=False)
            tmp.replace(cache_paths[layer])
    return {layer: result[layer] for layer in layers}


def _compute(
    backbone: Backbone,
    texts: list[str],
    layers: list[int],
    pooling: Pooling,
    max_length: int,
    batch_size: int,
) -> dict[int, np.ndarray]:
    deepest = max(layers)
    # Cutting drops the final norm, which only the final layer's hidden state includes: run the full
    # model when the final layer is wanted, else a parameter-sharing copy cut to the deepest layer.
    model = backbone.model if deepest == backbone.num_layers else _truncated_view(backbone.model, deepest)
    tokenizer = backbone.tokenizer
    token_ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    empty = [i for i, ids in enumerate(token_ids) if not ids]
    if empty:
        raise ValueError(f"item texts at positions {empty[:10]} tokenise to nothing (empty texts?)")
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    out = {layer: np.empty((len(texts), backbone.hidden_size), dtype=np.float32) for layer in layers}

    # Layer outputs are captured by forward hooks rather than output_hidden_states: on the
    # parameter-sharing cut copy, transformers' hidden-state recording returns wrong states.
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            captured[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    final = backbone.num_layers  # its state is the model output: after the final norm
    handles = [
        model.layers[layer - 1].register_forward_hook(capture(layer)) for layer in layers if layer < final
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(
                range(0, len(texts), batch_size),
                desc=f"pooled states L{','.join(map(str, layers))}",
                unit="batch",
                leave=False,
            ):
                rows = order[start : start + batch_size]
                batch = tokenizer.pad(
                    {"input_ids": [token_ids[i] for i in rows]}, padding=True, return_tensors="pt"
                )
                mask = batch["attention_mask"]
                output = model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
                for layer in layers:
                    hidden = output if layer == final else captured[layer]
                    out[layer][rows] = pool(hidden, mask, pooling).float().numpy()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return out


@dataclass(frozen=True)
class TokenStates:
    """Token states of every item after one block: item i's tokens are rows
    ``offsets[i]:offsets[i + 1]`` of ``values`` (float32 [total tokens, hidden size])."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def item(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]


def token_ids(backbone: Backbone, texts: list[str], max_length: int) -> list[list[int]]:
    """The token ids of each text, as the served tokenizer makes them (an empty one is an error)."""
    ids: list[list[int]] = backbone.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
        raise ValueError(f"item texts at positions {empty[:10]} tokenise to nothing (empty texts?)")
    return ids


def token_states(
    backbone: Backbone,
    texts: list[str],
    layer: int,
    max_length: int = 64,
    batch_size: int = 32,
    cache_dir: Path | None = None,
) -> TokenStates:
    """Every token's state after block ``layer`` (0 = the token embeddings) of the unchanged backbone,
    right-padded batches, pads dropped. Cached under ``cache_dir`` like `pooled_states`."""
    if not 0 <= layer < backbone.num_layers:
        raise ValueError(f"token states: layer must be in 0..{backbone.num_layers - 1}, got {layer}")
    if not texts:
        raise ValueError("token_states: no texts given")
    path = None
    if cache_dir is not None:
        key = _cache_key(backbone, texts, "mean", max_length)
        path = Path(cache_dir) / f"tokens-{key}-L{layer}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as cached:
                values, offsets = cached["values"], cached["offsets"]
            if len(offsets) == len(texts) + 1 and values.shape[1:] == (backbone.hidden_size,):
                return TokenStates(values, offsets)
    ids = token_ids(backbone, texts, max_length)
    lengths = np.array([len(row) for row in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.empty((int(offsets[-1]), backbone.hidden_size), dtype=np.float32)
    model = backbone.model
    view = layer_view(model, 0, layer) if layer > 0 else None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            order = np.argsort(lengths, kind="stable")  # batches of similar length: little padding
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size].tolist()
                batch = backbone.tokenizer.pad(
                    {"input_ids": [ids[i] for i in rows]}, padding=True, return_tensors="pt"
                )
                hidden = model.embed_tokens(batch["input_ids"])
                if view is not None:
                    hidden = view(
                        inputs_embeds=hidden, attention_mask=batch["attention_mask"], use_cache=False
                    )
                    hidden = hidden.last_hidden_state
                for row, i in enumerate(rows):
                    values[offsets[i] : offsets[i + 1]] = hidden[row, : lengths[i]].float().numpy()
    finally:
        model.train(was_training)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        with tmp.open("wb") as handle:  # a handle: np.savez would append ".npz" to the name
            np.savez(handle, values=values, offsets=offsets)
        tmp.replace(path)
    return TokenStates(values, offsets)

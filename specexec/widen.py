"""A big checkpoint with a small Llama's function: a cost model of a big target.

:func:`widen` writes a Llama checkpoint of a larger shape (hidden size, heads, intermediate size,
layers) whose every forward pass equals the small model's up to summation order, while it costs
what a model of the larger shape costs (bytes read, multiply-adds):

- the small model's weights sit in the top-left corner of the larger matrices, the rest is zero;
  head_dim is kept (rotary frequencies depend on it); the small model's query heads come first,
  and each key/value head of the big model carries the small key/value head its query heads use
  (the big group size must divide the small one; a big model with as many key/value heads as
  query heads always fits);
- RMSNorm averages over the padded vector: mean(x^2) over H = (h / H) * mean over h. Norm weights
  are multiplied by sqrt(h / H) and epsilon by h / H, so each norm gives the small model's output;
  padded norm weights are zero, so the padded dimensions of the residual stream stay zero;
- decoder layers beyond the small model's copy a small layer's weights with a zero output and down
  projection: they compute, and add nothing to the residual stream;
- the LM head is untied (as in the Llama-2 checkpoints) and padded with zero columns.

It is a cost model: the bytes and multiply-adds of the big shape (zeros are read and multiplied like
any other value) with the small model's distribution. A draft agrees with the widened model exactly
as it agrees with the small one, and that understates a real big pair: a big target's next token is
easier to predict (its distribution is sharper) and its draft is a capable model in its own right
(the paper drafts a 70B target with a 7B model), where the embedded pair is a 135M target and a much
smaller distilled draft.

The checkpoint is written a decoder layer at a time (one safetensors file each), never whole in
memory.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError

# the Llama-2-13B shape: hidden 5120, 40 layers, intermediate 13824; 80 heads of 64 (the small models'
# head_dim) give its 5120-wide attention, with as many key/value heads as query heads (no grouping)
SHAPES = {
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=80,
                num_key_value_heads=80),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=64,
               num_key_value_heads=64),
    "34b": dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=48, num_attention_heads=128,
                num_key_value_heads=16),
}

def shard_name(i: int, n_layers: int) -> str:
    """Shards named as transformers names them: one per decoder layer, then embeddings, final norm and head."""
    return f"model-{i + 1:05d}-of-{n_layers + 1:05d}.safetensors"


@dataclass(frozen=True)
class Widening:
    """How a small Llama config maps onto a big one."""

    small: object  # the small model's LlamaConfig
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int

    def __post_init__(self):
        s = self.small
        if getattr(s, "model_type", None) != "llama":
            raise ConfigError(f"widening takes a Llama-style model, not {getattr(s, 'model_type', None)!r}")
        if getattr(s, "attention_bias", False) or getattr(s, "mlp_bias", False):
            raise ConfigError("widening takes a model without attention or MLP biases")
        pairs = [("hidden_size", s.hidden_size), ("intermediate_size", s.intermediate_size),
                 ("num_hidden_layers", s.num_hidden_layers), ("num_attention_heads", s.num_attention_heads),
                 ("num_key_value_heads", s.num_key_value_heads)]
        for name, small in pairs:
            if getattr(self, name) < small:
                raise ConfigError(f"{name} {getattr(self, name)} is smaller than the small model's {small}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.small_group % self.group:
            raise ConfigError(f"the big model's group size {self.group} must divide the small model's "
                              f"{self.small_group} (query heads per key/value head)")

    @property
    def head_dim(self) -> int:
        s = self.small
        return getattr(s, "head_dim", None) or s.hidden_size // s.num_attention_heads

    @property
    def group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def small_group(self) -> int:
        return self.small.num_attention_heads // self.small.num_key_value_heads

    @property
    def ratio(self) -> float:
        return self.small.hidden_size / self.hidden_size

    def config(self, dtype: torch.dtype = torch.bfloat16):
        from transformers import LlamaConfig

        s = self.small.to_dict()
        for key in ("architectures", "model_type", "transformers_version", "_name_or_path", "dtype", "torch_dtype"):
            s.pop(key, None)
        s.update(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                 num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                 num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim,
                 rms_norm_eps=self.small.rms_norm_eps * self.ratio, tie_word_embeddings=False)
        config = LlamaConfig(**s)
        config.architectures = ["LlamaForCausalLM"]
        config.dtype = str(dtype).removeprefix("torch.")
        return config

    # ------------------------------------------------------------ tensors
    def pad(self, small: torch.Tensor, shape: tuple[int, ...], dtype) -> torch.Tensor:
        out = torch.zeros(shape, dtype=dtype)
        out[tuple(slice(0, n) for n in small.shape)] = small.to(dtype)
        return out

    def kv_rows(self, small: torch.Tensor) -> torch.Tensor:
        """A small key/value projection [nkv * d, h] as the big one's first rows: big key/value head j
        holds the small head that the query heads of its group use."""
        d, m = self.head_dim, self.small_group // self.group
        heads = small.reshape(self.small.num_key_value_heads, d, -1)
        n_used = self.small.num_attention_heads // self.group  # big kv heads the small query heads reach
        return heads[torch.arange(n_used) // m].reshape(n_used * d, -1)

    def layer(self, small: dict[str, torch.Tensor], extra: bool, dtype) -> dict[str, torch.Tensor]:
        """A big decoder layer's tensors (local names) from a small layer's; ``extra``: zero output projections."""
        H, F, d = self.hidden_size, self.intermediate_size, self.head_dim
        q_rows, kv_rows = self.num_attention_heads * d, self.num_key_value_heads * d
        scale = math.sqrt(self.ratio)
        out = {
            "self_attn.q_proj.weight": self.pad(small["self_attn.q_proj.weight"], (q_rows, H), dtype),
            "self_attn.k_proj.weight": self.pad(self.kv_rows(small["self_attn.k_proj.weight"]), (kv_rows, H), dtype),
            "self_attn.v_proj.weight": self.pad(self.kv_rows(small["self_attn.v_proj.weight"]), (kv_rows, H), dtype),
            "self_attn.o_proj.weight": self.pad(small["self_attn.o_proj.weight"], (H, q_rows), dtype),
            "mlp.gate_proj.weight": self.pad(small["mlp.gate_proj.weight"], (F, H), dtype),
            "mlp.up_proj.weight": self.pad(small["mlp.up_proj.weight"], (F, H), dtype),
            "mlp.down_proj.weight": self.pad(small["mlp.down_proj.weight"], (H, F), dtype),
            "input_layernorm.weight": self.pad(small["input_layernorm.weight"].double() * scale, (H,), dtype),
            "post_attention_layernorm.weight": self.pad(small["post_attention_layernorm.weight"].double() * scale,
                                                        (H,), dtype),
        }
        if extra:
            out["self_attn.o_proj.weight"].zero_()
            out["mlp.down_proj.weight"].zero_()
        return out

    def rest(self, embed: torch.Tensor, norm: torch.Tensor, head: torch.Tensor, dtype) -> dict[str, torch.Tensor]:
        V, H = embed.shape[0], self.hidden_size
        return {"model.embed_tokens.weight": self.pad(embed, (V, H), dtype),
                "model.norm.weight": self.pad(norm.double() * math.sqrt(self.ratio), (H,), dtype),
                "lm_head.weight": self.pad(head, (V, H), dtype)}

    def source_layer(self, i: int) -> int:
        """The small layer whose weights big layer ``i`` carries (beyond the small model's: repeated)."""
        return i % self.small.num_hidden_layers


def widening_for(small_config, shape: str | dict) -> Widening:
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ConfigError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
        shape = SHAPES[shape]
    return Widening(small_config, **shape)


def widen_model(model, shape: str | dict, dtype=None):
    """The widened model built in memory (small shapes only: tests and checks)."""
    from transformers import AutoModelForCausalLM

    w = widening_for(model.config, shape)
    dtype = dtype or next(model.parameters()).dtype
    big = AutoModelForCausalLM.from_config(w.config(dtype), dtype=dtype)
    big.load_state_dict(dict(_tensors(w, model.state_dict(), dtype)), strict=True)
    return big.eval()


def _tensors(w: Widening, state: dict, dtype):
    head = state.get("lm_head.weight", state["model.embed_tokens.weight"])
    yield from w.rest(state["model.embed_tokens.weight"], state["model.norm.weight"], head, dtype).items()
    n_small = w.small.num_hidden_layers
    for i in range(w.num_hidden_layers):
        src = w.source_layer(i)
        p = f"model.layers.{src}."
        small = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        for local, value in w.layer(small, i >= n_small, dtype).items():
            yield f"model.layers.{i}.{local}", value


def widen(source: str | Path, out: str | Path, shape: str | dict = "13b", dtype=torch.bfloat16,
          log=print) -> Path:
    """Write the widened checkpoint of the model folder ``source`` into ``out`` (a layer at a time).

    Tokenizer, chat template and generation config are copied. Returns ``out``.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig

    source, out = Path(source), Path(out)
    w = widening_for(AutoConfig.from_pretrained(source), shape)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{source} has no safetensors files")
    handles = [safe_open(str(f), framework="pt") for f in files]
    where = {k: h for h in handles for k in h.keys()}

    def get(name):
        return where[name].get_tensor(name)

    weight_map: dict[str, str] = {}
    start, written = time.perf_counter(), 0
    n_small = w.small.num_hidden_layers
    for i in range(w.num_hidden_layers):
        p = f"model.layers.{w.source_layer(i)}."
        small = {k[len(p):]: get(k) for k in where if k.startswith(p)}
        tensors = {f"model.layers.{i}.{k}": v for k, v in w.layer(small, i >= n_small, dtype).items()}
        name = shard_name(i, w.num_hidden_layers)
        save_file(tensors, out / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, name)
        written += sum(t.numel() * t.element_size() for t in tensors.values())
        log(f"  layer {i + 1}/{w.num_hidden_layers}: {written / 1e9:.1f} GB, {time.perf_counter() - start:.0f} s")
        del tensors, small
    embed = get("model.embed_tokens.weight")
    head = get("lm_head.weight") if "lm_head.weight" in where else embed
    rest = w.rest(embed, get("model.norm.weight"), head, dtype)
    rest_file = shard_name(w.num_hidden_layers, w.num_hidden_layers)
    save_file(rest, out / rest_file, metadata={"format": "pt"})
    weight_map |= dict.fromkeys(rest, rest_file)
    written += sum(t.numel() * t.element_size() for t in rest.values())
    w.config(dtype).save_pretrained(out)
    index = {"metadata": {"total_size": written}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    for extra in source.iterdir():  # tokenizer, chat template, generation config
        if extra.is_file() and extra.suffix in (".json", ".jinja", ".txt", ".model") and \
                extra.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(extra, out / extra.name)
    log(f"wrote {written / 1e9:.1f} GB to {out} in {time.perf_counter() - start:.0f} s")
    return out

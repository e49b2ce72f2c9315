"""A GGUF file converted into a Hugging Face folder a tensor at a time.

transformers reads a GGUF file by dequantizing every tensor into memory and building the whole
model in float32: a 70B Q4 file would need 280 GB of RAM and leave a 280 GB folder. Here the file
is memory-mapped (gguf's reader), each tensor is dequantized on its own, renamed and reshaped by
transformers' own GGUF tables (its name map and its per-architecture tensor processors, so the
result equals its conversion), cast to the folder's dtype and written into safetensors shards of
about 2 GB: memory holds one tensor and one shard. A quantized file becomes a bfloat16 folder
(half the float32 size; the streamed layers compute in bfloat16 where the CPU has it); the embedded
models keep float32, which the exactness tests and figures for them use.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

SHARD_BYTES = 2 * 1024**3


def convert_gguf_streaming(gguf: Path, out: Path, dtype: torch.dtype, log=None) -> None:
    """Write ``gguf``'s weights (in ``dtype``), config and tokenizer into the folder ``out``."""
    from gguf import GGUFReader, dequantize
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                          get_gguf_hf_weights_map, load_gguf_checkpoint, read_field)

    parsed = load_gguf_checkpoint(str(gguf), return_tensors=False)  # metadata only
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = dtype
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    reader = GGUFReader(str(gguf))  # memory-mapped
    architecture = read_field(reader, "general.architecture")[0]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
    names = get_gguf_hf_weights_map(skeleton, processor)
    wanted = set(skeleton.state_dict())

    out.mkdir(parents=True, exist_ok=True)
    shard: dict[str, torch.Tensor] = {}
    files: list[str] = []
    weight_map: dict[str, str] = {}
    total, in_shard = 0, 0

    def flush() -> None:
        nonlocal in_shard
        in_shard = 0
        if shard:
            name = f"part-{len(files):05d}.safetensors"
            save_file(dict(shard), out / name, metadata={"format": "pt"})
            files.append(name)
            weight_map.update(dict.fromkeys(shard, name))
            shard.clear()

    for i, tensor in enumerate(reader.tensors):
        weights = dequantize(tensor.data, tensor.tensor_type)
        result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=names,
                                   parsed_parameters=parsed)
        if result.name not in names or names[result.name] not in wanted:
            continue
        t = torch.from_numpy(np.array(result.weights)).to(dtype)  # a copy: the reader's arrays are read-only maps
        shard[names[result.name]] = t
        total += t.numel() * t.element_size()
        in_shard += t.numel() * t.element_size()
        if in_shard >= SHARD_BYTES:
            flush()
        if log and (i + 1) % 50 == 0:
            log(f"  {i + 1}/{len(reader.tensors)} tensors, {total / 1e9:.1f} GB")
    flush()
    missing = sorted(wanted - set(weight_map) - _tied(skeleton))
    if missing:
        from .errors import ModelLoadError

        raise ModelLoadError(f"the GGUF file {gguf} has no tensors for {missing[:3]}")
    _name_shards(out, files, weight_map, total)
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def _tied(model) -> set[str]:
    """Parameter names that share another's storage (a tied head), which the file does not hold."""
    if getattr(model.config, "tie_word_embeddings", False):
        return {k for k in model.state_dict() if k.startswith("lm_head.")}
    return set()


def _name_shards(out: Path, files: list[str], weight_map: dict[str, str], total: int) -> None:
    """One file is ``model.safetensors``; several are named as transformers names them, with an index."""
    if len(files) == 1:
        (out / files[0]).rename(out / "model.safetensors")
        return
    final = {f: f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i, f in enumerate(files)}
    for old, new in final.items():
        (out / old).rename(out / new)
    index = {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in weight_map.items()}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))

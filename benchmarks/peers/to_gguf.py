"""A Llama safetensors folder written as a GGUF file (bfloat16 matrices, float32 norms) with the `gguf`
package, a tensor at a time: what llama.cpp reads. The tokenizer's GGUF fields are copied from the
embedded target's GGUF file (the folder must use its vocabulary: the widened checkpoint and the
shipped draft do).

    python benchmarks/peers/to_gguf.py FOLDER OUT.gguf
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
REST_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


def gguf_name(name: str) -> str:
    if name in REST_NAMES:
        return REST_NAMES[name]
    _, _, i, local = name.split(".", 3)  # model.layers.I.local
    return f"blk.{i}.{LAYER_NAMES[local]}"


def rope_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Transformers' rotate-half layout of a query/key projection to llama.cpp's interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def as_array(name: str, w: torch.Tensor, config: dict) -> tuple[np.ndarray, object]:
    from gguf import GGMLQuantizationType

    if name.endswith("q_proj.weight"):
        w = rope_permute(w, config["num_attention_heads"])
    elif name.endswith("k_proj.weight"):
        w = rope_permute(w, config["num_key_value_heads"])
    if w.dim() == 1:  # norms stay float32, as llama.cpp's own converter keeps them
        return w.float().numpy(), None
    return w.to(torch.bfloat16).contiguous().view(torch.int16).numpy(), GGMLQuantizationType.BF16


def tensors(folder: Path, data: bool = True):
    """(name, tensor) in file order, read one at a time; with ``data`` False, (name, shape) from the headers.
    A tied head is not written: llama.cpp uses token_embd when output.weight is absent."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.exists() else None
    files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
    for file in files:
        with safe_open(str(folder / file), framework="pt") as f:
            for key in f.keys():
                yield key, (f.get_tensor(key) if data else tuple(f.get_slice(key).get_shape()))


def copy_tokenizer(writer, template: Path) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(str(template))

    def value(key):
        return reader.fields[key].contents() if key in reader.fields else None

    writer.add_tokenizer_model(value("tokenizer.ggml.model"))
    writer.add_tokenizer_pre(value("tokenizer.ggml.pre"))
    writer.add_token_list(value("tokenizer.ggml.tokens"))
    writer.add_token_types(value("tokenizer.ggml.token_type"))
    writer.add_token_merges(value("tokenizer.ggml.merges"))
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("unknown_token_id", writer.add_unk_token_id), ("padding_token_id", writer.add_pad_token_id)):
        if value(f"tokenizer.ggml.{key}") is not None:
            add(value(f"tokenizer.ggml.{key}"))
    writer.add_add_bos_token(bool(value("tokenizer.ggml.add_bos_token")))
    writer.add_add_space_prefix(bool(value("tokenizer.ggml.add_space_prefix")))
    if value("tokenizer.chat_template"):
        writer.add_chat_template(value("tokenizer.chat_template"))


def convert(folder: Path, out: Path, template: Path) -> None:
    from gguf import GGUFWriter, LlamaFileType

    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise SystemExit(f"{folder}: a Llama checkpoint is needed, not {config.get('model_type')!r}")
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    writer = GGUFWriter(out, "llama")
    writer.add_name(folder.name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(LlamaFileType.MOSTLY_BF16)
    copy_tokenizer(writer, template)
    # the tensor headers come before the data: shapes from the safetensors headers, then the data a tensor at a time
    from gguf import GGMLQuantizationType

    for name, shape in tensors(folder, data=False):
        n = int(np.prod(shape))
        if len(shape) == 1:
            writer.add_tensor_info(gguf_name(name), shape, np.dtype(np.float32), 4 * n)
        else:
            writer.add_tensor_info(gguf_name(name), shape, np.dtype(np.int16), 2 * n,
                                   raw_dtype=GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    written = 0
    for name, w in tensors(folder):
        array, _ = as_array(name, w, config)
        writer.write_tensor_data(array)
        written += array.nbytes
    writer.close()
    print(f"wrote {out} ({written / 1e9:.1f} GB of tensors)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    from specexec.models import smollm2_gguf_path

    convert(args.folder, args.out, smollm2_gguf_path())


if __name__ == "__main__":
    main()

"""The tensor-at-a-time GGUF conversion gives transformers' own conversion of the same file: the same
tensors (equal in float32; the bfloat16 rounding of them in bfloat16), config and tokenizer, for the
embedded SmolLM2 (Llama, its q/k rows permuted back) and Gemma-3 (norm weights shifted)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from specexec.gguf_convert import convert_gguf_streaming
from specexec.models import gemma3_gguf_path, smollm2_gguf_path


def converted_state(folder):
    files = sorted(folder.glob("*.safetensors"))
    state = {}
    for f in files:
        state |= load_file(str(f))
    return state


def transformers_state(gguf):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.state_dict(), model.config


@pytest.mark.parametrize("locate", [smollm2_gguf_path, gemma3_gguf_path], ids=["smollm2", "gemma3"])
def test_streaming_conversion_equals_transformers(locate, tmp_path):
    gguf = locate()
    want, config = transformers_state(gguf)
    convert_gguf_streaming(gguf, tmp_path / "f32", torch.float32)
    got = converted_state(tmp_path / "f32")
    tied = {k for k in want if k.startswith("lm_head.")} if config.tie_word_embeddings else set()
    assert set(got) == set(want) - tied
    for k, v in got.items():
        assert v.dtype == torch.float32 and torch.equal(v, want[k]), k
    saved = json.loads((tmp_path / "f32" / "config.json").read_text())
    assert saved["num_hidden_layers"] == config.num_hidden_layers and saved["model_type"] == config.model_type
    assert (tmp_path / "f32" / "tokenizer.json").exists()

    convert_gguf_streaming(gguf, tmp_path / "bf16", torch.bfloat16)
    half = converted_state(tmp_path / "bf16")
    assert set(half) == set(got)
    for k, v in half.items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, got[k].to(torch.bfloat16)), k


def test_a_big_file_is_written_in_shards_with_an_index(tmp_path, monkeypatch):
    import specexec.gguf_convert as conv

    monkeypatch.setattr(conv, "SHARD_BYTES", 20 * 1024**2)
    convert_gguf_streaming(smollm2_gguf_path(), tmp_path, torch.bfloat16)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and files[-1].endswith(f"-of-{len(files):05d}.safetensors")
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == files
    from specexec.models import load_model

    model = load_model(str(tmp_path), dtype="bfloat16", with_tokenizer=False).model
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16

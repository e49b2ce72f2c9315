"""compressed-tensors checkpoints (the format llm-compressor writes GPTQ, AWQ and round-to-nearest
models in) as targets: loaded through transformers' own integration, decompressed on the CPU, every
method greedy-exact against the checkpoint's own decoding; streamed from disk in their packed form
(int4 / int8 values packed in int32, with their scales), decompressed on arrival, with the logits of
the resident model. The checkpoints are written from tiny random models by
specexec.ct_checkpoint (compressed-tensors' own calls, min-max scales)."""

import json

import compressed_tensors  # noqa: F401  (the test extra installs it: missing, these tests fail)
import pytest
import torch

from specexec import SpecExecEngine
from specexec.errors import OffloadError
from specexec.models import load_model, truncated_copy
from specexec.offload.plan import PACK_ALIGN, find_decoder_layers
from specexec.ct_checkpoint import write_compressed_tensors
from specexec.quantize import describe

from conftest import tiny_config
from test_quantize import _pass_bytes, assert_every_method_decodes_like, assert_streams_like_resident, fresh


# scheme -> (tiny family, its extra settings, group size); mistral and qwen2 with sliding windows, qwen2 with
# biases. Symmetric schemes only: an asymmetric pack-quantized checkpoint (packed zero points) does not load in
# transformers 5.24 with compressed-tensors 0.20 (its meta skeleton keeps the zero points unpacked)
CHECKPOINTS = {
    "W4A16": ("llama", dict(), 32),
    "W4A16-g16": ("qwen2", dict(), 16),
    "W8A16": ("mistral", dict(sliding_window=8), 32),
}
DESCRIBED = {"W4A16": "int4 pack-quantized (compressed-tensors)",
             "W4A16-g16": "int4 pack-quantized (compressed-tensors)",
             "W8A16": "int8 pack-quantized (compressed-tensors)"}


def _float_model(family: str, extra: dict):
    import transformers

    config = tiny_config(family, layers=3, hidden=64, initializer_range=0.4, **extra)
    torch.manual_seed(3)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float().eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for scheme, (family, extra, group) in CHECKPOINTS.items():
        folder = tmp_path_factory.mktemp(scheme.lower())
        write_compressed_tensors(_float_model(family, extra), folder, scheme.split("-")[0], group)
        float_folder = tmp_path_factory.mktemp(f"{scheme.lower()}-float")
        _float_model(family, extra).save_pretrained(float_folder)
        out[scheme] = folder, float_folder
    return out


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECEXEC_CACHE", str(tmp_path / "cache"))


def load(folder, **kwargs):
    return load_model(str(folder), dtype="float32", with_tokenizer=False, **kwargs).model


@pytest.mark.parametrize("scheme", list(CHECKPOINTS))
def test_a_checkpoint_loads_quantized_and_computes_close_to_its_float_model(scheme, checkpoints):
    folder, float_folder = checkpoints[scheme]
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    model, float_model = load(folder), load(float_folder)
    assert describe(model) == DESCRIBED[scheme] and describe(float_model) is None
    ids = torch.tensor([[3, 14, 15, 9, 2, 6]])
    with torch.no_grad():
        a, f = model(ids).logits, float_model(ids).logits
    assert not torch.equal(a, f)  # the weights are the quantized ones...
    cosine = torch.nn.functional.cosine_similarity(a.flatten(), f.flatten(), dim=0)
    assert cosine > (0.97 if scheme == "W8A16" else 0.6), cosine  # ...close to the float ones (8 bits: closer)
    head = model.get_output_embeddings().weight
    assert head.dtype == torch.float32 and getattr(model.lm_head, "quantization_scheme", None) is None


@pytest.mark.parametrize("scheme", list(CHECKPOINTS))
def test_every_method_is_greedy_exact_with_a_compressed_tensors_target(scheme, checkpoints):
    target = load(checkpoints[scheme][0])
    draft = truncated_copy(target, 1)
    engine = SpecExecEngine(target, None, draft)
    assert_every_method_decodes_like(target, engine, ([3], [9, 4, 33, 2, 17, 8, 1]), scheme)


@pytest.mark.parametrize("scheme", list(CHECKPOINTS))
def test_streamed_layers_are_read_packed_and_equal_the_resident_ones(scheme, checkpoints):
    folder, float_folder = checkpoints[scheme]
    resident = fresh(load(folder))
    streamed = load(folder, offload="disk", device_size=2)
    assert describe(streamed) == DESCRIBED[scheme]
    ids = assert_streams_like_resident(streamed, resident)
    layers = find_decoder_layers(streamed)[1]
    # a pass reads the packed values, scales (and zero points), not the float weights
    from safetensors import safe_open

    packed, pieces = 0, 0
    with safe_open(folder / "model.safetensors", "pt") as f:
        for name in f.keys():
            if name.startswith("model.layers."):
                packed += f.get_tensor(name).nbytes
                pieces += 1
    read = _pass_bytes(streamed, ids)
    assert packed <= read <= packed + pieces * PACK_ALIGN + len(layers) * 2 * 4096
    floats = sum(p.numel() * 4 for p in find_decoder_layers(load(float_folder))[1].parameters())
    assert read < (0.45 if scheme == "W8A16" else 0.3) * floats


@pytest.mark.parametrize("scheme", ["W8A16", "W4A16"])
def test_bfloat16_layers_stream_exactly(scheme, checkpoints):
    """In bfloat16, quantizing a decompressed weight again by dividing in bfloat16 can miss the integer it
    came from (int8 values near 127 sit on a 0.5 grid): the store quantizes in float32."""
    folder = checkpoints[scheme][0]
    resident = fresh(load_model(str(folder), dtype="bfloat16", with_tokenizer=False).model)
    streamed = load_model(str(folder), dtype="bfloat16", with_tokenizer=False, offload="disk").model
    assert next(resident.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([[4, 8, 15, 16, 23]])
    with torch.no_grad():
        assert torch.equal(streamed(ids).logits, resident(ids).logits)


def test_every_method_is_greedy_exact_with_a_compressed_tensors_target_streamed(checkpoints):
    folder = checkpoints["W4A16"][0]
    resident = load(folder)
    target = load(folder, offload="disk", device_size=2, keep_layers=1)
    draft = truncated_copy(target, 2)  # its layer 1 is read from the packed store
    engine = SpecExecEngine(target, None, draft)
    assert_every_method_decodes_like(resident, engine, ([9, 4, 33, 2],), "streamed compressed-tensors")


def test_a_format_that_does_not_decompress_exactly_is_refused_for_streaming(checkpoints, monkeypatch):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    original = PackedQuantizationCompressor.compress.__func__

    def lossy(cls, state, scheme):  # a format whose round trip changes the weights
        out = original(cls, state, scheme)
        return {**out, "weight_packed": out["weight_packed"] ^ 1}  # one value of each 8 off by one

    monkeypatch.setattr(PackedQuantizationCompressor, "compress", classmethod(lossy))
    with pytest.raises(OffloadError, match=r"decoder layer 0: .*weight \(pack-quantized, compressed-tensors\): "
                                           r"self_attn\.q_proj\.weight does not decompress to the tensor it computes with"):
        load(checkpoints["W4A16"][0], offload="disk")


def test_quantizing_a_compressed_tensors_checkpoint_again_is_refused(checkpoints):
    from specexec.quantize import QuantizationError

    with pytest.raises(QuantizationError, match="already quantized \\(compressed-tensors\\)"):
        load(checkpoints["W4A16"][0], quantize="int8")


def test_what_cannot_load_is_a_one_line_error(checkpoints, tmp_path, monkeypatch):
    from specexec.errors import ModelLoadError

    model = _float_model("llama", {})
    with pytest.raises(ValueError, match="input width 64 is not a multiple of the group size 48"):
        write_compressed_tensors(model, tmp_path / "odd", "W4A16", 48)
    with pytest.raises(ValueError, match="scheme 'W8A8': choose one of W4A16, W8A16, W4A16_ASYM"):
        write_compressed_tensors(model, tmp_path / "odd", "W8A8", 32)
    assert describe(model) is None and not (tmp_path / "odd").exists()  # the model and folder untouched
    asymmetric = tmp_path / "asym"
    write_compressed_tensors(_float_model("llama", {}), asymmetric, "W4A16_ASYM", 16)
    with pytest.raises(ModelLoadError, match="asymmetric pack-quantized compressed-tensors weights") as err:
        load(asymmetric)
    assert "\n" not in str(err.value)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "compressed_tensors" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"needs the package compressed_tensors: "
                                             r"pip install 'specexec\[compressed-tensors\]'") as err:
        load(checkpoints["W4A16"][0])
    assert "\n" not in str(err.value)

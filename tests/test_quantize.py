"""Quantized targets and drafts: int8 (torchao) and int4 (bitsandbytes NF4) weights quantized as they
load, resident or streamed from disk in their packed form. Every method decodes exactly what the
quantized target itself decodes (transformers' generate); streamed quantized layers compute what the
resident quantized layers compute, reading the packed bytes only; bad settings are one-line errors."""

import json
import shutil
import time

import pytest
import torch

from specexec import SpecExecEngine
from specexec.errors import ModelLoadError, OffloadError
from specexec.models import load_model, truncated_copy
from specexec.offload.packed import Packing
from specexec.offload.plan import PACK_ALIGN, find_decoder_layers
from specexec.quantize import QuantizationError, describe, parse_quantize, quantize_model

from conftest import assert_greedy_equal, greedy_reference, tiny_model

MODES = ["int8", "int4"]
# hidden 64: the 4-bit blocks of 64 weights fit every row; a sliding window and a mixture of experts on
FAMILIES = {
    "llama": dict(),
    "mistral": dict(sliding_window=8),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
}
METHODS = [("specexec", dict(max_budget=32, max_n_beams=4, max_branch_width=4, max_beam_len=6)),
           ("specinfer", dict(max_n_beams=3, max_beam_len=4)),
           ("chain", dict(max_beam_len=4)),
           ("autoregressive", {})]


def assert_every_method_decodes_like(reference, engine, prompts, label: str, tokens: int = 20) -> None:
    """Every method of METHODS at temperature 0 gives ``reference``'s own greedy decoding (transformers'
    generate) of each prompt."""
    for prompt in prompts:
        want = greedy_reference(reference, prompt, tokens)
        for method, settings in METHODS:
            got = engine.generate(prompt, method=method, max_new_tokens=tokens, temperature=0.0, **settings)
            assert_greedy_equal(reference, prompt, got.token_ids, want, f"{label} {method} {prompt}")


def _tiny(family: str, seed: int = 1):
    import transformers

    from conftest import tiny_config

    if family == "mixtral":
        config = transformers.MixtralConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                            initializer_range=0.4, bos_token_id=None, eos_token_id=None,
                                            **FAMILIES[family])
    else:
        config = tiny_config(family, layers=3, hidden=64, initializer_range=0.4, **FAMILIES[family])
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float().eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        _tiny(family).save_pretrained(folder, safe_serialization=True)
        out[family] = folder
    return out


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECEXEC_CACHE", str(tmp_path / "cache"))  # packed stores of this test only


def quantized(folder, mode, **kwargs):
    return load_model(str(folder), dtype="float32", with_tokenizer=False, quantize=mode, **kwargs).model


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_quantizing_in_place_equals_quantizing_on_load(family, mode, folders):
    on_load = quantized(folders[family], mode)
    in_place = quantize_model(load_model(str(folders[family]), dtype="float32", with_tokenizer=False).model, mode)
    float_model = load_model(str(folders[family]), dtype="float32", with_tokenizer=False).model
    kinds = [(n, type(p).__name__) for n, p in on_load.named_parameters()]
    assert kinds == [(n, type(p).__name__) for n, p in in_place.named_parameters()]  # the same modules quantized
    assert describe(on_load) == describe(in_place) and describe(float_model) is None
    assert describe(on_load) == ("Int8Tensor (torchao)" if mode == "int8" else "nf4 (bitsandbytes)")
    ids = torch.tensor([[3, 14, 15, 9, 2, 6]])
    with torch.no_grad():
        a, b, f = on_load(ids).logits, in_place(ids).logits, float_model(ids).logits
    assert torch.equal(a, b)
    assert not torch.equal(a, f)  # the weights really changed...
    cosine = torch.nn.functional.cosine_similarity(a.flatten(), f.flatten(), dim=0)
    assert cosine > 0.6, cosine  # ...and still compute much the same thing (random tiny weights: loosely)
    head = on_load.get_output_embeddings().weight
    assert type(head) is torch.nn.Parameter and head.dtype == torch.float32  # the head stays float


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_is_greedy_exact_with_a_quantized_target(family, mode, folders):
    target = quantized(folders[family], mode)
    draft = truncated_copy(target, 1)  # its layer is the target's quantized layer 0
    assert describe(draft) == describe(target)
    engine = SpecExecEngine(target, None, draft)
    assert_every_method_decodes_like(target, engine, ([3], [9, 4, 33, 2, 17, 8, 1]), f"{family} {mode}")


def test_a_quantized_draft_keeps_exactness_with_a_float_target(folders):
    target = load_model(str(folders["mistral"]), dtype="float32", with_tokenizer=False).model
    draft = quantize_model(truncated_copy(target, 2), "int4")
    engine = SpecExecEngine(target, None, draft)
    prompt = [5, 1, 60, 7]
    want = greedy_reference(target, prompt, 24)
    for method, settings in METHODS[:3]:
        got = engine.generate(prompt, method=method, max_new_tokens=24, temperature=0.0, **settings)
        assert_greedy_equal(target, prompt, got.token_ids, want, f"quantized draft {method}")


def fresh(model):
    """``model`` with its plain decoder-layer tensors copied into freshly allocated memory (the packed store
    aligns its tensors as a fresh allocation is; transformers memory-maps them at their file offsets, and
    CPU kernels may round differently for differently aligned weights)."""
    for layer in find_decoder_layers(model)[1]:
        for p in layer.parameters():
            if type(p) is torch.nn.Parameter:
                p.data = p.data.clone()
    return model


def _pass_bytes(model, ids) -> int:
    """Bytes the reader reads in one full pass, measured between two later passes."""
    transport = model.specexec_offload.transport
    with torch.no_grad():
        model(ids)
        _settle(transport)
        before = transport.reader.bytes_read
        model(ids)
        _settle(transport)
    return transport.reader.bytes_read - before


def _settle(transport, timeout=10.0):
    end = time.time() + timeout
    while (transport._queue or transport._busy) and time.time() < end:
        time.sleep(0.005)


def assert_streams_like_resident(streamed, resident) -> torch.Tensor:
    """The streamed model holds no layer weights at rest and gives the resident model's logits exactly, for
    one prefix pass and for a tree pass; returns the prefix it ran."""
    from test_offload import TREE, tree_logits

    assert describe(streamed) == describe(resident)
    layers = find_decoder_layers(streamed)[1]
    assert all(p.device.type == "meta" for p in layers[0].parameters())  # at rest: no weights in RAM
    ids = torch.tensor([[4, 8, 15, 16, 23]])
    with torch.no_grad():
        assert torch.equal(streamed(ids).logits, resident(ids).logits)
    want = tree_logits(resident, [1, 2, 3, 4], *TREE)
    got = tree_logits(streamed, [1, 2, 3, 4], *TREE)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    return ids


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_streamed_quantized_layers_equal_resident_ones_and_read_packed_bytes(family, mode, folders):
    resident = fresh(quantized(folders[family], mode))
    streamed = quantized(folders[family], mode, offload="disk", device_size=2)
    ids = assert_streams_like_resident(streamed, resident)
    layers = find_decoder_layers(streamed)[1]
    # a pass reads each layer's packed tensors once: their bytes, plus the gaps that align each tensor to
    # PACK_ALIGN in the file and each file's read to 4 KiB at both ends
    packing = Packing()
    pieces = [t for i, layer in enumerate(find_decoder_layers(resident)[1])
              for local, p in layer.named_parameters() for t in packing.cut(i, local, p).values()]
    packed = sum(t.numel() * t.element_size() for t in pieces)
    read = _pass_bytes(streamed, ids)
    n_layers = len(layers)
    assert packed <= read <= packed + len(pieces) * PACK_ALIGN + n_layers * 2 * 4096
    floats = sum(p.numel() * 4 for layer in find_decoder_layers(_tiny(family))[1] for p in layer.parameters())
    # int8: a byte a weight, int4: half a byte (plus scales); mixtral's experts are no nn.Linear: they stay float
    assert read < ({"int8": 0.4, "int4": 0.3}[mode] if family == "llama" else 1.0) * floats


@pytest.mark.parametrize("repack", [False, True], ids=["plain-cpu-kernel", "avx512bf16-repack"])
def test_int4_is_exact_with_and_without_the_cpu_repacking(repack, folders, monkeypatch):
    """bitsandbytes repacks 4-bit weights (bfloat16 scales) on the first eval-mode run on CPUs with
    AVX512-BF16 and computes with them differently: quantizing on load, in place and streaming agree
    either way. A machine without AVX512-BF16 runs the plain kernel in both cases."""
    import bitsandbytes.nn.modules as bnb_modules

    if not repack:
        monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: False)
    model = quantized(folders["llama"], "int4")
    with torch.no_grad():
        model(torch.tensor([[1, 2]]))
    repacked = {getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                for m in model.modules() if isinstance(m, bnb_modules.Linear4bit)}
    assert repacked == {repack and bnb_modules.has_avx512bf16()}
    test_quantizing_in_place_equals_quantizing_on_load("llama", "int4", folders)
    test_streamed_quantized_layers_equal_resident_ones_and_read_packed_bytes("llama", "int4", folders)


@pytest.mark.parametrize("mode", MODES)
def test_every_method_is_greedy_exact_with_a_quantized_target_streamed(mode, folders):
    resident = quantized(folders["llama"], mode)
    target = quantized(folders["llama"], mode, offload="disk", device_size=2, keep_layers=1)
    draft = truncated_copy(target, 2)  # layer 1 streams: read from the packed store
    engine = SpecExecEngine(target, None, draft)
    assert_every_method_decodes_like(resident, engine, ([9, 4, 33, 2],), f"streamed {mode}")


def test_the_ram_tier_streams_packed_layers_too(folders):
    from specexec.offload import OffloadOptions
    from specexec.offload.packed import stream_packed
    from specexec.models import cache_dir

    resident = quantized(folders["llama"], "int4")
    model = stream_packed(quantized(folders["llama"], "int4"), OffloadOptions("cpu", 2), cache_dir() / "packed",
                          "ram tier test")  # the 'cpu' tier's transport, with the CPU as its device
    ids = torch.tensor([[7, 7, 1, 30]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, resident(ids).logits)


@pytest.mark.parametrize("mode", MODES)
def test_streaming_frees_the_resident_layers(mode, folders):
    import gc
    import weakref

    from specexec.models import cache_dir
    from specexec.offload import OffloadOptions
    from specexec.offload.packed import stream_packed

    model = quantized(folders["llama"], mode)
    owners = []  # every object holding a layer's weights: the parameters and their inner tensors
    for layer in find_decoder_layers(model)[1]:
        for p in layer.parameters():
            owners.append(p)
            if hasattr(p, "quant_state"):
                owners += [t for t in vars(p.quant_state).values() if isinstance(t, torch.Tensor)]
            elif type(p) is not torch.nn.Parameter:
                owners += [getattr(p, n) for n in p.__tensor_flatten__()[0]]
    assert len(owners) > 2 * len(find_decoder_layers(model)[1])
    refs = [weakref.ref(t) for t in owners]
    del owners, p
    model = stream_packed(model, OffloadOptions("disk", 2), cache_dir() / "packed", "free test")
    gc.collect()
    assert not [r for r in refs if r() is not None]  # only the packed store holds the layers now


def test_no_state_of_one_pass_survives_into_the_next(folders):
    resident = fresh(quantized(folders["llama"], "int4"))
    streamed = quantized(folders["llama"], "int4", offload="disk", device_size=1)  # every layer in one buffer
    up = find_decoder_layers(streamed)[1][0].mlp.up_proj
    seen = []

    def tamper(module, args):  # what a kernel that rewrites its weight's state on first use would do
        w = module.weight
        seen.append(w)
        w.quant_state.absmax = torch.zeros_like(w.quant_state.absmax)
        module.quant_state = w.quant_state

    ids = torch.tensor([[2, 7, 1, 8]])
    handle = up.register_forward_pre_hook(tamper)
    with torch.no_grad():
        tampered = streamed(ids).logits
        handle.remove()
        assert not torch.equal(tampered, resident(ids).logits)
        handle = up.register_forward_pre_hook(lambda module, args: seen.append(module.weight))
        assert torch.equal(streamed(ids).logits, resident(ids).logits)
    handle.remove()
    assert len(seen) == 2 and seen[1] is not seen[0]  # a new parameter object every pass


def test_the_packed_store_is_written_once_and_a_damaged_one_rebuilt(folders):
    first = quantized(folders["llama"], "int8", offload="disk")
    store = first.specexec_packed_store
    stamp = {f.name: f.stat().st_mtime_ns for f in store.iterdir()}
    second = quantized(folders["llama"], "int8", offload="disk")
    assert second.specexec_packed_store == store
    assert {f.name: f.stat().st_mtime_ns for f in store.iterdir()} == stamp  # reused, not rewritten
    other = quantized(folders["llama"], "int4", offload="disk")
    assert other.specexec_packed_store != store
    kept = quantized(folders["llama"], "int8", offload="disk", keep_layers=1)  # the same store serves it
    assert kept.specexec_packed_store == store and len(kept.specexec_offload.plans) == 2
    from safetensors.torch import load_file

    for f in sorted(store.glob("layer-*.safetensors")):  # valid safetensors files, every tensor aligned
        tensors = {k: v for k, v in load_file(f).items() if not k.startswith("__pad__")}
        assert tensors and all("::" in k for k in tensors)
    layer = sorted(store.glob("layer-*.safetensors"))[-1]
    layer.write_bytes(layer.read_bytes()[:-100])
    with pytest.warns(RuntimeWarning, match="rebuilding the packed layer store .* truncated"):
        again = quantized(folders["llama"], "int8", offload="disk")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, first(ids).logits)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_embedded_target_quantized_is_greedy_exact(mode):
    from specexec.distill.data import strip_llama2_template

    from conftest import load_prompts

    engine = SpecExecEngine.from_pretrained("embedded", quantize=mode, draft_quantize=mode)
    assert describe(engine.target) is not None and describe(engine.draft) is not None
    prompt = strip_llama2_template(load_prompts("oasst")[1][1])
    ids = engine.encode(prompt, chat=True)
    want = greedy_reference(engine.target, ids, 16, eos_ids=engine.eos_ids)
    for method, settings in (("specexec", dict(max_budget=32)), ("autoregressive", {})):
        got = engine.generate(prompt, chat=True, method=method, max_new_tokens=16, temperature=0.0, **settings)
        assert_greedy_equal(engine.target, ids, got.token_ids, want, f"embedded {mode} {method}")


# ---------------------------------------------------------------- refusals


def test_unknown_modes_and_missing_backends_are_refused(monkeypatch):
    assert parse_quantize(None) is None and parse_quantize("none") is None
    with pytest.raises(QuantizationError, match="unknown quantization 'int3'"):
        parse_quantize("int3")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(QuantizationError, match=r"pip install 'specexec\[bnb\]'"):
        quantize_model(tiny_model("llama", dtype=torch.float32), "int4")


def _prequantized(folder, tmp_path, quantization_config):
    out = tmp_path / "prequantized"
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("qconfig, message", [
    ({"quant_method": "nonsense"}, "quantization method 'nonsense' is not supported"),
    ({"bits": 4}, "has no quant_method: its config.json is broken"),
    ({"quant_method": "gptq", "bits": 4}, "gptq checkpoints run on CUDA GPUs only"),
])
def test_broken_or_unavailable_checkpoint_quantization_is_one_line(qconfig, message, folders, tmp_path):
    folder = _prequantized(folders["llama"], tmp_path, qconfig)
    with pytest.raises(ModelLoadError, match=message) as err:
        load_model(str(folder), with_tokenizer=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mode", MODES)
def test_a_prequantized_checkpoint_loads_streams_and_refuses_quantizing_twice(mode, folders, tmp_path):
    model = quantized(folders["llama"], mode)
    out = tmp_path / mode
    model.save_pretrained(out)  # a torchao int8 / bitsandbytes NF4 checkpoint, as published on the hub
    loaded = load_model(str(out), dtype="float32", with_tokenizer=False).model
    ids = torch.tensor([[1, 2, 3, 40]])
    with torch.no_grad():
        want = model(ids).logits
        assert torch.equal(loaded(ids).logits, want)
        streamed = load_model(str(out), dtype="float32", with_tokenizer=False, offload="disk").model
        assert torch.equal(streamed(ids).logits, want)
    with pytest.raises(QuantizationError, match="already quantized"):
        load_model(str(out), with_tokenizer=False, quantize="int8")


def test_quantizing_a_quantized_draft_again_is_refused_or_a_no_op(folders):
    from specexec.drafts import default_draft
    from specexec.errors import ConfigError
    from specexec.models import LoadedModel

    target = LoadedModel(quantized(folders["llama"], "int8"), None, "tiny")
    draft, _ = default_draft("truncated:1", target, quantize="int8")  # already int8: nothing to do
    assert describe(draft) == "Int8Tensor (torchao)"
    with pytest.raises(ConfigError, match="the draft copies the target's layers"):
        default_draft("truncated:1", target, quantize="int4")
    assert default_draft("none", target, quantize="int4") == (None, None)


def test_quantized_layers_are_not_streamed_to_a_gpu_yet(folders, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    with pytest.raises(OffloadError, match="quantized layers stream from disk only"):
        quantized(folders["llama"], "int4", offload="cpu")


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", "hi", "--quantize", "int3"], "invalid choice: 'int3'"),
    (["generate", "--prompt", "hi", "--draft", "self", "--draft-quantize", "int8"], "does not apply to --draft self"),
])
def test_cli_quantize_errors_are_one_line(argv, message, capsys):
    from test_bad_input import main_in_process

    code, err = main_in_process(capsys, *argv)
    assert code == 2
    err = err.strip()
    assert message in err.splitlines()[-1] and "Traceback" not in err, err

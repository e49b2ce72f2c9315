"""Offloading: a model whose decoder layers are streamed (from disk, or from RAM through device
buffers) computes exactly what the resident model computes, reads every layer once per pass in
rotation order, and reports a failed read with the layer and file named."""

import os
import shutil
import time

import pytest
import torch

from specexec import SpecExecEngine
from specexec.errors import OffloadError
from specexec.models import load_model, truncated_copy
from specexec.offload import NO_CUDA, OffloadOptions, load_offloaded
from specexec.offload.loading import attach, build_skeleton
from specexec.offload.ram import RamTransport
from specexec.runner import ModelRunner
from specexec.tree import ancestor_matrix

from conftest import assert_greedy_equal, greedy_reference, tiny_model

FAMILIES = ["llama", "qwen2", "gemma", "gpt_neox", "opt"]
LAYERS = 5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> folder of a saved tiny random model (float64, 5 layers, peaked)."""
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        tiny_model(family, seed=1, layers=LAYERS, initializer_range=0.4).save_pretrained(folder,
                                                                                          safe_serialization=True)
        out[family] = folder
    return out


@pytest.fixture(scope="module")
def residents(folders):
    """family -> the same model loaded whole by transformers (the reference)."""
    return {f: load_model(str(d), dtype="float64", with_tokenizer=False).model for f, d in folders.items()}


@pytest.fixture(scope="module")
def fresh(folders):
    """family -> the resident model with its decoder layers copied into freshly allocated memory, as moving
    them to a device does. CPU kernels round differently for weights aligned differently modulo 64 bytes
    (transformers memory-maps tensors at their file offsets): the disk tier keeps file alignment, the RAM
    tier's packed buffers have that of a fresh allocation."""
    from specexec.offload.plan import find_decoder_layers

    out = {}
    for f, d in folders.items():
        model = load_model(str(d), dtype="float64", with_tokenizer=False).model
        for p in find_decoder_layers(model)[1].parameters():
            p.data = p.data.clone()
        out[f] = model
    return out


def disk(folder, device_size=2, keep_layers=0, dtype="float64"):
    return load_model(str(folder), dtype=dtype, with_tokenizer=False, offload="disk", device_size=device_size,
                      keep_layers=keep_layers).model


def ram_on_cpu(folder, device_size=2, keep_layers=0, dtype=torch.float64):
    """The 'cpu' tier's transport (host blocks copied into device buffers) with the CPU as the device."""
    model, layers, plans = build_skeleton(folder, keep_layers, dtype, torch.device("cpu"))
    transport = RamTransport(plans, min(device_size, len(plans)), dtype, torch.device("cpu"), pin=False)
    return attach(model, layers, plans, transport)


def tree_logits(model, prefix, tree_tokens, parents):
    """Logits of one prefix pass and one tree pass (4D mask, depth positions) through the project's runner."""
    runner = ModelRunner(model)
    first = runner.forward_chain(torch.tensor(prefix), 0)
    runner.commit(torch.arange(len(prefix)))
    n = len(tree_tokens)
    anc, depth = ancestor_matrix(parents)
    visible = torch.cat([torch.ones(n, len(prefix), dtype=torch.bool), anc], 1)
    second = runner.forward(torch.tensor(tree_tokens), len(prefix) + depth, visible)
    return first, second


TREE = ([5, 9, 11, 3, 7, 2, 8], [-1, 0, 0, 1, 1, 2, 3])


def wait_reads(transport, count, timeout=10.0):
    end = time.time() + timeout
    while len(transport.reads) < count and time.time() < end:
        time.sleep(0.005)
    return list(transport.reads)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_logits_equal_resident_logits(family, folders, residents, fresh):
    for make, ref in ((disk, residents[family]), (ram_on_cpu, fresh[family])):
        with torch.no_grad():
            want_one = ref(torch.tensor([[4]])).logits
        want_prefix, want_tree = tree_logits(ref, [1, 2, 3, 4], *TREE)
        model = make(folders[family])
        # at rest the streamed layers hold no weights: only meta tensors
        assert all(p.device.type == "meta" for p in model.specexec_offload.layers[0].parameters())
        if model.config.tie_word_embeddings:
            assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        with torch.no_grad():
            assert torch.equal(model(torch.tensor([[4]])).logits, want_one), (family, make.__name__)
        got_prefix, got_tree = tree_logits(model, [1, 2, 3, 4], *TREE)
        assert torch.equal(got_prefix, want_prefix) and torch.equal(got_tree, want_tree), (family, make.__name__)


def test_generation_config_is_read_like_transformers_does(folders, tmp_path):
    from transformers import GenerationConfig

    folder = tmp_path / "g"
    shutil.copytree(folders["llama"], folder)
    GenerationConfig(eos_token_id=[5, 7], max_length=99).save_pretrained(folder)
    ref = load_model(str(folder), dtype="float64", with_tokenizer=False).model
    model = disk(folder)
    assert model.generation_config.eos_token_id == ref.generation_config.eos_token_id == [5, 7]
    assert model.generation_config.max_length == 99


def test_checkpoint_dtype_is_converted_like_transformers_does(folders):
    ref = load_model(str(folders["llama"]), dtype="float32", with_tokenizer=False).model  # converted: fresh memory
    with torch.no_grad():
        want = ref(torch.tensor([[1, 2, 3]])).logits
    for model in (disk(folders["llama"], dtype="float32"), ram_on_cpu(folders["llama"], dtype=torch.float32)):
        assert model.get_input_embeddings().weight.dtype == torch.float32
        with torch.no_grad():
            assert torch.equal(model(torch.tensor([[1, 2, 3]])).logits, want)


@pytest.mark.parametrize("keep", [0, 2])
@pytest.mark.parametrize("device_size", list(range(1, LAYERS + 1)))
def test_rotation_reads_each_layer_once_per_pass_in_order(device_size, keep, folders, residents):
    ref = residents["llama"]
    model = disk(folders["llama"], device_size=device_size, keep_layers=keep)
    streamer = model.specexec_offload
    streamed = list(range(keep, LAYERS))
    slots = min(device_size, len(streamed))
    assert streamer.slots == slots
    # every layer computes with its own weights: checked inside the pass, after the swap
    seen = []
    layers = streamer.layers
    for i, layer in enumerate(layers):
        def check(module, args, i=i):
            for (name, p), (_, q) in zip(module.named_parameters(), ref.model.layers[i].named_parameters()):
                assert torch.equal(p, q), f"layer {i} computes with wrong {name}"
            seen.append(i)
        layer.register_forward_pre_hook(check)
    passes = 3
    ids = torch.tensor([[1, 2, 3]])
    for _ in range(passes):
        with torch.no_grad():
            assert torch.equal(model(ids).logits, ref(ids).logits)
    assert seen == list(range(LAYERS)) * passes
    # reads: position k holds layer streamed[k % n] in buffer k % slots; the next pass's first layers are
    # prefetched (wrap-around), nothing else, nothing twice
    n = len(streamed)
    want = [(k, streamed[k % n], k % slots) for k in range(passes * n + slots)]
    assert wait_reads(streamer.transport, len(want)) == want
    time.sleep(0.05)
    assert len(streamer.transport.reads) == len(want)
    assert streamer.schedule.restarts == 0
    # resident (kept) layers hold real weights, streamed ones meta tensors
    for i, layer in enumerate(layers):
        devices = {p.device.type for p in layer.parameters()}
        assert devices == ({"cpu"} if i < keep else {"meta"})


def test_ram_tier_rotation_matches_the_disk_tier(folders):
    a, b = disk(folders["qwen2"], device_size=3), ram_on_cpu(folders["qwen2"], device_size=3)
    ids = torch.tensor([[7, 8]])
    for _ in range(2):
        with torch.no_grad():
            assert torch.equal(a(ids).logits, b(ids).logits)
    wait_reads(a.specexec_offload.transport, 2 * LAYERS + 3)
    assert list(a.specexec_offload.transport.reads) == list(b.specexec_offload.transport.reads)


def test_time_waiting_for_reads_is_counted(folders):
    """The compute thread's time blocked on reads (the benchmark's 'waiting for reads'): with one buffer and a
    slow disk every layer waits for its read; with every layer read ahead of the pass none does."""
    delay = 0.03
    for device_size, slow in ((1, True), (LAYERS, False)):
        model = disk(folders["llama"], device_size=device_size)
        streamer = model.specexec_offload
        reader = streamer.transport.reader
        real = reader.pread

        def sleepy(fd, buf, offset, real=real):
            time.sleep(delay)
            return real(fd, buf, offset)

        reader.pread = sleepy
        with torch.no_grad():
            model(torch.tensor([[1, 2]]))  # the first pass restarts the rotation: the next is in steady state
        wait_reads(streamer.transport, LAYERS + device_size)
        time.sleep(0.2 if not slow else 0.0)  # all buffers read ahead before the pass
        before, read_before = streamer.wait_seconds, reader.seconds
        with torch.no_grad():
            model(torch.tensor([[3]]))
        waited = streamer.wait_seconds - before
        if slow:  # layer 0 was prefetched; each of the others waits for its own read
            assert waited >= 0.8 * delay * (LAYERS - 1), waited
            assert reader.seconds - read_before >= 0.8 * delay * (LAYERS - 1)
        else:
            assert waited < delay, waited
        reader.pread = real


def test_waiting_for_the_reader_to_idle_keeps_the_prefetched_layers(folders, residents):
    """wait_idle (the benchmark's quiet disk for its bandwidth sweep) returns once the next pass's layers
    are read, and the next pass uses them: no read is repeated or lost."""
    ref, model = residents["llama"], disk(folders["llama"], device_size=2)
    transport, reader = model.specexec_offload.transport, model.specexec_offload.transport.reader
    real = reader.pread

    def slow(fd, buf, offset):
        time.sleep(0.05)
        return real(fd, buf, offset)

    reader.pread = slow
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
        transport.wait_idle()  # the 2 buffers' reads for the next pass were queued at the pass's end
        assert not transport._queue and not transport._busy
        done = len(transport.reads)
        assert done == LAYERS + 2, done
        assert torch.equal(model(ids).logits, ref(ids).logits)
    transport.wait_idle()
    assert len(transport.reads) == done + LAYERS  # this pass read its other layers and the next pass's first two
    reader.pread = real


def test_a_pass_cut_short_restarts_the_rotation(folders, residents):
    ref, model = residents["llama"], disk(folders["llama"], device_size=2)
    layer = model.specexec_offload.layers[2]
    handle = layer.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        model(torch.tensor([[1, 2]]))
    handle.remove()
    assert all(p.device.type == "meta" for p in layer.parameters())  # weights given back despite the error
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert model.specexec_offload.schedule.restarts == 1


def test_generate_of_transformers_runs_on_a_streamed_model(folders, residents):
    prompt = [3, 1, 4, 1, 5]
    assert greedy_reference(disk(folders["gemma"], device_size=3, keep_layers=1), prompt, 12) == \
        greedy_reference(residents["gemma"], prompt, 12)


def test_every_method_is_greedy_exact_with_the_target_streamed(folders, residents):
    ref = residents["llama"]
    target = disk(folders["llama"], device_size=2, keep_layers=1)
    draft = truncated_copy(target, 2)  # its streamed layer 1 is read from the checkpoint
    assert torch.equal(draft.model.layers[1].mlp.up_proj.weight, ref.model.layers[1].mlp.up_proj.weight)
    engine = SpecExecEngine(target, None, draft)
    for prompt in ([3], [9, 4, 33, 2, 17, 8, 1]):
        want = greedy_reference(ref, prompt, 20)
        for method, settings in (("specexec", dict(max_budget=32, max_n_beams=4, max_branch_width=4)),
                                 ("specinfer", dict(max_n_beams=3, max_beam_len=4)),
                                 ("chain", dict(max_beam_len=4)), ("autoregressive", {})):
            got = engine.generate(prompt, method=method, max_new_tokens=20, temperature=0.0, **settings)
            assert_greedy_equal(ref, prompt, got.token_ids, want, f"{method} {prompt}")


def test_embedded_target_streamed_from_disk_is_greedy_exact(embedded):
    from specexec.distill.data import strip_llama2_template
    from specexec.drafts import default_draft

    from conftest import load_prompts

    resident, tokenizer = embedded
    loaded = load_model("embedded", dtype="float32", offload="disk", device_size=2)
    with torch.no_grad():
        ids = torch.tensor([[1, 504, 3458, 282, 1345]])
        assert torch.equal(loaded.model(ids).logits, resident(ids).logits)
    draft, _ = default_draft(None, loaded)  # the shipped draft, resident
    engine = SpecExecEngine(loaded.model, loaded.tokenizer, draft, draft_tokenizer=loaded.tokenizer)
    prompt = strip_llama2_template(load_prompts("oasst")[0][1])
    ids = engine.encode(prompt, chat=True)
    want = greedy_reference(resident, ids, 16, eos_ids=engine.eos_ids)
    for method, settings in (("specexec", dict(max_budget=32)), ("specinfer", dict(max_n_beams=4, max_beam_len=4)),
                             ("chain", dict(max_beam_len=4)), ("autoregressive", {})):
        got = engine.generate(prompt, chat=True, method=method, max_new_tokens=16, temperature=0.0, **settings)
        assert_greedy_equal(resident, ids, got.token_ids, want, f"embedded {method}")


# ---------------------------------------------------------------- failures


def test_an_io_error_in_the_reader_names_the_layer_and_file(folders, residents):
    model = disk(folders["llama"], device_size=2)
    transport = model.specexec_offload.transport
    plan = transport.plans[3]
    bad = {e.start for e in plan.extents}
    real = transport.reader.pread

    def failing(fd, buf, offset):
        if offset in bad:
            raise OSError(5, "Input/output error")
        return real(fd, buf, offset)

    transport.reader.pread = failing
    with pytest.raises(OffloadError, match=r"decoder layer 3: reading .*model\.safetensors.*Input/output error"):
        with torch.no_grad():
            model(torch.tensor([[1, 2]]))
    transport.reader.pread = real  # the fault is gone: the next pass is whole and exact again
    with torch.no_grad():
        assert torch.equal(model(torch.tensor([[1, 2]])).logits, residents["llama"](torch.tensor([[1, 2]])).logits)


def test_a_file_truncated_while_streaming_names_the_layer_and_file(folders, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(folders["opt"], folder)
    model = disk(folder, device_size=1)
    with torch.no_grad():
        model(torch.tensor([[1]]))
    path = folder / "model.safetensors"
    last = model.specexec_offload.plans[LAYERS - 1]
    os.truncate(path, min(e.start for e in last.params.values()) + 8)
    with pytest.raises(OffloadError, match=rf"decoder layer {LAYERS - 1}: .*model\.safetensors is truncated"):
        with torch.no_grad():
            model(torch.tensor([[1]]))


def test_a_truncated_or_incomplete_checkpoint_is_refused_at_load(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "t"
    shutil.copytree(folders["qwen2"], folder)
    path = folder / "model.safetensors"
    plan = disk(folder).specexec_offload.plans[2]
    os.truncate(path, plan.params["mlp.up_proj.weight"].start + 16)  # cuts layer 2 and all after it
    with pytest.raises(OffloadError, match=r"decoder layer 2: .*model\.safetensors is truncated"):
        disk(folder)
    shutil.copy(folders["qwen2"] / "model.safetensors", path)
    os.truncate(path, path.stat().st_size - 8)
    with pytest.raises(OffloadError, match=r"model\.norm\.weight.*model\.safetensors"):
        disk(folder)
    shutil.copy(folders["qwen2"] / "model.safetensors", path)
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(OffloadError, match=r"decoder layer 1: tensor model\.layers\.1\.mlp\.up_proj\.weight is "
                                           r"missing .*model\.safetensors"):
        disk(folder)


# ---------------------------------------------------------------- settings and command line


def test_settings_are_checked(monkeypatch, folders):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OffloadError) as err:
        load_model(str(folders["llama"]), offload="cpu")
    assert str(err.value) == NO_CUDA == "--offload cpu needs a CUDA GPU; on a CPU-only machine use --offload disk"
    for bad, match in ((dict(mode="tape"), "'cpu' or 'disk'"), (dict(mode="disk", device_size=0), "--device-size"),
                       (dict(mode="disk", keep_layers=-1), "--keep-layers")):
        with pytest.raises(OffloadError, match=match):
            OffloadOptions(**bad)
    with pytest.raises(OffloadError, match="computes on the CPU"):
        OffloadOptions("disk").compute_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert OffloadOptions("cpu").compute_device("cpu") == torch.device("cuda")
    # every layer kept: nothing streams
    model = disk(folders["llama"], keep_layers=LAYERS)
    assert getattr(model, "specexec_offload", None) is None


def test_buffers_are_sized_by_memory_unless_given(folders):
    from types import SimpleNamespace

    from specexec.offload.options import DISK_BUFFER_BYTES, DISK_MAX_BUFFERS, GPU_BUFFERS

    def plans(n, nbytes):
        return [SimpleNamespace(raw_nbytes=nbytes)] * n

    mib = 1 << 20
    assert DISK_BUFFER_BYTES == 512 * mib and DISK_MAX_BUFFERS == 16 and GPU_BUFFERS == 2
    disk_auto = OffloadOptions("disk")
    assert disk_auto.slots(plans(30, 14 * mib)) == 16  # a small model's layers: 16 buffers
    assert disk_auto.slots(plans(10, 14 * mib)) == 10  # never more buffers than streamed layers
    assert disk_auto.slots(plans(40, 100 * mib)) == 5  # 512 MiB of buffers
    assert disk_auto.slots(plans(40, 800 * mib)) == 2  # a 13B layer: the floor of two
    assert disk_auto.slots(plans(1, 800 * mib)) == 1
    assert OffloadOptions("cpu").slots(plans(30, 14 * mib)) == 2  # GPU memory is what the target lacks
    assert OffloadOptions("disk", 3).slots(plans(30, 800 * mib)) == 3  # given: kept
    assert OffloadOptions("disk", 9).slots(plans(4, mib)) == 4
    model = disk(folders["llama"], device_size=None)  # the default sizes the rotation by the rule above
    assert model.specexec_offload.slots == len(model.specexec_offload.plans) == LAYERS
    assert disk(folders["llama"], device_size=2).specexec_offload.slots == 2


def test_offload_needs_local_safetensors(tmp_path):
    from specexec.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_model("no-such-org/no-such-model-xyz", offload="disk")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")  # a broken GGUF file: converted first, refused there
    with pytest.raises(ModelLoadError, match="cannot convert the GGUF file"):
        load_model(str(tmp_path / "m.gguf"), offload="disk")


@pytest.mark.parametrize("argv, message", [
    (["--offload", "cpu"], NO_CUDA),
    (["--offload", "disk", "--device-size", "0"], "--device-size must be an integer >= 1"),
    (["--offload", "disk", "--keep-layers", "-2"], "--keep-layers must be an integer >= 0"),
    (["--offload", "disk", "--device", "cuda"], "--offload disk computes on the CPU"),
])
def test_cli_offload_errors_are_one_line(argv, message, capsys, monkeypatch):
    from specexec.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["generate", "--prompt", "hi", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_run_exp_offload_flag(tmp_path, capsys, monkeypatch):
    from specexec.experiments import flags
    from specexec.experiments.loop import main

    import argparse

    p = argparse.ArgumentParser()
    flags.add_arguments(p)
    assert p.parse_args(["--offload"]).offload == "cpu"  # bare flag: the paper's mode
    assert p.parse_args(["--offload", "disk", "--device_size", "3"]).offload == "disk"
    assert p.parse_args([]).offload is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--offload", "--save_dir", str(tmp_path), "--no_progress"], prog="run_exp.py") == 2
    assert NO_CUDA in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_generates_with_the_target_streamed_from_disk(capsys):
    """The embedded target streamed from disk through the command line, same text as resident."""
    from specexec.cli import main

    args = ["generate", "--prompt", "The capital of France is", "--method", "specexec", "--max-new-tokens", "8",
            "--json"]
    assert main(args) == 0
    resident = capsys.readouterr().out
    assert main(args + ["--offload", "disk", "--device-size", "3", "--keep-layers", "2"]) == 0
    streamed = capsys.readouterr().out
    import json

    a, b = json.loads(resident), json.loads(streamed)
    assert a["token_ids"] == b["token_ids"] and len(a["token_ids"]) == 8


def test_run_exp_with_the_target_streamed_from_disk(tmp_path):
    """The experiment runner end to end with --offload disk: the same tokens as without."""
    from experiments_tiny import save_tiny_models
    from specexec.experiments.loop import main
    from specexec.experiments.report import read_jsonl

    draft, target = save_tiny_models(tmp_path / "models")
    tokens = {}
    for name, extra in (("resident", []), ("streamed", ["--offload", "disk", "--device_size", "1"])):
        argv = ["--model_0", draft, "--model_1", target, "--save_dir", str(tmp_path), "--no_progress", "--no_plot",
                "--max_new_tokens=6", "--temperature", "0", "--max_budget=8", "-b", "4", "-m", "4", "--n_tests=2",
                "--baseline", f"--exp_name={name}", *extra]
        assert main(argv, prog="run_exp.py") == 0
        records = read_jsonl(tmp_path / name / "results.jsonl")
        tokens[name] = [(r["config"], r["prompt_id"], r["token_ids"]) for r in records if r["msg_type"] == "test"]
    assert tokens["streamed"] == tokens["resident"] and len(tokens["resident"]) == 4
    log = (tmp_path / "streamed" / "run.log").read_text()
    assert "decoder layers streamed from disk" in log and "2 layers streamed from disk through 1 buffers" in log


def test_cpu_tier_orders_copies_and_compute_by_events(folders, fresh, monkeypatch):
    """The 'cpu' tier's CUDA protocol with streams and events replaced by recorders (copies run on the
    CPU): each copy into a buffer waits for the event recorded when the buffer's previous layer had
    run, each layer waits for the event recorded after its own copy, and nothing synchronises the host."""
    import contextlib
    from collections import defaultdict

    log = []

    class Event:
        def record(self, stream):
            log.append(("record", stream, self))

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_event(self, event):
            log.append(("wait", self, event))

    side, compute = Stream("side"), Stream("compute")
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: side)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: compute)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("host synchronisation"))

    model, layers, plans = build_skeleton(folders["llama"], 0, torch.float64, torch.device("cpu"))
    transport = RamTransport(plans, 2, torch.float64, torch.device("cpu"), pin=False)
    transport.cuda = True
    transport.make_streams()
    load, wait = transport.load, transport.wait
    transport.load = lambda k, layer, slot: (log.append(("load", k, slot)), load(k, layer, slot))[1]
    transport.wait = lambda k, layer, slot: (log.append(("compute", k, slot)), wait(k, layer, slot))[1]
    attach(model, layers, plans, transport)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(model(ids).logits, fresh["llama"](ids).logits)
    records = defaultdict(int)
    current, checked = None, 0
    for kind, a, b in log:
        if kind in ("load", "compute"):
            current = (kind, a, b)
        elif kind == "record":
            records[id(b)] += 1
        else:  # a stream waits for an event
            what, k, slot = current
            if what == "load":
                assert a is side and b is transport.free[slot] and records[id(b)] == k // 2, (k, slot)
            else:
                assert a is compute and b is transport.ready[slot] and records[id(b)] == k // 2 + 1, (k, slot)
            checked += 1
    assert checked == 3 * LAYERS + (3 * LAYERS + 2)  # every layer run and every copy (2 prefetched) waited


def test_pinned_memory_failure_falls_back_to_pageable_memory(folders, fresh, monkeypatch):
    import warnings

    import specexec.offload.ram as ram

    real = ram.aligned_empty

    def no_pinning(nbytes, align=4096, pin=False):  # as on a machine without CUDA (or out of pinnable memory)
        if pin:
            raise RuntimeError("pin_memory=True requires a CUDA or other accelerator backend")
        return real(nbytes, align)

    monkeypatch.setattr(ram, "aligned_empty", no_pinning)
    model, layers, plans = build_skeleton(folders["gemma"], 1, torch.float64, torch.device("cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transport = RamTransport(plans, 2, torch.float64, torch.device("cpu"), pin=True)
    assert any("pinned memory unavailable" in str(w.message) for w in caught)
    assert not any(b.is_pinned() for b in transport.host.values())
    attach(model, layers, plans, transport)
    with torch.no_grad():
        assert torch.equal(model(torch.tensor([[2, 3]])).logits, fresh["gemma"](torch.tensor([[2, 3]])).logits)

"""Building an offloaded model without holding all its weights in RAM.

The model is built from its config with parameters on the meta device (accelerate's
``init_empty_weights``; buffers such as rotary frequencies are real). Every tensor outside the
streamed decoder layers (embeddings, final norm, head, kept layers) is then loaded for real from
the safetensors files; tied embeddings are tied again. The streamed layers keep meta parameters,
filled from the transport's buffers while each layer runs (:class:`LayerStreamer`).
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch

from ..errors import OffloadError
from .layout import TensorEntry, check_inside, read_index
from .options import OffloadOptions
from .plan import LayerPlan, checkpoint_name, find_decoder_layers, plan_layers, rename_index
from .reader import LayerReader, read_once
from .streamer import LayerStreamer


def load_offloaded(folder: str | Path, options: OffloadOptions, dtype: torch.dtype | None = None,
                   device: str | torch.device | None = "cpu", attn_implementation: str | None = None,
                   reader: LayerReader | None = None):
    """The causal LM in ``folder`` with its decoder layers streamed per ``options``.

    The returned model carries its :class:`LayerStreamer` as ``model.specexec_offload``.
    """
    if options.mode is None:
        raise OffloadError("load_offloaded needs an offload mode ('disk' or 'cpu')")
    compute = options.compute_device(device)
    model, layers, plans = build_skeleton(folder, options.keep_layers, dtype, compute, attn_implementation)
    if not plans:  # every layer kept resident
        return model
    slots = options.slots(plans)
    dtype = next(model.parameters()).dtype
    if options.mode == "disk":
        from .disk import DiskTransport

        transport = DiskTransport(plans, slots, dtype, reader)
    else:
        from .ram import RamTransport

        transport = RamTransport(plans, slots, dtype, compute, reader)
    return attach(model, layers, plans, transport, options)


def build_skeleton(folder: str | Path, keep_layers: int, dtype: torch.dtype | None, device: torch.device,
                   attn_implementation: str | None = None):
    """(model, its decoder layer list, plans of the streamed layers): everything outside the streamed
    layers loaded on ``device``, the streamed layers' parameters on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    index = read_index(folder)
    config = AutoConfig.from_pretrained(folder)
    if getattr(config, "quantization_config", None) is not None:
        raise OffloadError(f"{folder} is a quantised checkpoint; offloading streams plain float weights")
    dtype = dtype or getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    if (folder / "generation_config.json").exists():  # EOS ids and defaults, as from_pretrained reads them
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(folder)
    index = rename_index(model, index)
    layers_name, layers = find_decoder_layers(model)
    plans = plan_layers(model, index, layers_name, layers, first=min(keep_layers, len(layers)))
    streamed = tuple(f"{layers_name}.{p.index}." for p in plans)
    _load_resident(model, index, streamed, dtype, device)
    model.specexec_layers_name = layers_name
    return model.eval(), layers, plans


def attach(model, layers, plans: list[LayerPlan], transport, options: OffloadOptions | None = None, packing=None):
    """Stream ``plans``' layers of ``model`` through ``transport``; the transport stops with the model."""
    streamer = LayerStreamer(layers, plans, transport, packing)
    streamer.options = options
    streamer.layers_name = model.specexec_layers_name
    model.specexec_offload = streamer
    weakref.finalize(model, transport.close)
    return model


def _load_resident(model, index: dict[str, TensorEntry], streamed: tuple[str, ...], dtype, device) -> None:
    """Load every parameter and persistent buffer outside the streamed layers; tie embeddings."""
    from safetensors import safe_open

    prefix = getattr(model, "base_model_prefix", "")
    done: dict[int, torch.nn.Parameter] = {}  # original (meta) parameter -> loaded one: keeps ties
    handles: dict[str, object] = {}
    missing = []
    for key, entry in index.items():  # a truncated file: name the tensor cut, not just the file
        if not key.startswith(streamed):
            check_inside(entry, f"tensor {entry.name}")

    def read(key: str) -> torch.Tensor:
        entry = index[key]
        try:
            if entry.file not in handles:
                handles[entry.file] = safe_open(entry.file, framework="pt")
            return handles[entry.file].get_tensor(entry.name)
        except Exception as err:  # noqa: BLE001 - a damaged file: one clear line
            raise OffloadError(f"cannot read tensor {entry.name} from {entry.file}: {err}") from err

    for mname, module in model.named_modules():
        in_streamed = (mname + ".").startswith(streamed)
        for pname, param in list(module._parameters.items()):
            if param is None or in_streamed:  # streamed parameters stay meta; their buffers load below
                continue
            full = f"{mname}.{pname}" if mname else pname
            if id(param) in done:
                module._parameters[pname] = done[id(param)]
                continue
            key = checkpoint_name(full, index, prefix)
            if key is None:
                if param.device.type == "meta":
                    missing.append(full)  # maybe tied: checked after tie_weights
                continue
            value = read(key).to(dtype=dtype if param.dtype.is_floating_point else param.dtype, device=device)
            new = torch.nn.Parameter(value, requires_grad=False)
            done[id(param)] = new
            module._parameters[pname] = new
        for bname, buf in list(module._buffers.items()):
            if buf is None:
                continue
            full = f"{mname}.{bname}" if mname else bname
            key = checkpoint_name(full, index, prefix) if bname not in module._non_persistent_buffers_set else None
            value = read(key).to(buf.dtype) if key is not None else buf
            module._buffers[bname] = value.to(device)
    if missing or getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    left = [n for n, p in model.named_parameters(remove_duplicate=False)
            if p.device.type == "meta" and not any(n.startswith(s) for s in streamed)]
    if left:
        files = sorted({e.file for e in index.values()})
        raise OffloadError(f"tensor {left[0]} is missing from the checkpoint ({', '.join(files)})")


def materialized_layer(model, index: int) -> dict[str, torch.Tensor]:
    """A streamed layer's tensors read into fresh RAM (for drafts built from the target's first layers)."""
    streamer: LayerStreamer = model.specexec_offload
    plan: LayerPlan = streamer.plans[index]
    dtype = next(model.parameters()).dtype
    return {k: v.to(dtype).clone() for k, v in plan.raw_views(read_once(plan)).items()}


def resident_state_dict(model, n_layers: int | None = None) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with the streamed layers among the first ``n_layers`` (default all) read
    from the checkpoint."""
    state = model.state_dict()
    streamer = getattr(model, "specexec_offload", None)
    if streamer is None:
        return state
    for i in streamer.plans:
        if n_layers is not None and i >= n_layers:
            continue
        for local, value in materialized_layer(model, i).items():
            state[f"{streamer.layers_name}.{i}.{local}"] = value
    return state

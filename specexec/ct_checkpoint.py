"""Writing compressed-tensors checkpoints: round-to-nearest weight quantization of a float model's
linear layers (min-max scales per group), saved in the format llm-compressor writes (``pack-quantized``:
int values packed in int32, with their scales), which transformers, vLLM and specexec load.

Round to nearest is the simplest of the schemes that format holds; GPTQ or AWQ calibration
(llm-compressor) gives better weights in the same layout. specexec uses it to build test and
benchmark targets; docs/quantization.md says which schemes load here.
"""

from __future__ import annotations

from pathlib import Path

import torch

# weight-only presets with one scale per group of weights; the asymmetric one (packed zero points) writes
# checkpoints that do not load back with the pinned transformers (specexec refuses them)
SCHEMES = ("W4A16", "W8A16", "W4A16_ASYM")


def write_compressed_tensors(model: torch.nn.Module, folder: str | Path, scheme: str = "W4A16",
                             group_size: int = 128, ignore: tuple[str, ...] = ("lm_head",)) -> Path:
    """Quantize ``model``'s ``nn.Linear`` layers (all but those named in ``ignore``) with the preset
    ``scheme``, ``group_size`` weights a scale, and save it with its config as a compressed-tensors
    checkpoint in ``folder``; returns the folder. ``model`` is left compressed (load the folder to
    use it). Every quantized layer's input width must be a multiple of ``group_size``."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationConfig, QuantizationStatus, apply_quantization_config,
                                                 preset_name_to_scheme)
    from compressed_tensors.quantization.utils import calculate_qparams

    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    for name, module in model.named_modules():  # checked before anything changes the model
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in ignore and name not in ignore \
                and module.in_features % group_size:
            raise ValueError(f"{name}: input width {module.in_features} is not a multiple of the group size "
                             f"{group_size}")
    preset = preset_name_to_scheme(scheme, ["Linear"])
    preset.weights.group_size = group_size
    config = QuantizationConfig(config_groups={"group_0": preset}, ignore=list(ignore))
    apply_quantization_config(model, config, show_progress=False)
    with torch.no_grad():
        for name, module in model.named_modules():
            if getattr(module, "quantization_scheme", None) is None:
                continue
            groups = module.weight.reshape(module.weight.shape[0], -1, group_size)
            scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), module.quantization_scheme.weights)
            module.weight_scale.copy_(scale)
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.copy_(zero_point)
            module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    folder = Path(folder)
    model.save_pretrained(folder)
    compressor.update_config(str(folder))
    return folder

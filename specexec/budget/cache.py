"""Cost profiles cached in the user cache, one file per setting.

A profile is valid for one (target, draft, dtype, quantization, device, offload mode, machine): the key
names each, and the file name is the key's digest, so changing any of them measures anew.
A file that cannot be read back is measured again, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from pathlib import Path

import torch

from ..machine import cpu_name
from .cost import CostProfile

KEY_VERSION = 1


def machine_identity(device: torch.device) -> dict:
    ident = {"host": platform.node(), "cpu": cpu_name(), "cores": os.cpu_count(),
             "threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cuda":
        ident["gpu"] = torch.cuda.get_device_name(device)
    return ident


def model_identity(model) -> dict | None:
    from ..quantize import describe

    if model is None:
        return None
    config = model.config
    text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else repr(config)
    return {"name": str(getattr(config, "_name_or_path", "") or ""),
            "config": hashlib.sha256(text.encode()).hexdigest()[:16],
            "parameters": sum(p.numel() for p in model.parameters()),
            "quantization": describe(model)}  # a draft quantized in place keeps its config


def offload_identity(model) -> str:
    streamer = getattr(model, "specexec_offload", None)
    if streamer is None:
        return "resident"
    return f"{type(streamer.transport).__name__}:{streamer.slots}:{len(streamer.plans)}"


def profile_key(target, draft) -> dict:
    param = next(target.parameters())
    device = param.device
    return {"version": KEY_VERSION, "target": model_identity(target),
            "draft": model_identity(draft) if draft is not target else "self",
            "dtype": str(param.dtype),
            "draft_dtype": str(next(draft.parameters()).dtype) if draft is not None else None,
            "device": str(device), "offload": offload_identity(target),
            "machine": machine_identity(device)}


def profile_path(cache_root: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root / "profiles" / f"{digest}.json"


def load(path: Path, key: dict) -> CostProfile | None:
    """The cached profile at ``path`` for ``key``; None when absent; warns and returns None when unreadable."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("key") != json.loads(json.dumps(key)):
            raise ValueError("it was written for another setting")
        return CostProfile.from_dict(data["profile"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        warnings.warn(f"specexec: the cost profile {path} cannot be used ({err}); measuring it again", stacklevel=3)
        return None


def save(path: Path, key: dict, profile: CostProfile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "profile": profile.to_dict()}, indent=1))
    os.replace(tmp, path)

"""A target larger than this machine's RAM, streamed from disk: a Llama-2-13B-shaped model with
random bfloat16 weights (about 26 GB on disk).

The model is built once into ``--folder`` (one safetensors file per decoder layer plus one for
the embeddings, final norm and head, and the index), a layer at a time, so that building never
holds more than one layer in memory. Then, with ``offload="disk"``: the disk's read bandwidth
through the engine's reader (page cache bypassed), and one tree pass of n tokens (n in
``--sizes``, on a 64-token prefix) streamed from disk, next to the I/O bound (the streamed bytes
over that bandwidth). The process's peak resident memory is printed at the end: the model is
never materialised. Not part of the test suite.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/offload_large.py --folder /path/to/scratch/llama13b-random \\
        [--sizes 1,16,64] [--repeats 1] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from common import machine
from offload import disk_bandwidth, pass_seconds

SHAPE = dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
             num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096, rms_norm_eps=1e-5)


def build(folder: Path, seed: int = 0) -> None:
    """Write the random model into ``folder`` unless a complete one is there."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    if (folder / "model.safetensors.index.json").exists():
        print(f"using the model already built in {folder}", flush=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**SHAPE, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    config.dtype = "bfloat16"
    gen = torch.Generator().manual_seed(seed)
    h, f, v = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]

    def rand(*shape):
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    weight_map: dict[str, str] = {}
    start, written = time.perf_counter(), 0
    for i in range(SHAPE["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors = {p + f"self_attn.{n}_proj.weight": rand(h, h) for n in "qkvo"}
        tensors |= {p + "mlp.gate_proj.weight": rand(f, h), p + "mlp.up_proj.weight": rand(f, h),
                    p + "mlp.down_proj.weight": rand(h, f),
                    p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                    p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)}
        name = f"layer-{i:03d}.safetensors"
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map |= {k: name for k in tensors}
        written += sum(t.numel() * 2 for t in tensors.values())
        print(f"  layer {i}: {written / 1e9:.1f} GB written, {time.perf_counter() - start:.0f} s", flush=True)
    rest = {"model.embed_tokens.weight": rand(v, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
            "lm_head.weight": rand(v, h)}
    save_file(rest, folder / "rest.safetensors", metadata={"format": "pt"})
    weight_map |= {k: "rest.safetensors" for k in rest}
    config.save_pretrained(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True, help="scratch folder for the ~26 GB model (built once)")
    ap.add_argument("--sizes", default="1,16,64")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per size (after one warm-up)")
    ap.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 layers are converted on arrival)")
    ap.add_argument("--device-size", type=int, default=2)
    args = ap.parse_args()

    from specexec.offload import OffloadOptions, load_offloaded

    print(f"machine: {machine()}", flush=True)
    folder = Path(args.folder)
    build(folder)
    on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    with open("/proc/meminfo", encoding="utf-8") as fh:
        total_ram = int(next(line.split()[1] for line in fh if line.startswith("MemTotal"))) * 1024
    print(f"model on disk: {on_disk / 1e9:.1f} GB; this machine's RAM: {total_ram / 1e9:.1f} GB", flush=True)
    model = load_offloaded(folder, OffloadOptions("disk", args.device_size, 0), dtype=getattr(torch, args.dtype))
    plans = list(model.specexec_offload.plans.values())
    layer_bytes = sum(p.raw_nbytes for p in plans)
    rows = []
    with torch.inference_mode():
        for n in [int(x) for x in args.sizes.split(",")]:
            model.specexec_offload.transport.wait_idle()  # the disk to itself: no prefetch of the next pass
            bw, direct = disk_bandwidth(plans, repeats=1)
            t_pass, t_read = pass_seconds(model, n, args.repeats)
            rows.append((n, t_pass, t_read, bw, layer_bytes / bw))
            print(f"  n={n}: streamed pass {t_pass:.1f} s (its reads {t_read:.1f} s); disk alone {bw / 1e9:.2f} GB/s "
                  f"({'O_DIRECT' if direct else 'buffered + FADV_DONTNEED'})", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\n{len(plans)} layers streamed, {layer_bytes / 1e9:.1f} GB read per pass, {args.device_size} buffers, "
          f"compute in {args.dtype}; peak resident memory {peak / 1e9:.1f} GB")
    print("\n| tree tokens | streamed pass (s) | reads during the pass (s) | disk alone (GB/s) | I/O bound (s) | "
          "streamed / I/O bound |\n|---:|---:|---:|---:|---:|---:|")
    for n, t_pass, t_read, bw, bound in rows:
        print(f"| {n} | {t_pass:.1f} | {t_read:.1f} | {bw / 1e9:.2f} | {bound:.1f} | {t_pass / bound:.2f}x |")


if __name__ == "__main__":
    main()

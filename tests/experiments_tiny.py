"""Tiny random Llama models and a word-level tokenizer saved to a folder, for runner tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _words() -> list[str]:
    data = Path(__file__).resolve().parents[1] / "specexec" / "data" / "prompts.json"
    text = " ".join(t for _, t, *_ in json.loads(data.read_text()))
    words = sorted(set(re.findall(r"\w+|[^\w\s]+", text.lower())))
    return words + [f"w{i}" for i in range(200)]


def make_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate(specials + _words())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+|[^\w\s]+
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_models(root: Path, chat_template: bool = True) -> tuple[str, str]:
    """(draft folder, target folder): 1-layer draft and 2-layer target sharing one tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = make_tokenizer()
    if not chat_template:
        tokenizer.chat_template = None
    out = []
    for name, layers, seed in (("draft", 1, 1), ("target", 2, 0)):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
        model = AutoModelForCausalLM.from_config(cfg)
        # a peaked output layer so that the draft and target agree often enough to accept trees
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
        path = root / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out.append(str(path))
    return out[0], out[1]

"""Prompt sets by name or path, in the paper's format (a JSON list of ``[id, text]``).

A name (``oasst``, ``c4``, ``wikitext``, ``mtbench``) is looked up as a local file on the search
path -- ``$SPECEXEC_DATASETS`` (``os.pathsep``-separated folders), then ``../shared/datasets``
beside the checkout, then the user data folder (``$XDG_DATA_HOME/specexec/datasets`` or
``~/.local/share/specexec/datasets``) -- under ``NAME_prompts.json``, ``NAME.json`` or
``NAME.jsonl``; else fetched from the Hugging Face hub with the ``datasets`` library when the hub
is reachable (and saved to the user data folder); else an error lists where it looked.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

KNOWN = ("oasst", "c4", "wikitext", "mtbench")
ALIASES = {"oasst": "oasst", "oasst1": "oasst", "c4": "c4", "wiki": "wikitext", "wikitext": "wikitext",
           "wikitext2": "wikitext", "mtbench": "mtbench", "mt_bench": "mtbench", "mt-bench": "mtbench"}
CHAT_SETS = {"oasst", "mtbench"}  # prompts meant for a chat model; the others are text to continue
ENV_VAR = "SPECEXEC_DATASETS"
EMBEDDED = "embedded"


@dataclass(frozen=True)
class Prompt:
    id: object
    text: str
    kind: str  # "chat": a request to a chat model; "text": a passage to continue


@dataclass
class Dataset:
    name: str
    source: str  # the file it was read from, or where it came from
    prompts: list[Prompt]


# ---------------------------------------------------------------- Llama-2 chat wrapper
_LLAMA2 = re.compile(
    r"^\s*(?:<s>)?\s*\[INST\]\s*(?:<<SYS>>.*?<</SYS>>?\s*)?(?P<user>.*?)\s*\[[/\\]INST\]\s*$", re.DOTALL)


def strip_llama2_wrapper(text: str) -> str | None:
    """The user message inside a Llama-2 chat wrapper (``[INST] <<SYS>>...<</SYS>> msg [/INST]``), or
    None when the text has no such wrapper. Accepts the paper's typos (``[\\INST]``, ``<</SYS>``)."""
    m = _LLAMA2.match(text)
    return m.group("user").strip() if m else None


def prepare(prompt: Prompt, mode: str, has_chat_template: bool) -> tuple[str, bool]:
    """(text to feed, whether to apply the target's chat template) for ``--chat_template MODE``."""
    if mode == "none":
        return prompt.text, False
    inner = strip_llama2_wrapper(prompt.text)
    text = inner if inner else prompt.text
    chat = (inner is not None or prompt.kind == "chat") and has_chat_template
    return text, chat


# ---------------------------------------------------------------- search path
def checkout_root() -> Path:
    return Path(__file__).resolve().parents[2]


def user_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "specexec" / "datasets"


def search_path() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    dirs.append(checkout_root().parent / "shared" / "datasets")
    dirs.append(user_data_dir())
    return dirs


def candidates(name: str) -> list[Path]:
    return [d / f for d in search_path() for f in (f"{name}_prompts.json", f"{name}.json", f"{name}.jsonl")]


# ---------------------------------------------------------------- reading files
def _item(raw, index: int, default_kind: str, where: str) -> Prompt:
    if isinstance(raw, str):
        pid, text, kind = index, raw, None
    elif isinstance(raw, (list, tuple)) and len(raw) in (2, 3) and isinstance(raw[1], str):
        pid, text, kind = raw[0], raw[1], raw[2] if len(raw) == 3 else None
    elif isinstance(raw, dict) and isinstance(raw.get("text", raw.get("prompt")), str):
        pid, text, kind = raw.get("id", index), raw.get("text", raw.get("prompt")), raw.get("kind")
    else:
        raise ConfigError(f"-d/--dataset: item {index} of {where} is not [id, text] (got {str(raw)[:80]!r})")
    if kind not in (None, "chat", "text"):
        raise ConfigError(f"-d/--dataset: item {index} of {where} has kind {kind!r}; use 'chat' or 'text'")
    if kind is None:
        kind = "chat" if strip_llama2_wrapper(text) is not None else default_kind
    return Prompt(pid, text, kind)


def read_file(path: Path, name: str | None = None, default_kind: str = "text") -> Dataset:
    """A ``.json`` list (``[[id, text], ...]``, ``[id, text, kind]`` or ``{"id", "text"}`` items) or a
    ``.jsonl`` file of such items, one a line."""
    try:
        raw_text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"-d/--dataset: cannot read {path}: {err.strerror or err}") from None
    try:
        if path.suffix == ".jsonl":
            items = [json.loads(line) for line in raw_text.splitlines() if line.strip()]
        else:
            items = json.loads(raw_text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"-d/--dataset: {path} is not valid JSON: {err}") from None
    if not isinstance(items, list):
        raise ConfigError(f"-d/--dataset: {path} must hold a list of [id, text] items")
    prompts = [_item(raw, i, default_kind, str(path)) for i, raw in enumerate(items)]
    prompts = [p for p in prompts if p.text.strip()]
    if not prompts:
        raise ConfigError(f"-d/--dataset: {path} holds no prompts")
    return Dataset(name or path.stem, str(path), prompts)


def embedded() -> Dataset:
    path = Path(__file__).resolve().parent.parent / "data" / "prompts.json"
    return read_file(path, EMBEDDED, "text")


# ---------------------------------------------------------------- the hub (through `datasets`)
def _from_hub(name: str, limit: int = 1000) -> list[Prompt]:
    import datasets  # noqa: F401 - optional dependency

    from datasets import load_dataset

    out: list[str] = []
    if name == "oasst":
        for row in load_dataset("OpenAssistant/oasst1", split="validation"):
            if row["role"] == "prompter" and row["parent_id"] is None and row.get("lang") == "en":
                out.append(row["text"])
    elif name == "mtbench":
        for row in load_dataset("HuggingFaceH4/mt_bench_prompts", split="train"):
            out.append(row["prompt"][0])
    elif name == "c4":
        for row in load_dataset("allenai/c4", "en", split="validation", streaming=True):
            out.append(row["text"][:2000])
            if len(out) >= 200:
                break
    elif name == "wikitext":
        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
        out = [t.strip() for t in rows if len(t.strip()) > 200 and not t.strip().startswith("=")]
    kind = "chat" if name in CHAT_SETS else "text"
    return [Prompt(i, t, kind) for i, t in enumerate(out[:limit])]


def _hub_reachable() -> bool:
    from ..models import hub_reachable

    return hub_reachable()


def resolve(name: str | None) -> Dataset:
    """The prompt set for ``-d/--dataset NAME`` (None: the embedded set)."""
    if name is None or str(name).strip().lower() in (EMBEDDED, "default", ""):
        return embedded()
    raw = str(name).strip()
    path = Path(os.path.expanduser(raw))
    if path.suffix in (".json", ".jsonl"):
        if not path.is_file():
            raise ConfigError(f"-d/--dataset: no such file {path}")
        return read_file(path)
    key = ALIASES.get(raw.lower().removesuffix("_prompts"))
    if key is None:
        raise ConfigError(f"-d/--dataset: unknown dataset {raw!r}; use one of {', '.join(KNOWN)}, "
                          "'embedded', or a .json/.jsonl file")
    default_kind = "chat" if key in CHAT_SETS else "text"
    looked = candidates(key)
    for path in looked:
        if path.is_file():
            return read_file(path, key, default_kind)
    where = "\n  ".join(str(p) for p in looked)
    try:
        import datasets  # noqa: F401
    except ImportError:
        hub_note = "the `datasets` package is not installed (pip install 'specexec[hub]') to fetch it from the hub"
    else:
        if _hub_reachable():
            try:
                prompts = _from_hub(key)
            except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear message
                hub_note = f"fetching it from the Hugging Face hub failed ({type(err).__name__}: {err})"
            else:
                target = user_data_dir() / f"{key}_prompts.json"
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(json.dumps([[p.id, p.text] for p in prompts], ensure_ascii=False))
                except OSError:
                    pass
                return Dataset(key, f"huggingface hub (saved to {target})", prompts)
        else:
            hub_note = "the Hugging Face hub is not reachable"
    raise ConfigError(
        f"-d/--dataset: prompt set {key!r} not found. Looked for a local file in:\n  {where}\n"
        f"and {hub_note}. Put a [[id, text], ...] JSON file in one of those folders "
        f"(or set ${ENV_VAR}), or pass a .json/.jsonl path."
    )

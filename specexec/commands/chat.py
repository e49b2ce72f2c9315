"""``specexec chat``: a multi-turn conversation on the terminal, with the target's chat template.

Replies are streamed as the target accepts them. Commands: ``/reset`` (forget the
conversation), ``/stats`` (the last reply's tokens per pass, speed, accepted-tokens-per-pass
distribution and acceptance by tree depth), ``/save FILE`` (the conversation as JSON),
``/exit``. Ctrl-C stops the reply in progress and keeps what was said; Ctrl-D ends the session.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from .generate import add_decoding_arguments, add_model_arguments, config_from_args

HELP = "chat with the model on the terminal (multi-turn, streamed replies)"
PROMPT = "you> "
COMMANDS_HELP = "/reset  /stats  /save FILE  /exit   (Ctrl-C stops a reply, Ctrl-D ends)"


def add_arguments(p) -> None:
    add_model_arguments(p)
    add_decoding_arguments(p)
    p.add_argument("--system", default=None, help="a system message opening the conversation")


def acceptance_by_depth(accepted_per_pass: list[int]) -> list[tuple[int, int, float]]:
    """(depth, passes reaching it, share of the passes reaching depth - 1) for depth 1, 2, ...

    A pass that emitted ``a`` tokens accepted ``a - 1`` draft tokens: its path reached depth ``a - 1``.
    """
    reached = [sum(1 for a in accepted_per_pass if a - 1 >= d) for d in range(max(accepted_per_pass, default=1))]
    return [(d, reached[d], reached[d] / reached[d - 1]) for d in range(1, len(reached)) if reached[d - 1]]


def format_stats(stats, seconds: float, interrupted: bool) -> str:
    if stats is None or stats.target_passes == 0:
        return "no reply yet"
    per_pass = stats.accepted_per_pass
    speed = stats.new_tokens / seconds if seconds > 0 else 0.0
    lines = [f"last reply{' (interrupted)' if interrupted else ''}: {stats.new_tokens} tokens in "
             f"{stats.target_passes} target passes = {stats.tokens_per_pass:.2f} tokens/pass, {speed:.1f} tokens/s "
             f"({seconds:.2f} s, method {stats.method})"]
    dist = Counter(per_pass)
    lines.append("tokens per pass: " + ", ".join(f"{k}: {dist[k]}x" for k in sorted(dist)))
    depths = acceptance_by_depth(per_pass)
    if depths:
        lines.append("acceptance by depth: " + ", ".join(f"d{d} {share:.0%}" for d, _, share in depths))
    return "\n".join(lines)


class ChatSession:
    """The conversation and the last reply's statistics; :meth:`reply` streams one answer."""

    def __init__(self, engine, config, system: str | None, out=sys.stdout):
        self.engine, self.config, self.system, self.out = engine, config, system, out
        self.messages: list[dict] = []
        self.last_stats, self.last_seconds, self.last_interrupted = None, 0.0, False
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_ids(self, messages) -> list[int]:
        ids = self.engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)

    def reply(self, text: str) -> None:
        import time

        messages = self.messages + [{"role": "user", "content": text}]
        ids = self.prompt_ids(messages)
        room = self.engine.max_context - len(ids)
        if room < 2:
            self.say(f"[the conversation ({len(ids)} tokens) no longer fits the model's context "
                     f"({self.engine.max_context} tokens): /reset to start over]")
            return
        config = self.config.with_(max_new_tokens=min(self.config.max_new_tokens, room - 1))
        pieces: list[str] = []
        start = time.perf_counter()
        self.last_interrupted = False
        stream = None
        try:
            stream = self.engine.stream(ids, config=config)
            for chunk in stream:
                pieces.append(chunk.text)
                self.out.write(chunk.text)
                self.out.flush()
        except KeyboardInterrupt:
            self.last_interrupted = True
        finally:
            if stream is not None:
                stream.close()
        self.last_seconds = time.perf_counter() - start
        self.last_stats = stream.stats if stream is not None else None
        self.out.write("\n")
        self.messages = messages + [{"role": "assistant", "content": "".join(pieces)}]
        if self.last_interrupted:
            self.say("[reply stopped; what was said is kept]")
        elif self.last_stats is not None and self.last_stats.stop_reason == "context":
            self.say("[the reply reached the end of the model's context: /reset to start over]")

    def save(self, path: str) -> None:
        data = {"messages": self.messages, "settings": {"method": self.config.method,
                                                        "max_new_tokens": self.config.max_new_tokens}}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=2)
        self.say(f"[saved {len(self.messages)} messages to {path}]")

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def command(session: ChatSession, line: str) -> bool:
    """Run a /command; False when the session should end."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        session.say("[conversation reset]")
    elif name == "/stats":
        session.say(format_stats(session.last_stats, session.last_seconds, session.last_interrupted))
    elif name == "/save":
        if not arg.strip():
            session.say("[usage: /save FILE]")
        else:
            try:
                session.save(arg.strip())
            except OSError as err:
                session.say(f"[cannot save to {arg.strip()}: {err.strerror or err}]")
    else:
        session.say(f"[unknown command {name}; commands: {COMMANDS_HELP}]")
    return True


def run(args) -> int:
    from ..engine import SpecExecEngine
    from ..errors import ConfigError
    from ..models import parse_device, parse_draft, parse_dtype

    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    cfg = config_from_args(args)
    parse_dtype(args.dtype)
    parse_device(args.device)
    parse_draft(args.draft)
    draft = "none" if cfg.method == "autoregressive" and args.draft is None else args.draft
    print(f"specexec chat: loading {args.target!r}...", file=sys.stderr, flush=True)
    engine = SpecExecEngine.from_pretrained(args.target, draft, dtype=args.dtype, device=args.device, config=cfg,
                                            draft_vocab=args.draft_vocab, draft_dtype=args.draft_dtype,
                                            quantize=args.quantize, draft_quantize=args.draft_quantize)
    if engine.tokenizer is None or not getattr(engine.tokenizer, "chat_template", None):
        raise ConfigError(f"{args.target!r} has no chat template; use `specexec generate` for plain text")
    if cfg.auto_budget and cfg.method == "specexec" and engine.draft is not None:
        print("specexec chat: timing forward passes for --budget auto (once per setting, then cached)...",
              file=sys.stderr, flush=True)
        engine.cost_profile()
    session = ChatSession(engine, cfg, args.system)
    print(f"specexec chat ({cfg.method}): {COMMANDS_HELP}", flush=True)
    while True:
        try:
            line = input(PROMPT).strip()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\n[Ctrl-D or /exit ends the session]", flush=True)
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not command(session, line):
                return 0
            continue
        try:
            session.reply(line)
        except KeyboardInterrupt:  # before the reply started: nothing was said
            print("\n[stopped before the reply began]", flush=True)

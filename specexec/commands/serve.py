"""``specexec serve``: an OpenAI-compatible HTTP server (chat and text completions) on one engine."""

from __future__ import annotations

import argparse
import sys

from .generate import add_decoding_arguments, add_model_arguments, config_from_args

HELP = "serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)"


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    add_model_arguments(p)
    add_decoding_arguments(p)
    p.add_argument("--served-model-name", default=None,
                   help="the name clients pass as 'model' (default: the --target value)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    p.add_argument("--max-queue", type=_positive(int), default=16,
                   help="requests that may wait for the engine; more get 429 with Retry-After (default 16)")
    p.add_argument("--request-timeout", type=_positive(float), default=300.0,
                   help="seconds per request, queue wait included: 503 if still waiting, "
                        "the generation cut (finish_reason 'length') if running (default 300)")
    p.add_argument("--max-prompt-tokens", type=_positive(int), default=None,
                   help="longest prompt accepted (default: the target's context less one)")
    p.add_argument("--max-tokens-limit", type=_positive(int), default=4096,
                   help="most new tokens a request may ask for (default 4096); requests without max_tokens "
                        "get --max-new-tokens")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def run(args) -> int:
    import uvicorn

    from ..engine import SpecExecEngine
    from ..errors import ConfigError
    from ..models import parse_device, parse_draft, parse_dtype
    from ..server import ServerSettings, create_app

    cfg = config_from_args(args)  # validate everything before loading or binding
    parse_dtype(args.dtype)
    parse_device(args.device)
    parse_draft(args.draft)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    draft = "none" if cfg.method == "autoregressive" and args.draft is None else args.draft
    name = args.served_model_name or args.target
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def load():
        engine = SpecExecEngine.from_pretrained(args.target, draft, dtype=args.dtype, device=args.device, config=cfg,
                                                draft_vocab=args.draft_vocab, draft_dtype=args.draft_dtype,
                                                quantize=args.quantize, draft_quantize=args.draft_quantize)
        if cfg.auto_budget and cfg.method == "specexec" and engine.draft is not None:
            engine.cost_profile()  # measured (or read) before the first request, not during it
        return engine

    def failed(message: str):
        failure.append(message)
        server.should_exit = True

    def ready():
        print(f"specexec: serving {name!r} on http://{args.host}:{args.port}/v1 (ready)", file=sys.stderr, flush=True)

    settings = ServerSettings(model_name=name, max_queue=args.max_queue, request_timeout=args.request_timeout,
                              max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens_limit,
                              api_key=args.api_key, on_load_error=failed, on_ready=ready)
    app = create_app(settings, load)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=3))
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"specexec: warning: listening on {args.host} without --api-key: anyone who reaches this port "
              "can use the model", file=sys.stderr)
    print(f"specexec: loading {args.target!r}; listening on http://{args.host}:{args.port}", file=sys.stderr,
          flush=True)
    server.run()
    if failure:
        print(f"specexec: error: {failure[0]}", file=sys.stderr)
        return 2
    if not server.started:
        print(f"specexec: error: could not listen on {args.host}:{args.port}", file=sys.stderr)
        return 2
    return 0

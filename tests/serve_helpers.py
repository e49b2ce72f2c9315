"""Helpers of the server tests: a tiny model folder with a real tokenizer, a `specexec serve` subprocess
on a free loopback port, raw HTTP requests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch
import transformers

REPO = Path(__file__).resolve().parents[1]


def save_tiny_chat_model(folder: Path) -> Path:
    """A random 2-layer Llama on the embedded tokenizer (vocabulary 49152, chat template), saved as a folder."""
    from specexec.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                      max_position_embeddings=512, bos_token_id=None, eos_token_id=None,
                                      pad_token_id=None)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m specexec serve ARGS` on 127.0.0.1 and a free port; ``url`` once /health says ok."""

    def __init__(self, *args: str, ready_timeout: float = 180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "specexec", "serve", "--port", str(self.port), *args],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"specexec serve exited with {self.proc.returncode}: {self.proc.stdout.read()}")
            status, body = get(self.url + "/health")
            if status == 200 and body.get("status") == "ok":
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("specexec serve did not become ready in time")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read()


def request(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 60.0):
    """(status, parsed JSON or text, response headers); ``body`` a dict (sent as JSON) or raw bytes."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, hdrs = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        status, raw, hdrs = err.code, err.read(), dict(err.headers)
    except (urllib.error.URLError, ConnectionError):
        return 0, {}, {}
    text = raw.decode()
    try:
        return status, json.loads(text), hdrs
    except json.JSONDecodeError:
        return status, text, hdrs


def get(url: str):
    status, body, _ = request("GET", url, timeout=5)
    return status, body


def post(url: str, body, headers: dict | None = None):
    return request("POST", url, body, headers)

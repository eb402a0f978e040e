"""The evaluation harness on the tiny model.

A copy of the tiny model is taught (in closed form, instantly) to answer four questions and stop, so
the tests can check real behaviour: stopping at <|im_end|>, left padding (batched answers equal
one-by-one answers although the prompts have different lengths), scoring, CIs, comparisons,
the forgetting check and the judge plumbing.
"""

import copy
import math

import numpy as np
import pytest
import torch

from ftlab import evaluate
from ftlab.evaluate import (LLMJudge, bootstrap_ci, compare_models, comparison_from_results,
                            evaluate_model, forgetting_report, generate_answers, paired_difference,
                            prepare_records, probe_accuracy, score_answers)

QA = [("What colour is the sky?", "blue"),
      ("Name a fruit, please.", "apple banana"),
      ("Which planet do we live on? Answer with one word, in lower case.", "earth"),
      ("Say hi.", "hello there friend")]
RECORDS = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]


@pytest.fixture(scope="module")
def models():
    """The untrained tiny model, and a copy taught to answer QA and then stop.

    Training the whole network takes minutes on a busy CPU, so the copy gets a new output
    layer fitted in closed form (least squares) on the frozen network's hidden states: it
    maps the state at each answer position to the next answer token, <|im_end|> included. The result is a
    genuine model whose greedy answers depend on the prompt, which is all the harness needs.
    """
    from ftlab import load_model
    from ftlab.data import collate
    from ftlab.data import tokenize_example

    base, tok = load_model("tiny", device="cpu")
    base.eval()
    tuned = copy.deepcopy(base)
    batch = collate([tokenize_example(r, tok) for r in RECORDS], pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        hidden = tuned.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    trained = targets != -100
    features, next_tokens = hidden[:, :-1][trained], targets[trained]
    # least squares: logit 10 for the right next token at every answer position, 0 for the rest
    classes = sorted(set(next_tokens.tolist()))
    wanted = torch.zeros(len(features), len(classes), dtype=torch.float64)
    wanted[torch.arange(len(features)), [classes.index(t) for t in next_tokens.tolist()]] = 10.0
    solution = torch.linalg.lstsq(features.double(), wanted).solution  # hidden x classes
    head = torch.nn.Linear(hidden.size(-1), tuned.config.vocab_size, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[classes] = solution.T.float()
        assert (head(features).argmax(-1) == next_tokens).all()
    tuned.lm_head = head  # a new module: the input embeddings stay as they were
    return base, tuned.eval(), tok


def test_generation_stops_at_end_of_turn_and_left_padding_is_right(models):
    _, tuned, tok = models
    questions = [q for q, _ in QA]  # prompts of different lengths in one batch
    batched, details = generate_answers(tuned, tok, questions, max_new_tokens=12, batch_size=4,
                                        progress=False, return_details=True)
    assert batched == [a for _, a in QA]
    assert all(d["stopped"] for d in details)  # ended with <|im_end|>, not max_new_tokens
    assert [d["new_tokens"] for d in details] == [len(tok(a, add_special_tokens=False)["input_ids"])
                                                  for _, a in QA]
    one_by_one = generate_answers(tuned, tok, questions, max_new_tokens=12, batch_size=1, progress=False)
    assert one_by_one == batched
    assert tok.padding_side == "right"  # restored after generation
    # the untrained model never stops within the budget
    base = models[0]
    _, base_details = generate_answers(base, tok, questions[:2], max_new_tokens=5, progress=False,
                                       return_details=True)
    assert [d["new_tokens"] for d in base_details] == [5, 5]


def test_sampling_is_seeded(models):
    base, _, tok = models
    kw = dict(max_new_tokens=6, do_sample=True, temperature=1.0, progress=False)
    a = generate_answers(base, tok, ["Hi", "Tell me a story"], seed=1, **kw)
    b = generate_answers(base, tok, ["Hi", "Tell me a story"], seed=1, **kw)
    c = generate_answers(base, tok, ["Hi", "Tell me a story"], seed=2, **kw)
    assert a == b and a != c


def test_prepare_records_takes_prompt_and_reference():
    items = prepare_records([
        {"instruction": "Classify", "input": "my card was charged twice", "output": "billing", "task": "classify"},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                      {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                      {"role": "assistant", "content": "a2"}], "task": "qa", "turn_tasks": ["rewrite", "qa"]},
    ])
    assert items[0]["reference"] == "billing" and items[0]["task"] == "classify"
    assert items[0]["messages"] == [{"role": "user", "content": "Classify\n\nmy card was charged twice"}]
    assert items[1]["reference"] == "a2" and items[1]["question"] == "q2"
    assert [m["content"] for m in items[1]["messages"]] == ["S", "q1", "a1", "q2"]
    with pytest.raises(ValueError, match="plain-text record"):
        prepare_records([{"text": "just a document"}])
    from ftlab.data import DataValidationError

    with pytest.raises(DataValidationError, match="output"):
        prepare_records([{"instruction": "x", "output": ""}])


def test_score_answers_rules():
    scores, how = score_answers(['{"a": 1, "b": 2}', "Billing.", "2024-01-02", "Paris", "Paris"],
                                ['{"a": 1, "b": 3}', "billing", "2024-01-02", "in Paris", "Paris"],
                                ["extract_json", "classify", "rewrite", "qa", None])
    assert scores == pytest.approx([0.5, 1.0, 1.0, 2 / 3, 1.0])
    assert how == ["course:extract_json", "course:classify", "course:rewrite", "course:qa", "token_f1"]
    assert score_answers(["a b"], ["a b c"], metric="exact_match")[0] == [0.0]
    assert score_answers(["a b"], ["a b c"], metric=lambda p, r: len(p))[0] == [3.0]
    with pytest.raises(ValueError, match="unknown metric"):
        score_answers(["a"], ["a"], metric="bleurt")


def test_bootstrap_ci_properties():
    rng = np.random.default_rng(0)
    coin = rng.integers(0, 2, 400).astype(float)
    low, high = bootstrap_ci(coin, seed=3)
    assert (low, high) == bootstrap_ci(coin, seed=3)  # seeded
    assert low < coin.mean() < high
    # the normal approximation says about ±1.96·0.5/√400 = ±0.049
    assert 0.08 < high - low < 0.12
    small = bootstrap_ci(coin[:40])
    assert small[1] - small[0] > 2.5 * (high - low)  # ~√10 wider with 10x fewer examples
    assert bootstrap_ci([0.7] * 10) == pytest.approx((0.7, 0.7))
    assert bootstrap_ci([1.0, math.nan, 0.0, 1.0])[1] <= 1.0
    with pytest.raises(ValueError):
        bootstrap_ci([])
    d = paired_difference([0, 0, 1, 0, 1], [1, 1, 1, 0, 1])
    assert d["diff"] == pytest.approx(0.4) and d["ci"][0] >= 0 and d["n"] == 5


def test_evaluate_compare_forgetting_and_changes(models):
    base, tuned, tok = models
    probes = [{"question": q, "answers": [a.split()[0]]} for q, a in QA]
    cmp = compare_models({"base": (base, tok), "tuned": (tuned, tok)}, RECORDS * 2, probes=probes,
                         probe_max_new_tokens=6, max_new_tokens=6, batch_size=8, progress=False)
    base_res, tuned_res = cmp.results["base"], cmp.results["tuned"]
    assert base_res.score == 0.0 and tuned_res.score == 1.0
    assert tuned_res.extra["stop_rate"] == 1.0 and base_res.extra["stop_rate"] == 0.0
    assert cmp.table.loc["tuned", "vs_first"] == 1.0
    assert cmp.table.loc["tuned", "probes"] == 1.0 and cmp.table.loc["tuned", "probes_change"] == 1.0
    assert "score [95% CI]" in cmp.text and "vs base" in cmp.text and "tuned" in cmp.text
    changes = cmp.changes("base", "tuned")
    assert len(changes) == 8 and (changes["delta"] == 1.0).all()
    assert set(changes["prediction_tuned"]) == {a for _, a in QA}
    assert cmp.change_counts() == {"better": 8, "worse": 0, "same": 0}
    report = forgetting_report(cmp.probes["tuned"], cmp.probes["base"])  # "training" tuned -> base
    assert report["change"] == -1.0 and len(report["lost"]) == 4 and not report["gained"]
    frame = tuned_res.to_frame()
    assert list(frame["prediction"][:4]) == [a for _, a in QA]
    # building the table from results computed earlier gives the same numbers
    again = comparison_from_results(cmp.results, cmp.probes)
    assert again.text == cmp.text


def test_judge_is_optional_and_pluggable(models):
    _, tuned, tok = models
    plain = evaluate_model(tuned, tok, RECORDS, max_new_tokens=8, progress=False)
    assert plain.judge is None and "judge" not in plain.examples[0]

    def length_judge(questions, references, predictions):
        return [1.0 if p == r else math.nan for p, r in zip(predictions, references)]

    judged = evaluate_model(tuned, tok, RECORDS, max_new_tokens=8, judge=length_judge, progress=False)
    assert judged.judge["score"] == 1.0 and judged.judge["unparsed"] == 0
    # a real LLM judge: the (untrained) tiny model cannot grade, so its replies are unparsed NaN
    judge = LLMJudge(tuned, tok, max_new_tokens=2, progress=False)
    scores = judge(["q"], ["blue"], ["blue"])
    assert len(scores) == 1 and len(judge.last_replies) == 1
    assert "Correct reference answer:\nblue" in judge.prompt("q", "blue", "")
    assert LLMJudge.parse("Grade: 4") == 0.75 and math.isnan(LLMJudge.parse("excellent"))
    with pytest.raises(ValueError, match="placeholder"):
        LLMJudge(tuned, tok, rubric="Grade {prediction}")


def test_probe_accuracy_checks_its_input(models):
    base, _, tok = models
    with pytest.raises(ValueError, match="probe 0"):
        probe_accuracy(base, tok, [{"question": "x"}], progress=False)
    assert evaluate.METRICS["exact_match"] is not None

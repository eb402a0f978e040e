"""Prompting baselines (ftlab.evaluate.prompting), the course recipe and the quality benchmark's options."""

from __future__ import annotations

import pytest

from ftlab.data import SYSTEM_PROMPT, TASKS, load_course_data, sample_test_records
from ftlab.evaluate.prompting import FORMAT_RULES, STYLES, best_prompt, evaluate_prompting, prompting_records


@pytest.fixture(scope="module")
def splits():
    return {"train": load_course_data("instructions", "train"),
            "test": sample_test_records(load_course_data("instructions", "test"), 8, seed=0)}


def test_zero_shot_styles_differ_only_in_the_system_message(splits):
    bare = prompting_records(splits["test"], [], "zero-shot")
    system = prompting_records(splits["test"], [], "zero-shot+system")
    for b, s, r in zip(bare, system, splits["test"]):
        assert [m["role"] for m in b["messages"]] == ["user", "assistant"]
        assert s["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert s["messages"][1:] == b["messages"]
        assert b["messages"][-1]["content"] == r["output"] and b["task"] == r["task"]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_shots_come_from_the_training_split_of_the_same_task(splits, k):
    def text(r):
        return f"{r['instruction']}\n\n{r['input']}"
    train_texts = {(r["task"], text(r), r["output"]) for r in splits["train"]}
    test_texts = {text(r) for r in load_course_data("instructions", "test")}
    rows = prompting_records(splits["test"], splits["train"], f"{k}-shot", seed=3)
    for row, record in zip(rows, splits["test"]):
        shots = row["messages"][1:-2]
        assert len(shots) == 2 * k and [m["role"] for m in shots] == ["user", "assistant"] * k
        for question, answer in zip(shots[0::2], shots[1::2]):
            assert (record["task"], question["content"], answer["content"]) in train_texts
            assert question["content"] not in test_texts  # no test example is ever a shot
    assert rows == prompting_records(splits["test"], splits["train"], f"{k}-shot", seed=3)  # seeded
    assert rows != prompting_records(splits["test"], splits["train"], f"{k}-shot", seed=4)


def test_engineered_prompt_spells_out_the_format_of_each_task(splits):
    assert set(FORMAT_RULES) == set(TASKS)
    for row in prompting_records(splits["test"], [], "engineered"):
        assert row["messages"][-2]["content"].endswith(FORMAT_RULES[row["task"]])


def test_bad_styles_and_too_few_shots_are_clear_errors(splits):
    with pytest.raises(ValueError, match="unknown style 'two-shot'"):
        prompting_records(splits["test"], splits["train"], "two-shot")
    with pytest.raises(ValueError, match="needs 3 training examples of task"):
        prompting_records(splits["test"], splits["train"][:4], "3-shot")


def test_every_style_is_scored_on_the_same_examples_with_its_cost(splits):
    from ftlab import load_model

    model, tok = load_model("tiny")
    rows = evaluate_prompting(model, tok, splits["test"], splits["train"], styles=STYLES, max_new_tokens=2,
                              batch_size=8, progress=False)
    assert [r.style for r in rows] == list(STYLES)
    tokens = {r.style: r.prompt_tokens for r in rows}
    assert tokens["zero-shot"] < tokens["zero-shot+system"] < tokens["1-shot"] < tokens["3-shot"] < tokens["5-shot"]
    assert tokens["zero-shot+system"] < tokens["engineered"]
    for r in rows:
        assert [e["reference"] for e in r.result.examples] == [x["output"] for x in splits["test"]]
        assert r.seconds_per_answer > 0
    assert best_prompt(rows).result.score == max(r.result.score for r in rows)


def test_the_recipe_is_one_definition_with_overrides():
    from ftlab.training.recipe import RECIPE, recipe_config

    config = recipe_config("runs/x", max_steps=40)
    assert (config.method, config.lr, config.lora_rank) == (RECIPE["method"], RECIPE["lr"], RECIPE["lora_rank"])
    assert config.max_steps == 40 and 1 <= config.warmup_steps <= 40
    with pytest.raises(TypeError):
        recipe_config("runs/x", no_such_setting=1)


def test_quality_benchmark_options_are_checked():
    from ftlab.bench.quality import parse_args
    from ftlab.training.recipe import RECIPE

    args = parse_args([])
    assert args.steps == RECIPE["max_steps"] and args.lr == RECIPE["lr"] and args.prompting == STYLES
    assert parse_args(["--prompting", "none"]).prompting == ()
    assert parse_args(["--data-sizes", "50,100"]).data_sizes == [50, 100]
    with pytest.raises(SystemExit):
        parse_args(["--prompting", "7-shot"])

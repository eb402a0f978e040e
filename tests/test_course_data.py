"""The course datasets in data/: rebuilt byte for byte, sized, leak-free, loadable; and their scoring."""

import functools
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from ftlab.data import course as course_data
from ftlab.data import LABELS, SYSTEM_PROMPT, TASKS, load_course_data
from ftlab.evaluate import score_example, score_probe
from ftlab.data import find_leaks, load_records

DATA = Path(__file__).resolve().parent.parent / "data"
SPLITS = ("train", "validation", "test")


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_datasets", DATA / "build_datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _load_builder()


@functools.lru_cache(maxsize=None)
def _records(name, split):
    """Canonical records through ftlab.data (cached: several tests read the same files)."""
    return load_records(DATA / name / f"{split}.jsonl", verbose=False)


def _generated_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jsonl"))


# --------------------------------------------------------------------------- determinism


def test_rebuild_is_byte_identical_to_the_shipped_files(tmp_path):
    builder.build_all(tmp_path)
    built = _generated_files(tmp_path)
    assert built == ["chat/test.jsonl", "chat/train.jsonl", "chat/validation.jsonl", "domain_corpus.jsonl",
                     "instructions/test.jsonl", "instructions/train.jsonl", "instructions/validation.jsonl",
                     "preferences.jsonl"]
    for name in built:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), \
            f"data/{name} differs from a fresh build: run `python data/build_datasets.py` and commit the result"


def test_seed_changes_the_data_and_scale_changes_the_size(tmp_path):
    builder.build_all(tmp_path / "a", seed=7, scale=0.1)
    builder.build_all(tmp_path / "b", seed=7, scale=0.1)
    builder.build_all(tmp_path / "c", seed=8, scale=0.1)
    a, b, c = (tmp_path / x / "instructions" / "train.jsonl" for x in "abc")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert len(a.read_text().splitlines()) == round(builder.SIZES["train"] * 0.1)


def test_system_prompt_and_tasks_match_the_builder():
    assert builder.SYSTEM_PROMPT == SYSTEM_PROMPT
    assert tuple(builder.TASKS) == TASKS and tuple(builder.LABELS) == LABELS


# --------------------------------------------------------------------------- sizes and fields


@pytest.mark.parametrize("split,minimum", [("train", 2000), ("validation", 200), ("test", 200)])
def test_instruction_sizes_fields_and_task_balance(split, minimum):
    rows = load_course_data("instructions", split)
    assert len(rows) >= minimum
    counts = Counter(r["task"] for r in rows)
    assert set(counts) == set(TASKS)
    assert max(counts.values()) - min(counts.values()) <= 1  # balanced
    for r in rows:
        assert set(r) == {"instruction", "input", "output", "task", "template"}
        assert all(isinstance(r[k], str) and r[k].strip() for k in r)
        if r["task"] == "classify":
            assert r["output"] in LABELS
        if r["task"] == "extract_json":
            obj = json.loads(r["output"])
            assert list(obj) == ["customer", "order_id", "product", "quantity"]
            assert isinstance(obj["quantity"], int)
            assert obj["order_id"] is None or r["input"].count(obj["order_id"]) == 1
            assert obj["customer"] in r["input"] and obj["product"] in r["input"]
        if r["task"] == "qa":
            assert r["output"] in r["input"]  # extractive: the answer is copied from the context


def test_every_reference_scores_one_against_itself():
    for split in SPLITS:
        for r in load_course_data("instructions", split):
            assert score_example(r["task"], r["output"], r["output"]) == 1.0


def test_chat_conversations_have_system_prompt_and_end_with_the_assistant():
    for split, minimum in [("train", 1000), ("validation", 100), ("test", 100)]:
        rows = load_course_data("chat", split)
        assert len(rows) >= minimum
        for r in rows:
            roles = [m["role"] for m in r["messages"]]
            assert roles[0] == "system" and r["messages"][0]["content"] == SYSTEM_PROMPT
            assert roles[1:] == ["user", "assistant"] * ((len(roles) - 1) // 2) and len(roles) >= 5
            assert r["task"] in TASKS and r["task"] == r["turn_tasks"][-1]
            assert len(r["turn_tasks"]) == (len(roles) - 1) // 2


def test_corpus_probes_and_preferences():
    corpus = load_course_data("domain_corpus")
    assert len(corpus) >= 500 and all(set(d) == {"text"} and len(d["text"]) > 50 for d in corpus)
    probes = load_course_data("probes")
    assert 30 <= len(probes) <= 80
    for p in probes:
        # Kept only because the base model answered it right (see --verify-probes).
        assert p["question"].endswith("?") and p["answers"] and score_probe(p["base_answer"], p["answers"])
    prefs = load_course_data("preferences")
    assert len(prefs) >= 500
    for p in prefs:
        assert p["chosen"] != p["rejected"] and p["task"] in TASKS
        assert score_example(p["task"], p["chosen"], p["chosen"]) == 1.0
        assert score_example(p["task"], p["rejected"], p["chosen"]) < 1.0


def test_general_replay_is_the_base_models_own_answers_and_far_from_the_probes():
    from ftlab.data import near_duplicate_pairs

    replay = load_course_data("general_replay")
    assert 80 <= len(replay) <= len(builder.REPLAY_PROMPTS)
    assert {r["instruction"] for r in replay} <= set(builder.REPLAY_PROMPTS)
    for r in replay:
        assert r["task"] == "general" and r["input"] == "" and r["output"].strip()
    # The replay prompts must not be the probe questions in other words, or the forgetting check
    # would measure memorisation: no replay prompt shares half its word-3-grams with a probe candidate.
    candidates = [q for q, _ in builder.PROBE_CANDIDATES]
    assert near_duplicate_pairs(builder.REPLAY_PROMPTS, 0.5, other=candidates) == []
    assert not {r["instruction"].lower() for r in replay} & {q.lower() for q in candidates}


def test_mix_replay_keeps_every_task_record_and_hits_the_fraction():
    from ftlab.data import mix_replay

    task = [{"id": i} for i in range(300)]
    replay = [{"r": i} for i in range(7)]
    mixed = mix_replay(task, replay, 0.25, seed=1)
    assert sorted(r["id"] for r in mixed if "id" in r) == list(range(300))
    counts = Counter(r["r"] for r in mixed if "r" in r)
    assert sum(counts.values()) == 100 and max(counts.values()) - min(counts.values()) <= 1
    assert mixed != task + [r for r in mixed if "r" in r]  # shuffled
    assert mix_replay(task, [], 0.0) == task or sorted(r["id"] for r in mix_replay(task, [], 0.0)) == list(range(300))
    with pytest.raises(ValueError, match="fraction"):
        mix_replay(task, replay, 1.0)
    with pytest.raises(ValueError, match="general_replay"):
        mix_replay(task, [], 0.2)


def test_load_course_data_limit_and_errors(monkeypatch, tmp_path):
    assert len(load_course_data("instructions", "test", limit=3)) == 3
    assert load_course_data("instructions", limit=1) == load_course_data("instructions", "train", limit=1)
    with pytest.raises(ValueError, match="unknown course dataset"):
        load_course_data("nope")
    with pytest.raises(ValueError, match="splits"):
        load_course_data("chat", "dev")
    with pytest.raises(ValueError, match="has no splits"):
        load_course_data("domain_corpus", "train")
    monkeypatch.setattr(course_data, "data_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"python data/build_datasets\.py"):
        load_course_data("instructions", "train")
    (tmp_path / "instructions").mkdir()
    (tmp_path / "instructions" / "train.jsonl").write_text('{"a": 1}\n{broken\n')
    with pytest.raises(ValueError, match=r"train\.jsonl:2: not valid JSON"):
        load_course_data("instructions", "train")


# --------------------------------------------------------------------------- generalisation and leakage


def test_test_split_uses_templates_never_seen_in_training():
    for name in ("instructions", "chat"):
        train = {r["template"] for split in ("train", "validation") for r in load_course_data(name, split)}
        test = {r["template"] for r in load_course_data(name, "test")}
        assert train and test and not train & test, f"{name}: templates shared by train and test: {train & test}"
    # and not just the ids: no test instruction text occurs in training
    train_instr = {r["instruction"] for r in load_course_data("instructions", "train")}
    assert not train_instr & {r["instruction"] for r in load_course_data("instructions", "test")}


def _norm(text):
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def test_no_exact_duplicates_within_or_across_splits():
    seen = {}
    for split in SPLITS:
        for i, r in enumerate(load_course_data("instructions", split)):
            key = _norm(r["input"] + " " + r["output"])
            assert key not in seen, f"instructions/{split}:{i + 1} repeats {seen[key]}"
            seen[key] = f"{split}:{i + 1}"


@pytest.mark.parametrize("name", ["instructions", "chat"])
def test_no_near_duplicate_leaks_from_training_into_validation_or_test(name):
    # Word-3-gram Jaccard over the whole conversation (instruction included). Validation shares the
    # training templates, so a short rewrite with the same instruction reaches ~0.65 by design;
    # 0.7 and above would be a copy with a detail changed.
    held_out = _records(name, "validation") + _records(name, "test")
    leaks = find_leaks(_records(name, "train"), held_out, threshold=0.7)
    assert leaks == [], f"{name}: {len(leaks)} near copies of training records, e.g. {leaks[:3]}"


def test_every_shipped_file_loads_through_ftlab_data():
    for name in ("instructions", "chat"):
        for split in SPLITS:
            records = _records(name, split)
            assert all(r["messages"][-1]["role"] == "assistant" and r["task"] in TASKS for r in records)
    corpus = load_records(DATA / "domain_corpus.jsonl", verbose=False)
    assert all("text" in r for r in corpus)
    prefs = load_records(DATA / "preferences.jsonl", field_map={"chosen": "completion"}, verbose=False)
    assert all(r["messages"][-1]["role"] == "assistant" and "rejected" in r for r in prefs)
    probes = load_records(DATA / "probes.jsonl", field_map={"question": "prompt", "base_answer": "completion"},
                          verbose=False)
    assert len(probes) == len(load_course_data("probes"))


# --------------------------------------------------------------------------- scoring


REF_JSON = '{"customer":"Ana Silva","order_id":"BW-123456","product":"ThermoMug Pro","quantity":2}'


@pytest.mark.parametrize("prediction,expected", [
    (REF_JSON, 1.0),
    ('  {"quantity": 2, "product": "ThermoMug Pro", "order_id": "BW-123456", "customer": "Ana Silva"}\n', 1.0),
    ('{"customer":"Ana Silva","order_id":"BW-123456","product":"ThermoMug Pro","quantity":"2"}', 0.75),
    ('{"customer":"ana silva","order_id":null,"product":"ThermoMug Pro"}', 0.25),
    ('```json\n' + REF_JSON + '\n```', 0.0),        # fenced: not valid JSON for a program
    ('Here it is: ' + REF_JSON, 0.0),
    ('[1, 2]', 0.0),
    ('', 0.0),
])
def test_score_extract_json(prediction, expected):
    assert score_example("extract_json", prediction, REF_JSON) == pytest.approx(expected)


@pytest.mark.parametrize("prediction,expected", [
    ("billing", 1.0), (" Billing.\n", 1.0), ('"billing"', 1.0), ("BILLING!", 1.0),
    ("shipping", 0.0), ("The category is billing", 0.0), ("billing, shipping", 0.0), ("", 0.0),
])
def test_score_classify(prediction, expected):
    assert score_example("classify", prediction, "billing") == expected


@pytest.mark.parametrize("prediction,expected", [
    ("2024-03-05", 1.0), ("  2024-03-05\n", 1.0), ("2024-3-5", 0.0), ("2024-03-05.", 0.0),
    ("The date is 2024-03-05", 0.0), ("2024-05-03", 0.0),
])
def test_score_rewrite(prediction, expected):
    assert score_example("rewrite", prediction, "2024-03-05") == expected


def test_score_qa_is_squad_token_f1():
    assert score_example("qa", "Bluebird Express", "Bluebird Express") == 1.0
    assert score_example("qa", "the Bluebird Express.", "Bluebird Express") == 1.0  # articles, punctuation
    # "It ships with Bluebird Express": 5 tokens, 2 overlap -> P = 2/5, R = 1, F1 = 4/7
    assert score_example("qa", "It ships with Bluebird Express", "Bluebird Express") == pytest.approx(4 / 7)
    assert score_example("qa", "SwiftShip", "Bluebird Express") == 0.0


def test_score_example_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown task 'summarise'"):
        score_example("summarise", "x", "y")
    with pytest.raises(TypeError, match="prediction must be a str"):
        score_example("qa", None, "y")


def test_score_probe():
    assert score_probe("The capital of France is Paris.", ["paris"])
    assert score_probe("Plants absorb carbon dioxide (CO2).", ["carbon dioxide", "co2"])
    assert not score_probe("I think it is Lyon.", ["paris"])
    assert score_probe("It freezes at 0 degrees.", ["0"]) and score_probe("A week has 7 days", ["7"])
    assert not score_probe("10 degrees", ["0"]) and not score_probe("about 129.99999967527", ["7"])
    assert not score_probe("It is 3.7 or so", ["7"]) and not score_probe("Parisian", ["paris"])
    assert not score_probe("", ["paris"])

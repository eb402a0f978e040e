"""ftlab.data: readers, formats, field mapping, validation errors, reports, de-duplication, splits."""

import itertools
import json
import random
from pathlib import Path

import pytest

from ftlab.data import (
    DataValidationError,
    drop_duplicates,
    find_leaks,
    jaccard,
    leakage_demo,
    load_records,
    near_duplicate_pairs,
    record_text,
    shingles,
    split_records,
    summarize_dataset,
    validate_records,
)

FIX = Path(__file__).parent / "fixtures" / "data"


def roles(record):
    return [m["role"] for m in record["messages"]]


# --------------------------------------------------------------------------- formats and readers


def test_instruction_jsonl():
    recs = load_records(FIX / "instruction.jsonl")
    assert len(recs) == 3
    assert recs[0]["messages"] == [
        {"role": "user", "content": "Translate to French.\n\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    assert recs[1]["messages"][0]["content"] == "Name the capital of Italy."  # empty input: no blank line
    assert roles(recs[2]) == ["system", "user", "assistant"]  # optional system field
    assert recs[0]["task"] == "rewrite" and recs[0]["_format"] == "instruction"
    # the blank line 3 is skipped, so the third record is line 4
    assert [r["_source"] for r in recs] == [f"{FIX / 'instruction.jsonl'}:{n}" for n in (1, 2, 4)]


def test_prompt_completion_json():
    recs = load_records(FIX / "prompt_completion.json")
    assert [roles(r) for r in recs] == [["user", "assistant"]] * 2
    assert recs[1]["messages"][1]["content"] == "Eight."
    assert recs[1]["_source"].endswith("prompt_completion.json#2")


def test_chat_jsonl_multi_turn_keeps_other_fields():
    recs = load_records(FIX / "chat.jsonl")
    assert roles(recs[0]) == ["system", "user", "assistant", "user", "assistant"]
    assert recs[0]["id"] == "conv-1" and recs[0]["_format"] == "chat"


def test_sharegpt_json_inside_an_object():
    recs = load_records(FIX / "sharegpt.json")
    assert recs[0]["messages"] == [{"role": "user", "content": "Give me a synonym for quick."},
                                   {"role": "assistant", "content": "fast"}]
    assert roles(recs[1]) == ["system", "user", "assistant", "user", "assistant"]
    assert recs[1]["_format"] == "sharegpt"


def test_text_jsonl():
    recs = load_records(FIX / "text.jsonl")
    assert recs[0]["text"].startswith("Sourdough") and recs[0]["topic"] == "baking"
    assert "messages" not in recs[0] and recs[0]["_format"] == "text"


def test_csv_with_field_map():
    recs = load_records(FIX / "qa.csv", field_map={"question": "prompt", "answer": "completion"})
    assert recs[1]["messages"] == [{"role": "user", "content": 'Who wrote "Hamlet"?'},
                                   {"role": "assistant", "content": "William Shakespeare"}]
    assert recs[1]["category"] == "literature"
    assert recs[1]["_source"].endswith("qa.csv:3")  # header is line 1


def test_csv_without_field_map_says_how_to_map():
    with pytest.raises(DataValidationError) as e:
        load_records(FIX / "qa.csv")
    assert "line 2" in str(e.value) and "field_map" in str(e.value)


def test_parquet_chat():
    recs = load_records(FIX / "chat.parquet")
    assert recs[1]["task"] == "extract_json"
    assert recs[1]["messages"][2]["content"] == '{"name": "Ada", "age": 36}'


def test_in_memory_list_and_dataset():
    from datasets import Dataset

    rows = [{"context": "Fix the typo: teh", "response": "the"}]
    mapping = {"context": "instruction", "response": "output"}
    from_list = load_records(rows, field_map=mapping)
    from_ds = load_records(Dataset.from_list(rows), field_map=mapping)
    assert from_list[0]["messages"] == from_ds[0]["messages"] == [
        {"role": "user", "content": "Fix the typo: teh"}, {"role": "assistant", "content": "the"}]
    assert from_list[0]["_source"] == "records[0]" and from_ds[0]["_source"] == "dataset[0]"


def test_explicit_format_overrides_detection():
    row = {"prompt": "p", "completion": "c", "text": "a whole document"}
    assert load_records([row])[0]["_format"] == "prompt_completion"
    as_text = load_records([row], format="text")[0]
    assert as_text["text"] == "a whole document" and as_text["prompt"] == "p"


def test_conversational_prompt_completion():
    row = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
           "completion": [{"role": "assistant", "content": "a"}]}
    assert roles(load_records([row])[0]) == ["system", "user", "assistant"]


def test_canonical_records_round_trip_and_keep_their_source():
    recs = load_records(FIX / "chat.jsonl")
    again = load_records(recs)
    assert [r["messages"] for r in again] == [r["messages"] for r in recs]
    assert again[1]["_source"] == recs[1]["_source"]


def test_json_file_holding_jsonl_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert [r["text"] for r in load_records(path)] == ["one", "two"]


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_records(tmp_path / "data.xml")


# --------------------------------------------------------------------------- validation errors
# Each case: (fixture, line, field, words of the message). The error must name all three.

CASES = [
    ("broken_malformed.jsonl", 2, "(whole line)", "malformed JSON"),
    ("broken_malformed.jsonl", 3, "(whole line)", "malformed JSON"),
    ("broken_instruction.jsonl", 2, "output", "missing field"),
    ("broken_instruction.jsonl", 3, "output", "empty assistant reply"),
    ("broken_instruction.jsonl", 4, "output", "must be a string, got int"),
    ("broken_instruction.jsonl", 5, "instruction", "empty"),
    ("broken_instruction.jsonl", 6, "input", "must be a string, got list"),
    ("broken_instruction.jsonl", 7, "(record)", "expected an object"),
    ("broken_instruction.jsonl", 8, "(record)", "cannot tell the data format"),
    ("broken_chat.jsonl", 2, "messages[1].role", "unknown role 'bot'"),
    ("broken_chat.jsonl", 3, "messages[0].role", "ends with a 'user' turn"),
    ("broken_chat.jsonl", 4, "messages[1].role", "two 'user' turns in a row"),
    ("broken_chat.jsonl", 5, "messages[1].content", "empty assistant reply"),
    ("broken_chat.jsonl", 6, "messages[1].content", "must be a string, got int"),
    ("broken_chat.jsonl", 7, "messages", "must be a list"),
    ("broken_chat.jsonl", 8, "messages[0].role", "starts with 'assistant'"),
    ("broken_chat.jsonl", 9, "messages[2].role", "system message after the start"),
    ("broken_chat.jsonl", 10, "messages[1].content", "missing"),
    ("broken_sharegpt.jsonl", 1, "conversations[1].from", "unknown role 'robot'"),
    ("broken_sharegpt.jsonl", 2, "conversations[2].from", "ends with a 'user' turn"),
    ("broken.csv", 3, "answer (mapped to completion)", "empty assistant reply"),
    ("broken.csv", 4, "(row)", "more cells than the header"),
]


def _load_problems(name):
    field_map = {"question": "prompt", "answer": "completion"} if name.endswith(".csv") else None
    with pytest.raises(DataValidationError) as e:
        load_records(FIX / name, field_map=field_map)
    return e.value


@pytest.mark.parametrize("name,line,field,words", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_every_validation_error_names_file_line_field_and_fix(name, line, field, words):
    err = _load_problems(name)
    matching = [p for p in err.problems if p.number == line]
    assert matching, f"no problem reported for line {line}: {err}"
    p = matching[0]
    assert p.field == field and words in p.message and p.fix
    text = str(p)
    assert f"{FIX / name} line {line}" in text and f"field '{field}'" in text and "Fix:" in text
    assert text in str(err)  # and the exception message shows it


def test_all_problems_are_collected_and_valid_records_are_not_reported():
    err = _load_problems("broken_chat.jsonl")
    assert sorted({p.number for p in err.problems}) == list(range(2, 11))  # line 1 is valid
    assert str(err).startswith(f"{len(err.problems)} problems found")


def test_long_error_lists_are_cut_but_complete_in_problems():
    rows = [{"instruction": f"q{i}", "output": ""} for i in range(25)]
    with pytest.raises(DataValidationError) as e:
        load_records(rows)
    assert len(e.value.problems) == 25
    assert "and 15 more" in str(e.value) and "records[9]" in str(e.value) and "records[10]" not in str(e.value)


def test_mapped_field_is_named_as_the_user_wrote_it():
    with pytest.raises(DataValidationError) as e:
        load_records([{"question": "q", "reply": 3}], field_map={"question": "prompt", "reply": "completion"})
    assert "records[0], field 'reply (mapped to completion)'" in str(e.value)


def test_drop_invalid_is_explicit_and_counted(capsys):
    recs = load_records(FIX / "broken_chat.jsonl", on_invalid="drop")
    assert len(recs) == 1 and recs[0]["_source"].endswith(":1")
    assert "dropped 9 invalid record(s) of 10" in capsys.readouterr().out


def test_validate_false_skips_conversation_checks_only():
    rows = [{"messages": [{"role": "user", "content": "unanswered"}]}]
    assert load_records(rows, validate=False)[0]["messages"][0]["content"] == "unanswered"
    with pytest.raises(DataValidationError):
        load_records([{"messages": "not a list"}], validate=False)


def test_validate_records_on_hand_made_records():
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}], "_source": "my.jsonl:12"}
    assert validate_records([good]) == []
    problems = validate_records([good, bad], raise_on_error=False)
    assert [str(p).split(":")[0] for p in problems] == ["my.jsonl line 12, field 'messages[1].content'"]
    with pytest.raises(DataValidationError, match="my.jsonl line 12"):
        validate_records([bad])
    assert validate_records([{"text": ""}], raise_on_error=False)[0].field == "text"


def test_malformed_json_file_gives_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]\n')
    with pytest.raises(DataValidationError, match=r"bad.json line 3, field '\(file\)': malformed JSON"):
        load_records(path)


# --------------------------------------------------------------------------- report and duplicates


def _qa(i, answer=None):
    return {"messages": [{"role": "user", "content": f"What is item number {i} called in the catalogue of shop {i % 3}?"},
                         {"role": "assistant", "content": answer or f"It is called item-{i}."}], "task": "qa"}


def test_summarize_dataset_counts_lengths_and_duplicates():
    from ftlab import load_tokenizer

    recs = [_qa(i) for i in range(6)]
    recs.append(dict(_qa(2)))  # exact copy of record 2
    near = _qa(4)
    near["messages"][0]["content"] = near["messages"][0]["content"].upper() + "!!"  # same words: a near copy
    recs.append(near)
    recs.append({"text": "a plain document " * 40, "_format": "text"})
    tok = load_tokenizer("tiny")
    rep = summarize_dataset(recs, tok, max_length=60)
    assert rep.n_records == 9 and rep.exact_duplicates == 1 and rep.near_duplicates == 1
    assert rep.formats == {"chat": 8, "text": 1} and rep.tasks == {"qa": 8}
    assert rep.roles == {"user": 8, "assistant": 8}
    assert len(rep.token_lengths) == 9 and rep.n_too_long == sum(n > 60 for n in rep.token_lengths) >= 1
    stats = rep.length_stats()
    assert stats["min"] <= stats["median"] <= stats["max"] == max(rep.token_lengths)
    text, page = str(rep), rep._repr_html_()
    assert "longer than max_length=60" in text and "nothing was changed" in text
    assert "<table>" in page and "token lengths" in page
    assert len(recs) == 9  # the report does not touch the data


def test_drop_duplicates_counts():
    recs = [_qa(i) for i in range(5)] + [_qa(1), _qa(3)]
    kept, n = drop_duplicates(recs, verbose=False)
    assert n == 2 and len(kept) == 5 and kept == recs[:5]


def test_near_duplicate_pairs_is_exact():
    """Prefix filtering must find exactly the pairs a brute-force comparison finds."""
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    texts = []
    for _ in range(60):
        base = [rng.choice(words) for _ in range(rng.randint(3, 12))]
        texts.append(" ".join(base))
        if rng.random() < 0.5:  # a mutated copy
            texts.append(" ".join(base[:-1] + [rng.choice(words)]))
    for threshold in (0.5, 0.8):
        sets = [shingles(t) for t in texts]
        brute = {(i, j) for i, j in itertools.combinations(range(len(texts)), 2) if jaccard(sets[i], sets[j]) >= threshold}
        assert {(i, j) for i, j, _ in near_duplicate_pairs(texts, threshold)} == brute


# --------------------------------------------------------------------------- splits


def _leaky_dataset():
    """200 distinct questions, then 60 copies: 20 exact, 20 with case/punctuation changed, 20 reworded a little."""
    recs = [_qa(i) for i in range(200)]
    rng = random.Random(1)
    for n, i in enumerate(rng.sample(range(200), 60)):
        copy = json.loads(json.dumps(_qa(i)))
        q = copy["messages"][0]["content"]
        if n % 3 == 1:
            q = q.upper().replace("?", " ??")
        elif n % 3 == 2:
            q = "Quick question, please: " + q
        copy["messages"][0]["content"] = q
        recs.append(copy)
    return recs


def test_split_is_deterministic_and_complete():
    recs = _leaky_dataset()
    a = split_records(recs, 0.1, 0.2, seed=3)
    b = split_records(recs, 0.1, 0.2, seed=3)
    c = split_records(recs, 0.1, 0.2, seed=4)
    assert a == b and a != c
    train, val, test = a
    assert len(train) + len(val) + len(test) == len(recs)
    assert abs(len(test) - 52) <= 2 and abs(len(val) - 26) <= 2
    assert a.train is train and "duplicate groups" in a.report


def test_no_test_record_has_a_copy_in_train():
    recs = _leaky_dataset()
    train, val, test = split_records(recs, 0.1, 0.2, seed=0)
    # brute force, independent of the fast join: no test record is similar to any train/val record
    others = [shingles(record_text(r)) for r in train + val]
    for t in test:
        s = shingles(record_text(t))
        assert max(jaccard(s, o) for o in others) < 0.8
    assert find_leaks(train, test) == []


def test_naive_split_leaks_and_the_demo_shows_it():
    recs = _leaky_dataset()
    naive = split_records(recs, 0.0, 0.2, seed=0, dedupe=False)
    assert len(find_leaks(naive.train, naive.test)) > 0
    demo = leakage_demo(recs, test_fraction=0.2, seed=0)
    assert demo["naive"] > 0 and demo["deduped"] == 0 and demo["examples"]


def test_preference_pairs_get_a_pointed_error_and_a_way_in():
    row = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}
    with pytest.raises(DataValidationError, match=r"records\[0\], field '\(record\)': this is a preference pair"):
        load_records([row])
    rec = load_records([row], field_map={"chosen": "completion"})[0]
    assert rec["messages"][1]["content"] == "Hi!" and rec["rejected"] == "Go away."


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataValidationError, match="no records found"):
        load_records(path)


def test_csv_cell_holding_a_json_conversation(tmp_path):
    path = tmp_path / "chat.csv"
    conv = json.dumps([{"role": "user", "content": "hi, you"}, {"role": "assistant", "content": "hello"}])
    path.write_text("messages,task\n" + '"' + conv.replace('"', '""') + '",qa\n')
    rec = load_records(path)[0]
    assert rec["messages"][1]["content"] == "hello" and rec["task"] == "qa"


def test_splits_of_raw_records_compare_their_content():
    raw = [{"instruction": f"Spell the number {i} in words, please", "output": f"number {i}"} for i in range(30)]
    raw += [dict(raw[0]), dict(raw[1])]
    train, val, test = split_records(raw, 0.0, 0.3, seed=0)
    assert len(test) == 10 and raw[5] in train + test  # originals are returned, not converted copies
    assert find_leaks(train, test) == []
    kept, n = drop_duplicates(raw, verbose=False)
    assert n == 2

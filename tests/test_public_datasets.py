"""The public instruction datasets load in the layout they are distributed in, without a field_map.

Each fixture in tests/fixtures/data/public/ is a small file written by us in that dataset's
distributed layout (field names, nesting, file type): Alpaca's alpaca_data.json, Dolly's
databricks-dolly-15k.jsonl, ShareGPT (Vicuna's cleaned JSON), OpenAssistant's flat message rows,
nested trees and oasst_top1 ChatML text, and FLAN's inputs/targets.
"""

import gzip
import json
import shutil
from pathlib import Path

import pytest

from ftlab.data import DataValidationError, detect_format, load_records, split_records, tokenize_example

PUBLIC = Path(__file__).parent / "fixtures" / "data" / "public"


def turns(record):
    return [(m["role"], m["content"]) for m in record["messages"]]


def test_alpaca_json_list():
    recs = load_records(PUBLIC / "alpaca_data.json")
    assert [r["_format"] for r in recs] == ["instruction", "instruction"]
    assert turns(recs[0])[0] == ("user", "Give three tips for staying healthy.")  # empty input: nothing appended
    assert turns(recs[1]) == [("user", "Translate the sentence into French.\n\nThe parcel arrived today."),
                              ("assistant", "Le colis est arrivé aujourd'hui.")]


def test_dolly_needs_no_field_map_and_matches_the_old_mapping():
    recs = load_records(PUBLIC / "databricks-dolly-15k.jsonl")
    assert [r["_format"] for r in recs] == ["dolly", "dolly"]
    assert turns(recs[0]) == [
        ("user", "When was the parcel service founded?\n\nParcelGo was founded in Graz in 1998 and delivers across Austria."),
        ("assistant", "ParcelGo was founded in 1998.")]
    assert recs[0]["category"] == "closed_qa" and recs[0]["_source"].endswith("databricks-dolly-15k.jsonl:1")
    mapped = load_records(PUBLIC / "databricks-dolly-15k.jsonl", field_map={"context": "input", "response": "output"})
    assert [turns(r) for r in mapped] == [turns(r) for r in recs]  # what a field_map used to be needed for


def test_sharegpt_vicuna_layout():
    recs = load_records(PUBLIC / "sharegpt_vicuna.json")
    assert [r["_format"] for r in recs] == ["sharegpt", "sharegpt"]
    assert [role for role, _ in turns(recs[0])] == ["user", "assistant", "user", "assistant"]
    assert recs[0]["id"] == "QWJhYvA_0"


def test_flan_inputs_targets():
    recs = load_records(PUBLIC / "flan.jsonl")
    assert [r["_format"] for r in recs] == ["flan", "flan"]
    assert turns(recs[1]) == [("user", "Translate to German: Thank you for your order."),
                              ("assistant", "Vielen Dank für Ihre Bestellung.")]
    assert recs[0]["task_name"] == "rte:1.0.0"  # the other fields are kept


EGG_THREAD = [("user", "How do I boil an egg?"),
              ("assistant", "Lower it into boiling water and cook it for 7 minutes."),  # rank 0, not the rank-1 sibling
              ("user", "And for a soft yolk?"),
              ("assistant", "About 5 to 6 minutes.")]  # the rank-0 reply is deleted: the next best one


def test_oasst_message_rows_become_one_best_thread_per_tree():
    recs = load_records(PUBLIC / "oasst1_messages.jsonl")
    assert len(recs) == 2 and {r["_format"] for r in recs} == {"oasst"}
    assert turns(recs[0]) == EGG_THREAD
    assert recs[0]["message_tree_id"] == "m1" and recs[0]["_source"].endswith("oasst1_messages.jsonl:1")
    # the second tree ends with an unanswered prompter turn, which is left off
    assert turns(recs[1]) == [("user", "¿Qué es un paquete?"), ("assistant", "Un objeto que se envía por correo.")]
    assert recs[1]["lang"] == "es"


def test_oasst_gzipped_and_parquet_rows_and_nested_trees(tmp_path):
    gz = tmp_path / "2023-04-12_oasst_ready.messages.jsonl.gz"
    with open(PUBLIC / "oasst1_messages.jsonl", "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert turns(load_records(gz)[0]) == EGG_THREAD
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (PUBLIC / "oasst1_messages.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")  # the Hugging Face layout
    assert turns(load_records(tmp_path / "train-00000-of-00001.parquet")[0]) == EGG_THREAD
    trees = load_records(PUBLIC / "oasst1_trees.jsonl")
    assert len(trees) == 1 and turns(trees[0]) == EGG_THREAD and trees[0]["tree_state"] == "ready_for_export"


def test_oasst_top1_chatml_text():
    recs = load_records(PUBLIC / "oasst_top1.jsonl")
    assert [r["_format"] for r in recs] == ["chatml", "chatml"]
    assert turns(recs[0]) == EGG_THREAD
    assert detect_format({"text": "A plain document."}) == "text"  # continued pre-training text stays text


def test_public_layouts_tokenise_and_split():
    from ftlab import load_tokenizer

    tok = load_tokenizer("tiny")
    recs = [r for name in ("alpaca_data.json", "databricks-dolly-15k.jsonl", "sharegpt_vicuna.json", "flan.jsonl",
                           "oasst1_messages.jsonl", "oasst_top1.jsonl") for r in load_records(PUBLIC / name)]
    for r in recs:
        ex = tokenize_example(r, tok)
        assert any(label != -100 for label in ex["labels"])
    train, val, test = split_records(recs, 0.2, 0.2, seed=0)
    assert len(train) + len(val) + len(test) == len(recs) == 12


@pytest.mark.parametrize("line, field, words", [
    (1, "response", "empty assistant reply"),
    (2, "targets", "must be a string, got int"),
    (3, "text", "text outside a turn"),
    (4, "parent_id", "the parent message 'x1' is not in the data"),
    (6, "role", "unknown role 'moderator'"),
])
def test_bad_public_records_name_file_line_field_and_fix(line, field, words):
    with pytest.raises(DataValidationError) as info:
        load_records(PUBLIC / "broken_public.jsonl")
    problems = info.value.problems
    assert len(problems) == 5  # every bad record at once (the tree of y1 is left out with its bad reply)
    (p,) = [p for p in problems if p.number == line]
    assert p.file.endswith("broken_public.jsonl") and p.unit == "line"
    assert p.field == field and words in p.message and p.fix
    assert f"broken_public.jsonl line {line}, field '{field}'" in str(info.value)

"""QLoRA memory is never under-predicted: the estimator against LitGPT's published A100 table.

The fixture (ftlab/memory/litgpt_qlora_memory.json) keeps the table's repository, file, commit and
URL, and how it was measured. No GPU and no download: the numbers are in the fixture.
"""

import json

import pytest

from ftlab.memory.cuda import bnb_saved_input_bytes
from ftlab.memory.published import LITGPT_FIXTURE, compare_litgpt_qlora


@pytest.fixture(scope="module")
def rows():
    return compare_litgpt_qlora()


def test_fixture_names_its_source():
    src = json.loads(LITGPT_FIXTURE.read_text())["source"]
    assert src["repo"] == "Lightning-AI/litgpt" and len(src["commit"]) == 40 and src["commit"] in src["url"]
    assert src["bitsandbytes"] == "0.41.1" and "max_memory_allocated" in src["measured_with"]


def test_no_published_qlora_row_is_under_predicted_by_more_than_ten_percent(rows):
    qlora = [r for r in rows if r["quantization"]]
    assert len(qlora) == 4
    for r in qlora:
        assert -10 <= r["error_pct"] <= 10, r


def test_lora_rows_of_the_same_table_stay_within_ten_percent(rows):
    lora = [r for r in rows if not r["quantization"]]
    assert len(lora) == 2 and all(abs(r["error_pct"]) <= 10 for r in lora), lora


def test_the_old_bitsandbytes_saved_inputs_are_the_missing_term(rows):
    # Without the inputs bitsandbytes 0.41 kept, every QLoRA row is under-predicted by more than 10 %:
    # this is the gap the term closes, not a fitted constant.
    for r in rows:
        if r["quantization"]:
            assert r["without_inputs_pct"] < -10 and r["saved_inputs"] > 0, r


def test_saved_inputs_only_before_bitsandbytes_0_43_2():
    args = ("llama-2-7b", 1, 1304, 2)
    assert bnb_saved_input_bytes(*args, bitsandbytes="0.43.2") == 0
    assert bnb_saved_input_bytes(*args, bitsandbytes="0.50.2") == 0
    assert bnb_saved_input_bytes(*args, bitsandbytes="0.43.1") == 1304 * 32 * (3 * 4096 + 11008) * 2

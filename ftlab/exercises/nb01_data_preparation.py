"""Exercises of notebook 01: data preparation — field maps, trained tokens, padding.

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations

import functools

from ftlab.exercises.checkers import Mapping, Number, exercise


# --------------------------------------------------------------------------- data (notebook 01)


_QA_ROW = {"query": "Where is order BW-100200?", "background": "BW-100200 | shipped | ParcelGo", "response": "shipped"}


@exercise(
    "data.field_map", Mapping(known_values=("instruction", "input", "output", "prompt", "completion", "messages", "text")),
    question=f"A dataset's rows look like {_QA_ROW}. Give the field_map (your names -> ftlab's) that loads it as "
             "instruction triples, with the background text as the input.",
    mistakes=[
        (lambda: {"instruction": "query", "input": "background", "output": "response"},
         "The mapping goes from the dataset's names (keys) to ftlab's names (values): {'query': 'instruction', ...}."),
        (lambda: {"query": "prompt", "response": "completion"},
         "That loads it as prompt/completion and leaves the background out of the prompt; use instruction / input / output."),
        (lambda: {"query": "instruction", "response": "output"},
         "The background is missing: without it the question cannot be answered. Map it to 'input'."),
    ],
    explanation="field_map renames fields before the format is detected, so any layout can be read without editing the file.",
)
def _field_map():
    # the question is the instruction, the background goes with it as the input, the response is the answer
    return {"query": "instruction", "background": "input", "response": "output"}


_DATE_RECORD = {"messages": [{"role": "user", "content": "Normalise the date: 3 July 2025"},
                             {"role": "assistant", "content": "2025-07-03"}]}


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer():
    from ftlab.models import load_tokenizer

    return load_tokenizer("tiny")  # SmolLM2's tokenizer (the tiny model shares it); loaded once


def _date_record_counts():
    from ftlab.data import tokenize_example

    tok = _smollm2_tokenizer()
    ex = tokenize_example(_DATE_RECORD, tok)
    trained = sum(label != -100 for label in ex["labels"])
    return trained, len(ex["input_ids"]), len(tok("2025-07-03", add_special_tokens=False)["input_ids"])


@exercise(
    "data.trained_tokens", Number(rtol=0, atol=0.5),
    question=f"With SmolLM2's tokenizer and chat template, how many tokens of {_DATE_RECORD} are trained "
             "(label != -100) by ftlab.tokenize_example?",
    mistakes=[
        (lambda: _date_record_counts()[2], "You counted the answer's tokens but not the end-of-turn token <|im_end|>, "
                                           "which is trained too: it teaches the model to stop."),
        (lambda: _date_record_counts()[1], "That is every token of the rendered conversation; only the assistant's reply "
                                           "(and its <|im_end|>) is trained."),
    ],
    explanation="Only the answer and its end-of-turn token are trained; system prompt, question and markup are masked.",
)
def _trained_tokens():
    import ftlab

    tok = ftlab.load_tokenizer("tiny")  # SmolLM2's tokenizer and chat template (the tiny model shares them)
    record = {"messages": [{"role": "user", "content": "Normalise the date: 3 July 2025"},
                           {"role": "assistant", "content": "2025-07-03"}]}
    example = ftlab.tokenize_example(record, tok)
    return sum(label != -100 for label in example["labels"])  # "2025-07-03" + <|im_end|>


# --------------------------------------------------------------------------- batching (notebook 01)

_BATCH_LENGTHS = [12, 30, 7, 18]


@exercise(
    "batching.padding_waste", Number(rtol=1e-3),
    question=f"A batch of {len(_BATCH_LENGTHS)} sequences with lengths {_BATCH_LENGTHS} is padded to its longest. "
             "What fraction of the batch's tokens are padding (a number between 0 and 1)?",
    mistakes=[
        (lambda: 53 / 67, "Divide the pad tokens by all tokens in the padded batch (4 x 30), not by the real tokens."),
        (lambda: 67 / 120, "That is the fraction of real tokens; padding is the rest."),
    ],
    explanation="Padded to the longest, short sequences waste compute; length grouping and packing cut this.",
)
def _padding_waste():
    lengths = [12, 30, 7, 18]
    padded = len(lengths) * max(lengths)  # 4 x 30 = 120 token slots
    real = sum(lengths)  # 67 real tokens
    return (padded - real) / padded  # 53 / 120 ≈ 0.44

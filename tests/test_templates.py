"""ftlab.data: chat/fallback templates, loss masks (decoded exactly), truncation, the token view."""

import copy

import pytest

from ftlab.data import load_records
from ftlab.data import (
    IGNORE_INDEX,
    TemplateError,
    mask_prompt_tokens,
    render_prompt,
    render_token_view,
    tokenize_dataset,
    tokenize_example,
)

SINGLE = {"messages": [{"role": "user", "content": "What is the capital of Peru?"},
                       {"role": "assistant", "content": "Lima."}]}
MULTI = {"messages": [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "And an even one, with a newline?"},
    {"role": "assistant", "content": "Two.\nIt is the only even prime."},
]}


@pytest.fixture(scope="module")
def tok():
    from ftlab import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def tok_without_template(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    return plain


def trained_runs(example, tok):
    """Decode each maximal run of trained tokens separately."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != IGNORE_INDEX:
            assert label == token  # labels are not shifted
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r) for r in runs]


def masked_text(example, tok):
    return tok.decode([t for t, l in zip(example["input_ids"], example["labels"]) if l == IGNORE_INDEX])


@pytest.mark.parametrize("template", [None, "fallback"])
def test_single_turn_trains_exactly_the_answer_and_its_end_token(tok, template):
    ex = tokenize_example(SINGLE, tok, template=template)
    assert trained_runs(ex, tok) == ["Lima.<|im_end|>"]
    assert "What is the capital of Peru?" in masked_text(ex, tok)
    assert ex["truncated"] == 0 and len(ex["input_ids"]) == len(ex["labels"])


@pytest.mark.parametrize("template", [None, "fallback"])
def test_multi_turn_trains_every_assistant_turn(tok, template):
    ex = tokenize_example(MULTI, tok, template=template)
    assert trained_runs(ex, tok) == ["Seven.<|im_end|>", "Two.\nIt is the only even prime.<|im_end|>"]
    masked = masked_text(ex, tok)
    for text in ("You answer in one line.", "Name a prime number.", "And an even one, with a newline?"):
        assert text in masked
    assert "Seven." not in masked


def test_chat_template_tokens_match_apply_chat_template(tok):
    """Training sees exactly the token sequence the tokenizer produces for the conversation."""
    ex = tokenize_example(MULTI, tok)
    assert ex["input_ids"] == list(tok.apply_chat_template(MULTI["messages"])["input_ids"])
    # system and user tokens, and the template's markup, are all -100
    text = tok.decode(ex["input_ids"])
    assert text.startswith("<|im_start|>system\nYou answer in one line.<|im_end|>")
    assert ex["labels"][:10] == [IGNORE_INDEX] * 10


def test_default_system_prompt_of_the_template_is_masked(tok):
    ex = tokenize_example(SINGLE, tok)
    assert "You are a helpful AI assistant named SmolLM" in masked_text(ex, tok)


def test_fallback_template_layout_is_documented(tok):
    ex = tokenize_example(MULTI, tok, template="fallback")
    assert tok.decode(ex["input_ids"]) == (
        "You answer in one line.\n\n### Instruction:\nName a prime number.\n\n### Response:\nSeven.<|im_end|>"
        "\n\n### Instruction:\nAnd an even one, with a newline?\n\n### Response:\nTwo.\nIt is the only even prime.<|im_end|>"
    )


def test_tokenizer_without_chat_template_falls_back(tok, tok_without_template):
    auto = tokenize_example(SINGLE, tok_without_template)
    assert auto == tokenize_example(SINGLE, tok, template="fallback")
    assert trained_runs(auto, tok) == ["Lima.<|im_end|>"]
    with pytest.raises(TemplateError, match="no chat template"):
        tokenize_example(SINGLE, tok_without_template, template="chat")


def test_train_on_last_and_all(tok):
    last = tokenize_example(MULTI, tok, train_on="last")
    assert trained_runs(last, tok) == ["Two.\nIt is the only even prime.<|im_end|>"]
    everything = tokenize_example(MULTI, tok, train_on="all")
    assert everything["labels"] == everything["input_ids"]
    with pytest.raises(ValueError, match="train_on"):
        tokenize_example(MULTI, tok, train_on="prompt")


def test_plain_text_trains_every_token_plus_eos(tok):
    ex = tokenize_example({"text": "Bread needs time to rise."}, tok)
    assert ex["labels"] == ex["input_ids"] and ex["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(ex["input_ids"]) == "Bread needs time to rise.<|im_end|>"


def test_raw_records_in_any_format_are_accepted(tok):
    ex = tokenize_example({"instruction": "What is the capital of Peru?", "output": "Lima."}, tok)
    assert ex == tokenize_example(SINGLE, tok)


def test_every_fixture_format_masks_its_assistant_text(tok):
    from pathlib import Path

    fix = Path(__file__).parent / "fixtures" / "data"
    for name in ("instruction.jsonl", "prompt_completion.json", "chat.jsonl", "sharegpt.json", "chat.parquet"):
        for record in load_records(fix / name):
            expected = [m["content"] + "<|im_end|>" for m in record["messages"] if m["role"] == "assistant"]
            for template in (None, "fallback"):
                assert trained_runs(tokenize_example(record, tok, template=template), tok) == expected, (name, template)


def test_truncation_is_explicit_and_counted(tok, capsys):
    full = tokenize_example(MULTI, tok)
    cut = tokenize_example(MULTI, tok, max_length=20)
    assert len(cut["input_ids"]) == 20 and cut["truncated"] == len(full["input_ids"]) - 20
    assert cut["input_ids"] == full["input_ids"][:20] and cut["labels"] == full["labels"][:20]
    exs = tokenize_dataset([MULTI, SINGLE, {"text": "short"}], tok, max_length=20)
    out = capsys.readouterr().out
    assert [bool(e["truncated"]) for e in exs] == [True, True, False]
    assert "2 of 3 examples were longer than 20 tokens" in out and "no trained token left" in out


def test_too_long_examples_can_be_dropped_or_refused_instead(tok, capsys):
    kept = tokenize_dataset([MULTI, SINGLE, {"text": "short"}], tok, max_length=20, on_too_long="drop")
    assert len(kept) == 1 and kept[0]["truncated"] == 0
    assert "dropped 2 of 3 examples longer than 20 tokens" in capsys.readouterr().out
    with pytest.raises(ValueError, match="2 examples are longer than max_length=20"):
        tokenize_dataset([MULTI, SINGLE], tok, max_length=20, on_too_long="error")


def test_mask_prompt_tokens():
    assert mask_prompt_tokens([1, 2, 3], [True, False, True]) == [1, IGNORE_INDEX, 3]


def test_render_prompt_matches_what_chat_uses(tok):
    prompt = render_prompt(SINGLE, tok)
    assert prompt == tok.apply_chat_template(SINGLE["messages"][:1], tokenize=False, add_generation_prompt=True)
    assert render_prompt(SINGLE, tok, template="fallback").endswith("### Response:\n")
    # the prompt plus the trained answer rebuild the training text
    ex = tokenize_example(SINGLE, tok, template="fallback")
    assert tok.decode(ex["input_ids"]) == render_prompt(SINGLE, tok, template="fallback") + "Lima.<|im_end|>"


def test_token_view_marks_trained_and_masked_tokens(tok):
    ex = tokenize_example(MULTI, tok)
    view = render_token_view(ex, tok)
    page = view.data
    n_trained = sum(l != IGNORE_INDEX for l in ex["labels"])
    assert page.count("background:#c8f7c5") == n_trained + 1  # + the legend
    assert page.count("background:#eeeeee") == len(ex["input_ids"]) - n_trained + 1
    assert f"{n_trained} of {len(ex['input_ids'])} tokens trained" in page
    assert "↵" in page and "&lt;|im_start|&gt;" in page  # newlines visible, HTML escaped
    assert render_token_view(SINGLE, tok).data.count("label=") == len(tokenize_example(SINGLE, tok)["input_ids"])


class _SlowTokenizer:
    """A tokenizer without offset mappings (like Python 'slow' tokenizers), wrapping the real one."""

    is_fast = False

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, add_special_tokens=True, **kwargs):
        assert "return_offsets_mapping" not in kwargs
        return self._tok(text, add_special_tokens=add_special_tokens)


@pytest.mark.parametrize("template", [None, "fallback"])
def test_tokenizers_without_offsets_mask_the_same_text(tok, template):
    ex = tokenize_example(MULTI, _SlowTokenizer(tok), template=template)
    assert trained_runs(ex, tok) == ["Seven.<|im_end|>", "Two.\nIt is the only even prime.<|im_end|>"]

"""Exercises of notebook 05: instruction tuning — the end-of-turn label, a model that never stops.

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations

from ftlab.exercises.checkers import Choice, Function, exercise
from ftlab.exercises.nb01_data_preparation import _DATE_RECORD, _smollm2_tokenizer  # the same record and tokenizer as 01


# =========================================================================== notebook 05 (helper N4)
# Exercises of 05_instruction_tuning: the end-of-turn label, and diagnosing a model that never stops.


def _eot_cases():
    from ftlab.data import tokenize_example

    tok = _smollm2_tokenizer()
    records = [
        _DATE_RECORD,
        {"messages": [{"role": "system", "content": "Answer with one word."},
                      {"role": "user", "content": "Category of: 'my card was charged twice'?"},
                      {"role": "assistant", "content": "billing"},
                      {"role": "user", "content": "And: 'the parcel never arrived'?"},
                      {"role": "assistant", "content": "shipping"}]},
    ]
    cases = []
    for record in records:
        ex = tokenize_example(record, tok)
        cases.append((ex["input_ids"], ex["labels"], tok.convert_tokens_to_ids("<|im_end|>")))
    return cases


@exercise(
    "templates.mask_end_of_turn", Function(_eot_cases, rtol=0, atol=0),
    question="Write mask_end_of_turn(input_ids, labels, end_id): return a copy of labels in which every trained "
             "end-of-turn token (label == end_id) gets the label -100; everything else unchanged.",
    mistakes=[
        (lambda: (lambda input_ids, labels, end_id: [l for l in labels if l != end_id]),
         "Don't delete the token: labels must stay aligned with input_ids, one label per token. Set it to -100."),
        (lambda: (lambda input_ids, labels, end_id: [-100 if t == end_id else t for t in input_ids]),
         "You rebuilt the labels from input_ids, so every masked prompt token became trained again. Start from labels."),
        (lambda: (lambda input_ids, labels, end_id: labels[:max(i for i, l in enumerate(labels) if l == end_id)]
                  + [-100] + labels[max(i for i, l in enumerate(labels) if l == end_id) + 1:]),
         "Only the last turn's end token is masked; a multi-turn conversation has one per assistant turn."),
    ],
    explanation="Without a trained end-of-turn token the model is never taught where an answer ends.",
)
def _mask_end_of_turn():
    def mask_end_of_turn(input_ids, labels, end_id):
        # labels are not shifted: position i's label is the token at position i (or -100)
        return [-100 if label == end_id else label for label in labels]

    return mask_end_of_turn


@exercise(
    "instruct.never_stops", Choice({
        "a": "the learning rate was too high",
        "b": "the end-of-turn token's label was -100 (e.g. pad token = eos token, and padding masked by id)",
        "c": "the training data had no system prompt",
        "d": "LoRA rank too small to learn the format",
    }),
    question="After fine-tuning, the model writes the right answer and then keeps going ('### Instruction: ...') "
             "until max_new_tokens. Which cause is the most likely?",
    mistakes=[
        (lambda: "a", "A too-high learning rate shows as a loss spike or gibberish, not as a right answer that never ends."),
        (lambda: "c", "A system prompt steers the style; it is not what tells the model where its answer ends."),
        (lambda: "d", "The answers are right, so the adapter learned the task; what it never saw is a trained stop token."),
    ],
    explanation="The model only learns to emit the end-of-turn token if that token is a trained label.",
)
def _never_stops():
    return "b"  # masking the end-of-turn label (a classic when pad == eos) removes the only 'stop here' signal


# --------------------------------------------------------------------------- assistant-only labels by hand (craft)

_MULTI_TURN = [
    [{"role": "user", "content": "Category of: 'my card was charged twice'?"},
     {"role": "assistant", "content": "billing"}],
    [{"role": "system", "content": "Answer with one word."},
     {"role": "user", "content": "Category of: 'my card was charged twice'?"},
     {"role": "assistant", "content": "billing"},
     {"role": "user", "content": "And: 'the parcel never arrived'?"},
     {"role": "assistant", "content": "shipping"}],
    [{"role": "user", "content": "Rewrite politely: send it now."},
     {"role": "assistant", "content": "Could you please send it today?"},
     {"role": "user", "content": "Shorter."},
     {"role": "assistant", "content": "Please send it today."},
     {"role": "user", "content": "Thanks!"},
     {"role": "assistant", "content": "You're welcome."}],
]


def _label_cases():
    tok = _smollm2_tokenizer()
    return [(messages, tok) for messages in _MULTI_TURN]


def _wrong_labels(kind):
    def labels_of(messages, tokenizer):
        ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
        if kind == "all":
            return list(ids)
        end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        labels = [-100] * len(ids)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for i in turns[-1:] if kind == "last" else turns:
            prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=kind != "header")
            start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            stop = ids.index(end_id, start) + (0 if kind == "no_end" else 1)
            labels[start:stop] = ids[start:stop]
        return labels

    return labels_of


@exercise(
    "templates.assistant_labels", Function(_label_cases, rtol=0, atol=0),
    question="Write assistant_labels(messages, tokenizer): the labels of the tokens of "
             "tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False): "
             "every assistant answer and its <|im_end|> keep their token id, every other token gets -100.",
    mistakes=[
        (lambda: _wrong_labels("all"), "Every token is trained, the prompt too (what DataCollatorForLanguageModeling "
                                       "does): set the labels of everything outside the answers to -100."),
        (lambda: _wrong_labels("no_end"), "The end-of-turn token <|im_end|> after each answer is not trained, so the "
                                          "model never learns to stop: include it in each answer's labels."),
        (lambda: _wrong_labels("last"), "Only the last answer is trained; every assistant turn of a conversation is "
                                        "an answer to learn from (loop over all of them)."),
        (lambda: _wrong_labels("header"), "The '<|im_start|>assistant\\n' header is trained too: render the prompt "
                                          "with add_generation_prompt=True, so the answer starts after the header."),
    ],
    explanation="tokenize_example builds these labels the same way for every chat template (with character spans).",
)
def _assistant_labels():
    def assistant_labels(messages, tokenizer):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        labels = [-100] * len(ids)  # nothing is trained ...
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            # ... except each answer: the prompt before it, with the "<|im_start|>assistant\n" cue, ends where it starts
            prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            stop = ids.index(end_id, start) + 1  # the answer's own <|im_end|> is trained: it teaches the model to stop
            labels[start:stop] = ids[start:stop]
        return labels

    return assistant_labels

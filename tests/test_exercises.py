"""ftlab.exercises: right answers pass, typical wrong answers fail with their specific hint,
and every worked solution agrees with the rest of ftlab (and, in the slow test, with peft/transformers)."""

import math

import pytest
import torch

import ftlab
from ftlab import exercises
from ftlab.exercises import EXERCISES, Number, answer_or_solution, check, exercise, solution, solution_source


@pytest.fixture(autouse=True)
def _no_solutions_flag(monkeypatch):
    # The README's test command sets FTLAB_SOLUTIONS=1 for the notebooks; these tests decide themselves.
    monkeypatch.delenv(exercises.SOLUTIONS_ENV, raising=False)


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
def test_every_worked_solution_passes_its_checker(exercise_id, capsys):
    assert check(exercise_id, EXERCISES[exercise_id].solution()) is True
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
def test_every_known_mistake_fails_with_its_own_hint(exercise_id, capsys):
    ex = EXERCISES[exercise_id]
    for make_wrong, hint in ex.mistakes:
        assert check(exercise_id, make_wrong()) is False, hint
        out = capsys.readouterr().out
        assert "❌" in out and hint in out, out


@pytest.mark.parametrize("answer, hint", [
    (6.0, "~2x too large"),  # added the two means
    (3.0, "averaged the two micro-batch means"),
    (2.5 * 1.3, "30% too large"),  # no known mistake: a generic diagnosis
])
def test_accumulation_hints(answer, hint, capsys):
    assert check("loss.accumulated_loss", answer) is False
    assert hint in capsys.readouterr().out


@pytest.mark.parametrize("exercise_id, wrong, hint", [
    ("batching.padding_waste", 44.1667, "percentage where a fraction"),
    ("memory.weights_gib", 13.0385 * 1024, "1024^1"),
    ("memory.weights_gib", -13.0385, "wrong sign"),
    ("loss.perplexity", math.exp(2.0) * 2, "~2x too large"),
])
def test_generic_number_diagnoses(exercise_id, wrong, hint, capsys):
    assert check(exercise_id, wrong) is False
    assert hint.lower() in capsys.readouterr().out.lower()


def test_tolerance_accepts_rounded_answers_and_tensors():
    assert check("memory.weights_gib", 13.04)
    assert check("optim.cosine_lr", 2.25e-4)
    assert check("loss.cross_entropy", torch.tensor(1.8423))
    assert not check("loss.cross_entropy", 1.9)


def test_function_exercise_reports_the_failing_input_and_errors(capsys):
    def correct(logits, targets):
        return torch.nn.functional.cross_entropy(logits, targets)  # ignore_index=-100 by default

    assert check("loss.masked_cross_entropy", correct) is True

    def forgot_return(logits, targets):
        logits.sum()

    assert check("loss.masked_cross_entropy", forgot_return) is False
    assert "forget `return`" in capsys.readouterr().out

    def crashes(logits, targets):
        return logits[targets]

    assert check("loss.masked_cross_entropy", crashes) is False
    out = capsys.readouterr().out
    assert "raised IndexError" in out and "Tensor of shape (5, 7)" in out

    assert check("loss.masked_cross_entropy", 2.0) is False
    assert "expected a function" in capsys.readouterr().out


def test_choice_and_bad_types(capsys):
    assert check("concepts.method_for_16gb", " (C) ")
    assert not check("concepts.method_for_16gb", "e")
    assert "not one of the options" in capsys.readouterr().out
    assert not check("memory.adamw_bytes_per_param", "sixteen")
    assert "expected a number, got str" in capsys.readouterr().out


def test_placeholder_is_reported_as_unanswered(capsys):
    assert check("loss.perplexity", ...) is False
    out = capsys.readouterr().out
    assert "not answered yet" in out and "❌" not in out


def test_solutions_flag_checks_the_worked_solution(monkeypatch, capsys):
    monkeypatch.setenv(exercises.SOLUTIONS_ENV, "1")
    assert check("loss.perplexity", ...) is True  # the placeholder is replaced by the solution
    assert "worked solution checked" in capsys.readouterr().out
    fn = answer_or_solution("optim.cosine_with_floor_fn", None)
    assert fn(1000) == pytest.approx(3e-5)
    monkeypatch.setenv(exercises.SOLUTIONS_ENV, "0")
    mine = lambda step: 0.0  # noqa: E731  a wrong answer, but an answer: it is used
    assert answer_or_solution("optim.cosine_with_floor_fn", mine) is mine


# --------------------------------------------------------------------------- Run All without answers


def _blank(step):
    ...  # ✏️ your code


def _blank_with_docstring(step):
    """A learner's placeholder that kept the docstring."""
    pass


def test_placeholders_are_recognised():
    from ftlab.exercises import is_unanswered

    assert is_unanswered(...) and is_unanswered(None)
    assert is_unanswered(_blank) and is_unanswered(_blank_with_docstring)
    assert not is_unanswered(0) and not is_unanswered("")  # a (wrong) answer, not a placeholder
    assert not is_unanswered(lambda step: step) and not is_unanswered(lambda step: 0.0)


def test_unanswered_exercise_hands_on_the_reference_and_says_so(capsys):
    fn = answer_or_solution("optim.cosine_with_floor_fn", _blank)
    assert fn is not _blank and fn(1000) == pytest.approx(3e-5)  # the worked solution's function
    out = capsys.readouterr().out
    assert "optim.cosine_with_floor_fn: not answered yet" in out and "reference answer is used below" in out
    assert answer_or_solution("loss.perplexity", ...) == pytest.approx(math.exp(2.0))
    assert check("optim.cosine_with_floor_fn", _blank) is False  # the checker says "not answered", no ❌
    out = capsys.readouterr().out
    assert "not answered yet" in out and "❌" not in out


def test_answered_exercise_keeps_the_learners_answer_right_or_wrong(capsys):
    assert answer_or_solution("loss.perplexity", 3.0) == 3.0        # wrong, but the learner's
    right = EXERCISES["optim.cosine_with_floor_fn"].solution()
    assert answer_or_solution("optim.cosine_with_floor_fn", right) is right
    wrong = lambda step: 3e-4  # noqa: E731  runs, gives wrong numbers: the lesson shows the consequences
    assert answer_or_solution("optim.cosine_with_floor_fn", wrong) is wrong
    assert capsys.readouterr().out == ""  # nothing to say about an answer that can be used


@pytest.mark.parametrize("broken, why", [
    (lambda step: 1 / 0, "raised ZeroDivisionError"),
    (lambda step: None if step > 10 else 1.0, "returned None"),
    (42, "is not a function"),
])
def test_a_function_answer_that_crashes_is_replaced_so_later_cells_run(broken, why, capsys):
    fn = answer_or_solution("optim.cosine_with_floor_fn", broken)
    assert fn(1000) == pytest.approx(3e-5)
    out = capsys.readouterr().out
    assert why in out and "reference answer is used below" in out


def test_a_broken_exercise_fails_ci(monkeypatch):
    @exercise("test.broken", Number(), question="?")
    def _broken():
        return "not a number"

    try:
        monkeypatch.setenv(exercises.SOLUTIONS_ENV, "1")
        with pytest.raises(AssertionError, match="fails its own checker"):
            check("test.broken", ...)
    finally:
        del EXERCISES["test.broken"]


def test_registry_errors():
    with pytest.raises(ValueError, match="registered twice"):
        exercise("loss.perplexity", Number(), question="?")(lambda: 1.0)
    with pytest.raises(KeyError, match="loss.perplexity"):
        check("loss.perplexty", 1.0)


def test_solution_shows_the_worked_code_without_the_decorator(capsys):
    text = solution_source("lora.trainable_params")
    assert text.startswith("# lora.trainable_params: LoRA with rank r=8")
    assert "def _lora_params" in text and "@exercise" not in text and "460,800" in text
    solution("memory.weights_gib")
    assert "2**30" in capsys.readouterr().out
    assert ftlab.check is check


def test_schedule_solutions_match_ftlab_optim():
    optim = pytest.importorskip("ftlab.training")
    assert EXERCISES["optim.cosine_lr"].solution() == pytest.approx(
        optim.lr_at(400, 3e-4, "cosine", warmup_steps=100, total_steps=1000), rel=1e-12)
    mine = EXERCISES["optim.cosine_with_floor_fn"].solution()
    for step in range(0, 1001, 7):
        assert mine(step) == pytest.approx(
            optim.lr_at(step, 3e-4, "cosine", warmup_steps=100, total_steps=1000, min_lr_ratio=0.1), rel=1e-12, abs=1e-15)


def test_masked_cross_entropy_solution_matches_torch():
    mine = EXERCISES["loss.masked_cross_entropy"].solution()
    logits, targets = torch.randn(9, 11), torch.tensor([3, -100, 0, 10, -100, 5, 5, 1, -100])
    assert torch.allclose(mine(logits, targets), torch.nn.functional.cross_entropy(logits, targets), atol=1e-6)
    assert EXERCISES["loss.cross_entropy"].solution() == pytest.approx(
        torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.5, -1.0, 0.0]]), torch.tensor([1])).item(), rel=1e-6)


@pytest.mark.slow  # imports peft + transformers' schedules (~6 s on the shared 2-core machine)
def test_solutions_match_peft_and_transformers():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    # SmolLM2-135M's attention shapes; tiny MLP and vocabulary, on the meta device (no memory).
    config = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         num_hidden_layers=30, intermediate_size=8, vocab_size=8)
    with torch.device("meta"):
        model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert EXERCISES["lora.trainable_params"].solution() == trainable

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, 100, 1000, min_lr_rate=0.1)
    mine = EXERCISES["optim.cosine_with_floor_fn"].solution()
    for step in range(1001):
        assert mine(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), step
        opt.step()
        sched.step()


def test_a_function_answer_of_the_wrong_kind_or_shape_is_replaced(capsys):
    import torch

    wrong_kind = lambda step: "3e-4"  # noqa: E731  a string where a number is needed
    assert answer_or_solution("optim.cosine_with_floor_fn", wrong_kind)(1000) == pytest.approx(3e-5)
    assert "returned a non-number" in capsys.readouterr().out
    # mask_end_of_turn must keep one label per token: a shorter list would break training later
    short = lambda input_ids, labels, end_id: labels[:-1]  # noqa: E731
    fn = answer_or_solution("templates.mask_end_of_turn", short)
    assert fn is not short and "where the lesson needs shape" in capsys.readouterr().out
    # same shape, wrong values: the learner's answer, whose consequences the notebook shows
    unchanged = lambda input_ids, labels, end_id: list(labels)  # noqa: E731
    assert answer_or_solution("templates.mask_end_of_turn", unchanged) is unchanged
    merge_wrong = lambda W, A, B, alpha, r: W + B @ A  # noqa: E731  forgets the alpha / r scale
    assert answer_or_solution("lora.merge_weight", merge_wrong) is merge_wrong
    assert torch.is_tensor(merge_wrong(torch.zeros(2, 2), torch.ones(1, 2), torch.ones(2, 1), 2, 1))


def test_is_right_checks_quietly(monkeypatch, capsys):
    from ftlab.exercises import is_right

    right = EXERCISES["optim.cosine_with_floor_fn"].solution()
    assert is_right("optim.cosine_with_floor_fn", right)
    assert not is_right("optim.cosine_with_floor_fn", lambda step: 3e-4)
    assert not is_right("optim.cosine_with_floor_fn", _blank) and not is_right("loss.perplexity", ...)
    assert not is_right("loss.perplexity", "seven")  # a checker meeting an odd answer
    assert is_right("loss.perplexity", math.exp(2.0))
    assert capsys.readouterr().out == ""
    monkeypatch.setenv(exercises.SOLUTIONS_ENV, "1")
    assert is_right("optim.cosine_with_floor_fn", _blank)  # CI: the answer is the worked solution

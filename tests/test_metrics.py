"""ftlab.evaluate against the implementations people cite.

Each metric is compared, to 1e-6, with its reference on a varied corpus: empty strings,
punctuation-only lines, non-ASCII text (accents, Cyrillic, CJK, emoji), numbers, HTML
entities, multi-line text and a few hundred seeded random sentences.
"""

import collections
import math
import random
import re
import string

import pytest
import torch

from ftlab.evaluate import metrics

# ---------------------------------------------------------------------------------------
# The test corpus
# ---------------------------------------------------------------------------------------

HANDWRITTEN = [  # (prediction, reference)
    ("", ""),
    ("", "The answer is 42."),
    ("The answer is 42.", ""),
    ("...", "!!!"),
    ("?!", "?!"),
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("the cat sat on a mat", "A cat was sitting on the mat!"),
    ("Café crème, s'il vous plaît.", "café creme s'il vous plait"),
    ("Москва — столица России.", "Столица России — Москва."),
    ("東京は日本の首都です。", "日本の首都は東京です。"),
    ("I love pizza 🍕🍕!", "I love pizza 🍕"),
    ("It costs $3.50 (plus tax).", "It costs $3.50, plus tax."),
    ("2019-2020 season: 12-3", "the 2019 - 2020 season, 12 - 3"),
    ("Tom &amp; Jerry &lt;3", "Tom & Jerry <3"),
    ("First line.\nSecond line here.\n\nThird.", "First line here.\nThird line.\nSecond."),
    ("a\tb  c   d", "a b c d"),
    ("the the the the the", "the"),
    ("An apple a day", "apple day"),
    ("trailing spaces   ", "trailing spaces"),
    ("-\nhyphen<skipped>ated", "hyphenated"),
    ("Running runners ran quickly", "the runner runs quick"),
    ("ÀÉÎÕÜ àéîõü", "AEIOU aeiou"),
    ("İstanbul ŞEHİR", "istanbul şehir"),
    ("{\"name\": \"Ada\"}", "{\"name\": \"Ada\", \"year\": 1815}"),
    ("one. two, three; four: five", "one two three four five"),
]

_WORDS = ("the a an cat dog sat ran on mat rug quickly slowly and or but 3 42 1,000 3.14 "
          "café naïve Zürich Ελλάδα мир 世界 🙂 , . ! ? ; ( ) - ' \" New York").split()


def _random_sentence(rng):
    if rng.random() < 0.05:
        return ""
    words = rng.choices(_WORDS, k=rng.randint(1, 18))
    text = " ".join(words)
    if rng.random() < 0.2:  # some multi-line texts for ROUGE-Lsum
        cut = rng.randint(0, len(text))
        text = text[:cut] + "\n" + text[cut:]
    return text


def _corpus(n=250, seed=0):
    rng = random.Random(seed)
    pairs = list(HANDWRITTEN)
    for _ in range(n):
        ref = _random_sentence(rng)
        # predictions overlap with their reference often, as real outputs do
        pred = ref if rng.random() < 0.1 else _random_sentence(rng)
        if rng.random() < 0.5 and ref:
            ref_words = ref.split()
            pred = " ".join(ref_words[: rng.randint(0, len(ref_words))] + pred.split()[:3])
        pairs.append((pred, ref))
    return pairs


CORPUS = _corpus()
PREDS = [p for p, _ in CORPUS]
REFS = [r for _, r in CORPUS]

# ---------------------------------------------------------------------------------------
# SQuAD v1.1: the official scoring logic, written out here as the reference
# ---------------------------------------------------------------------------------------


def squad_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def squad_f1(prediction, ground_truth):
    prediction_tokens = squad_normalize(prediction).split()
    ground_truth_tokens = squad_normalize(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def squad_em(prediction, ground_truth):
    return squad_normalize(prediction) == squad_normalize(ground_truth)


def squad_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def test_squad_parity():
    for pred, ref in CORPUS:
        assert metrics.normalize_answer(pred) == squad_normalize(pred)
        assert metrics.exact_match(pred, ref) == float(squad_em(pred, ref))
        assert metrics.token_f1(pred, ref) == pytest.approx(squad_f1(pred, ref), abs=1e-12)
    # several acceptable answers: the best one counts
    for i in range(0, len(CORPUS) - 2, 3):
        pred, refs = PREDS[i], REFS[i:i + 3]
        assert metrics.exact_match(pred, refs) == float(squad_max_over_ground_truths(squad_em, pred, refs))
        assert metrics.token_f1(pred, refs) == pytest.approx(
            squad_max_over_ground_truths(squad_f1, pred, refs), abs=1e-12)
    # the corpus has real variety: not all zeros, not all ones
    f1s = [metrics.token_f1(p, r) for p, r in CORPUS]
    assert 0.1 < sum(f1s) / len(f1s) < 0.9


def test_squad_known_values():
    assert metrics.exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert metrics.token_f1("the big red dog", "red dog") == pytest.approx(0.8)
    assert metrics.token_f1("", "") == 0.0  # the v1.1 script's answer for two empty answers
    with pytest.raises(ValueError, match="no reference answers"):
        metrics.exact_match("x", [])


# ---------------------------------------------------------------------------------------
# ROUGE vs rouge-score, BLEU and chrF vs sacrebleu
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_parity_with_rouge_score(use_stemmer):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"],
                                      use_stemmer=use_stemmer)
    sums = collections.Counter()
    for pred, ref in CORPUS:
        expected = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        ours = metrics.rouge_scores(pred, ref, use_stemmer=use_stemmer)
        for name, score in expected.items():
            for field, key in (("precision", "precision"), ("recall", "recall"), ("fmeasure", "f")):
                assert ours[name][key] == pytest.approx(getattr(score, field), abs=1e-9), \
                    (name, field, pred, ref)
            sums[name] += score.fmeasure
    corpus = metrics.rouge(PREDS, REFS, use_stemmer=use_stemmer)
    for name in sums:
        assert corpus[name] == pytest.approx(sums[name] / len(CORPUS), abs=1e-9)
    # ROUGE-Lsum really differs from ROUGE-L on multi-line text
    assert corpus["rougeLsum"] != pytest.approx(corpus["rougeL"], abs=1e-4)


def _sacrebleu_refs(refs_per_pred):
    # ours: one list of references per prediction; sacrebleu: one stream per reference slot
    width = max(len(r) for r in refs_per_pred)
    return [[r[k] if k < len(r) else None for r in refs_per_pred] for k in range(width)]


BLEU_SETTINGS = [dict(), dict(lowercase=True), dict(smooth="none"), dict(smooth="floor"),
                 dict(smooth="add-k"), dict(tokenize="none")]


@pytest.mark.parametrize("kwargs", BLEU_SETTINGS, ids=lambda k: ",".join(map(str, k.values())) or "default")
def test_bleu_parity_with_sacrebleu(kwargs):
    import sacrebleu

    ref_kwargs = {("smooth_method" if k == "smooth" else k): v for k, v in kwargs.items()}
    rng = random.Random(1)
    corpora = [
        (PREDS, [[r] for r in REFS]),
        (PREDS[:25], [[r] for r in REFS[:25]]),  # the hand-written pairs alone
        ([""], [["a b c"]]),
        (["a b c d"], [["a b c d"]]),
        (["a"], [["a b c d e"]]),
    ]
    # several references per prediction, with a varying count
    multi = [[REFS[i]] + [REFS[j] for j in rng.sample(range(len(REFS)), rng.randint(0, 2))]
             for i in range(len(REFS))]
    corpora.append((PREDS, multi))
    for i in range(5):  # random sub-corpora
        idx = rng.sample(range(len(PREDS)), 20)
        corpora.append(([PREDS[j] for j in idx], [[REFS[j]] for j in idx]))
    for preds, refs in corpora:
        expected = sacrebleu.BLEU(**ref_kwargs)
        result = expected.corpus_score(preds, _sacrebleu_refs(refs))
        ours = metrics.bleu(preds, refs, **kwargs)
        assert ours.score == pytest.approx(result.score, abs=1e-6)
        assert ours.precisions == pytest.approx(result.precisions, abs=1e-6)
        assert ours.bp == pytest.approx(result.bp, abs=1e-9)
        assert (ours.sys_len, ours.ref_len) == (result.sys_len, result.ref_len)
        assert ours.signature == str(expected.get_signature())
    assert 5 < metrics.bleu(PREDS, REFS).score < 95  # a real, non-degenerate value


CHRF_SETTINGS = [dict(), dict(word_order=2), dict(eps_smoothing=True), dict(lowercase=True),
                 dict(whitespace=True), dict(char_order=4, beta=1)]


@pytest.mark.parametrize("kwargs", CHRF_SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_chrf_parity_with_sacrebleu(kwargs):
    import sacrebleu

    rng = random.Random(2)
    multi = [[REFS[i]] + [REFS[j] for j in rng.sample(range(len(REFS)), rng.randint(0, 2))]
             for i in range(len(REFS))]
    corpora = [(PREDS, [[r] for r in REFS]), (PREDS[:25], [[r] for r in REFS[:25]]),
               (PREDS, multi), ([""], [[""]]), (["abc"], [[""]])]
    for i in range(len(HANDWRITTEN)):  # every hand-written pair on its own
        corpora.append(([PREDS[i]], [[REFS[i]]]))
    for preds, refs in corpora:
        expected = sacrebleu.CHRF(**kwargs)
        result = expected.corpus_score(preds, _sacrebleu_refs(refs))
        ours = metrics.chrf(preds, refs, **kwargs)
        assert ours.score == pytest.approx(result.score, abs=1e-6), (preds[:2], refs[:2])
        assert ours.signature == str(expected.get_signature())


# ---------------------------------------------------------------------------------------
# Classification, JSON, diversity
# ---------------------------------------------------------------------------------------


def test_classification_matches_scikit_learn():
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = ["billing", "bug", "feature", "other"]
    rng = random.Random(3)
    refs = [rng.choice(labels) for _ in range(200)]
    preds = [r if rng.random() < 0.6 else rng.choice(labels + ["no idea", "Bug"]) for r in refs]
    ours = metrics.classification_scores(preds, refs, labels, normalize=False)
    assert ours["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    p, r, f, _ = precision_recall_fscore_support(refs, preds, labels=labels, average="macro",
                                                 zero_division=0)
    assert (ours["macro_precision"], ours["macro_recall"], ours["macro_f1"]) == pytest.approx((p, r, f))
    assert ours["invalid_rate"] == pytest.approx(sum(x not in labels for x in preds) / 200)
    # normalisation makes "Bug" count as "bug"
    normalized = metrics.classification_scores(preds, refs, labels)
    assert normalized["accuracy"] >= ours["accuracy"]
    with pytest.raises(ValueError, match="not in the label set"):
        metrics.classification_scores(["a"], ["zzz"], labels=["a", "b"])


def test_json_metrics():
    ref = {"name": "Ada Lovelace", "year": 1815, "tags": ["math", "poetry"], "alive": False}
    assert metrics.is_valid_json(' {"a": 1} ')
    assert not metrics.is_valid_json('```json\n{"a": 1}\n```')
    assert not metrics.is_valid_json("")
    assert metrics.json_field_accuracy(
        '{"name": "Ada Lovelace", "year": 1815.0, "tags": ["math", "poetry"], "alive": false}', ref) == 1.0
    assert metrics.json_field_accuracy('{"name": "Ada Lovelace", "year": "1815", "extra": 1}', ref) == 0.25
    assert metrics.json_field_accuracy('{"alive": 0, "tags": ["poetry", "math"]}', ref) == 0.0
    assert metrics.json_field_accuracy('[1, 2]', ref) == 0.0
    assert metrics.json_field_accuracy('not json', '{"a": 1}') == 0.0
    assert metrics.json_field_accuracy('{}', '{}') == 1.0
    with pytest.raises(ValueError, match="reference is not valid JSON"):
        metrics.json_field_accuracy('{}', '{broken')


def test_distinct_n_and_repetition():
    assert metrics.distinct_n(["the cat", "the dog"], n=1) == 0.75
    assert metrics.distinct_n(["same answer"] * 10, n=2) == pytest.approx(0.1)
    assert metrics.distinct_n(["", "a"], n=2) == 0.0
    assert metrics.repetition_rate(["a b a b a b", "one two three four"], n=2) == pytest.approx(0.3)
    looping = "I think that " * 10
    assert metrics.repetition_rate([looping]) > 0.8
    assert metrics.repetition_rate(["every word here is new"]) == 0.0


# ---------------------------------------------------------------------------------------
# Language-model metrics on the tiny model
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny64():
    from ftlab import load_model

    model, tok = load_model("tiny", device="cpu")
    # float64 so both sides agree to rounding; any difference left is a difference in definition
    return model.double().eval(), tok


def transformers_doc_loop(model, input_ids, max_length, stride, fix_weighting=False):
    """The strided perplexity loop from the transformers docs ("Perplexity of fixed-length
    models"), returning (nll_sum, n_tokens) so texts can be pooled.

    The docs weigh each window's mean loss by (#unmasked labels - 1). That is right for the
    first window, whose first label cannot be predicted, but every later window starts with
    a masked label, so its loss already averages over all its unmasked labels and the docs
    count one token too few. ``fix_weighting`` counts the labels that were really scored.
    """
    seq_len = input_ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        window = input_ids[:, begin_loc:end_loc]
        target_ids = window.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(window, labels=target_ids).loss
        if fix_weighting:
            num_loss_tokens = int((target_ids[:, 1:] != -100).sum())
        else:
            num_loss_tokens = int((target_ids != -100).sum()) - target_ids.size(0)
        nll_sum += float(loss) * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


PPL_TEXTS = ["", "...", "!?", "Hello world.", "Café crème à Zürich — naïve façade.",
             "東京は日本の首都です。Москва — столица России. 🍕🙂",
             "The quick brown fox jumps over the lazy dog. " * 6,
             " ".join(p for p, _ in CORPUS[30:36]).strip()]
LONG_TEXT = PPL_TEXTS[-3] + "Москва — столица России. Café crème!"


def test_perplexity_matches_transformers_doc_loop(tiny64):
    model, tok = tiny64
    long_ids = tok(LONG_TEXT, return_tensors="pt").input_ids
    assert long_ids.size(1) > 60
    # (1) one window, and (2) disjoint windows: the documented loop is exact here
    for max_length, stride in [(4096, 4096), (24, 24)]:
        nll, n = transformers_doc_loop(model, long_ids, max_length, stride)
        ours = metrics.perplexity(model, tok, [LONG_TEXT],
                                  max_length=max_length, stride=stride, return_details=True)
        assert ours["n_tokens"] == n
        assert ours["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-6)
    # (3) overlapping windows: equal to the documented loop once it weighs windows by the
    # tokens they really score; the loop as printed in the docs is slightly off
    for max_length, stride in [(32, 16), (20, 7), (17, 16)]:
        nll, n = transformers_doc_loop(model, long_ids, max_length, stride, fix_weighting=True)
        ours = metrics.perplexity(model, tok, [LONG_TEXT],
                                  max_length=max_length, stride=stride, return_details=True)
        assert ours["n_tokens"] == n == long_ids.size(1) - 1  # every token but the first, once
        assert ours["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-6)
        nll_doc, n_doc = transformers_doc_loop(model, long_ids, max_length, stride)
        assert n_doc < n and math.exp(nll_doc / n_doc) != pytest.approx(ours["perplexity"], rel=1e-9)


def test_perplexity_is_token_weighted_over_a_varied_corpus(tiny64):
    model, tok = tiny64
    nll_sum = n_tokens = 0
    for text in PPL_TEXTS:
        ids = tok(text, return_tensors="pt").input_ids
        if ids.size(1) >= 2:
            nll, n = transformers_doc_loop(model, ids, 16, 16 if ids.size(1) <= 16 else 8,
                                           fix_weighting=True)
            nll_sum, n_tokens = nll_sum + nll, n_tokens + n
    ours = metrics.perplexity(model, tok, PPL_TEXTS, max_length=16, stride=8, batch_size=3,
                              return_details=True, progress=False)
    assert ours["n_tokens"] == n_tokens
    assert ours["perplexity"] == pytest.approx(math.exp(nll_sum / n_tokens), rel=1e-6)
    # batching and padding change nothing
    one_by_one = metrics.perplexity(model, tok, PPL_TEXTS, max_length=16, stride=8, batch_size=1,
                                    progress=False)
    assert one_by_one == pytest.approx(ours["perplexity"], rel=1e-9)
    with pytest.raises(ValueError, match="no scorable tokens"):
        metrics.perplexity(model, tok, ["", ""])
    with pytest.raises(ValueError, match="stride"):
        metrics.perplexity(model, tok, ["abc"], max_length=8, stride=9)


def test_mean_token_accuracy(tiny64):
    model, tok = tiny64
    ids = tok(["Hello there, how are you today?"], return_tensors="pt").input_ids
    labels = ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        logits = model(ids).logits
    hits = total = 0
    for t in range(ids.size(1) - 1):
        if labels[0, t + 1] != -100:
            total += 1
            hits += int(logits[0, t].argmax() == labels[0, t + 1])
    assert metrics.mean_token_accuracy(logits, labels) == hits / total
    # a model that is right everywhere scores 1.0
    perfect = torch.nn.functional.one_hot(torch.roll(ids, -1, 1), logits.size(-1)).double()
    assert metrics.mean_token_accuracy(perfect, labels) == 1.0
    with pytest.raises(ValueError, match="no trained positions"):
        metrics.mean_token_accuracy(logits, torch.full_like(labels, -100))


# ---------------------------------------------------------------------------------------
# Semantic similarity (loads all-MiniLM-L6-v2 once, about a second)
# ---------------------------------------------------------------------------------------


def test_semantic_similarity_offline_minilm():
    sims = metrics.semantic_similarity(
        ["The capital of France is Paris.", "The capital of France is Paris.", "I like trains."],
        ["The capital of France is Paris.", "Paris is France's capital city.",
         "Paris is France's capital city."])
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[1] > 0.7 > 0.3 > sims[2]
    assert metrics.load_embedding_model() is metrics.load_embedding_model()  # cached

"""Notebook 09's building blocks: the exercise agrees with ftlab.data, and plain text trains every token."""

from ftlab.data import collate, jaccard, load_course_data, near_duplicate_pairs, shingles, tokenize_dataset
from ftlab.exercises import EXERCISES, load_all
from ftlab.exercises.nb09_continued_pretraining import JACCARD_A, JACCARD_B
from ftlab.models import load_tokenizer
from ftlab.training import count_trained_tokens


def test_shingle_exercise_matches_ftlab_data():
    load_all()
    assert EXERCISES["cpt.shingle_jaccard"].solution() == jaccard(shingles(JACCARD_A), shingles(JACCARD_B)) == 0.5


def test_plain_text_trains_every_token_but_each_documents_first():
    tok = load_tokenizer("tiny")
    docs = load_course_data("domain_corpus", limit=4)
    examples = tokenize_dataset(docs, tok, verbose=False)
    assert all(e["labels"] == e["input_ids"] and e["input_ids"][-1] == tok.eos_token_id for e in examples)
    batch = collate(examples, pad_token_id=tok.pad_token_id)
    assert count_trained_tokens(batch["labels"]) == sum(len(e["input_ids"]) - 1 for e in examples)


def test_the_domain_corpus_holds_the_near_duplicates_notebook_09_teaches_with():
    texts = [r["text"] for r in load_course_data("domain_corpus")]
    pairs = near_duplicate_pairs(texts, 0.8)
    assert pairs and all(sim >= 0.8 for _, _, sim in pairs)

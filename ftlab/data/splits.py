"""Train / validation / test splits that keep copies together, finding test records leaked into training,
and a test sample drawn evenly across tasks.

Example:
    >>> recs = [{"text": f"fact {i} is true"} for i in range(20)] * 2
    >>> find_leaks(recs[:20], recs[20:])[:1]
    [(0, 0, 1.0)]
"""

from __future__ import annotations

import random

from ftlab.data.dedupe import _canonical_view, duplicate_groups, near_duplicate_pairs, record_text


class Splits(tuple):
    """``(train, val, test)``; unpacks like a tuple and also has ``.train``, ``.val``, ``.test``, ``.report``."""

    def __new__(cls, train, val, test, report=""):
        self = super().__new__(cls, (train, val, test))
        self.report = report
        return self

    train = property(lambda self: self[0])
    val = property(lambda self: self[1])
    test = property(lambda self: self[2])

    def __repr__(self):
        return f"Splits(train={len(self[0])}, val={len(self[1])}, test={len(self[2])}) - {self.report}"


def split_records(records, val_fraction=0.1, test_fraction=0.1, seed=0, dedupe=True, near_threshold=0.8) -> Splits:
    """Deterministic train / validation / test split that keeps copies of an example together.

    With ``dedupe=True`` (default), exact and near copies (``duplicate_groups``) form one group,
    and a whole group goes to a single split: a test question can then never have a copy in
    training. Nothing is dropped; groups are shuffled with ``seed`` and fill test, then validation,
    then training (a group too big for the space left goes to training). Within each split the
    records keep their input order.

    Example:
        >>> recs = [{"text": f"record number {i} about topic {i % 7}"} for i in range(50)]
        >>> train, val, test = split_records(recs, 0.1, 0.2, seed=1)
        >>> len(train), len(val), len(test)
        (35, 5, 10)
    """
    records = list(records)
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError("need 0 <= val_fraction, test_fraction and val_fraction + test_fraction < 1")
    groups = duplicate_groups(records, threshold=near_threshold) if dedupe else [[i] for i in range(len(records))]
    random.Random(seed).shuffle(groups)
    n_test, n_val = round(len(records) * test_fraction), round(len(records) * val_fraction)
    test, val, train = [], [], []
    for g in groups:
        if len(test) + len(g) <= n_test:
            test += g
        elif len(val) + len(g) <= n_val:
            val += g
        else:
            train += g
    n_grouped = sum(len(g) for g in groups if len(g) > 1)
    report = (f"{len(records)} records -> train {len(train)}, val {len(val)}, test {len(test)} (seed {seed}); "
              + (f"{n_grouped} records in {sum(len(g) > 1 for g in groups)} duplicate groups kept within one split"
                 if dedupe else "no de-duplication (copies may leak across splits)"))
    pick = lambda idx: [records[i] for i in sorted(idx)]  # noqa: E731
    return Splits(pick(train), pick(val), pick(test), report)


def find_leaks(train, test, threshold=0.8) -> list[tuple[int, int, float]]:
    """Test records with an exact or near copy in training: ``(test_index, train_index, similarity)``.

    Example:
        >>> find_leaks([{"text": "the cat sat on the mat"}], [{"text": "The cat sat on the mat."}])
        [(0, 0, 1.0)]
    """
    test, train = _canonical_view(test), _canonical_view(train)
    return near_duplicate_pairs([record_text(r) for r in test], threshold, other=[record_text(r) for r in train])


def leakage_demo(records, test_fraction=0.2, seed=0, threshold=0.8) -> dict:
    """Compare a naive random split with ``split_records`` by counting test records that leak.

    Returns ``{"naive": leaking test records, "deduped": leaking test records, "examples": [...]}``;
    ``examples`` shows up to three leaking (test, train) pairs of the naive split.

    Example:
        >>> recs = [{"text": f"fact {i} is true"} for i in range(20)] * 2
        >>> out = leakage_demo(recs, seed=0)
        >>> out["naive"] > 0, out["deduped"]
        (True, 0)
    """
    records = list(records)
    naive = split_records(records, 0.0, test_fraction, seed=seed, dedupe=False)
    clean = split_records(records, 0.0, test_fraction, seed=seed, dedupe=True, near_threshold=threshold)
    naive_leaks = find_leaks(naive.train, naive.test, threshold)
    clean_leaks = find_leaks(clean.train, clean.test, threshold)
    examples = [(record_text(naive.test[i])[:80], record_text(naive.train[j])[:80], s) for i, j, s in naive_leaks[:3]]
    return {"naive": len({i for i, _, _ in naive_leaks}), "deduped": len({i for i, _, _ in clean_leaks}), "examples": examples}


def sample_test_records(records, n: int, seed: int = 0) -> list[dict]:
    """``n`` records, as evenly split across tasks as possible, drawn with a seeded RNG."""
    by_task = {}
    for r in records:
        by_task.setdefault(r.get("task"), []).append(r)
    rng = random.Random(seed)
    tasks = sorted(by_task, key=str)
    picked = []
    for i, task in enumerate(tasks):
        k = n // len(tasks) + (1 if i < n % len(tasks) else 0)
        picked += rng.sample(by_task[task], min(k, len(by_task[task])))
    rng.shuffle(picked)
    return picked

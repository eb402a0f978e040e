"""Finding exact and near copies among records (word-3-gram Jaccard similarity) and dropping them.

Example:
    >>> duplicate_groups([{"text": "the cat sat on the mat"}, {"text": "The cat sat on the mat!"}])
    [[0, 1]]
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections import Counter

from ftlab.data.records import load_records


def record_text(record) -> str:
    """The text that identifies a record for de-duplication: user and assistant turns (or the text).

    System prompts are left out: many datasets share one, and it would make every pair look alike.
    """
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"] if m.get("role") != "system")
    return str(record.get("text", ""))


def normalize_text(text: str) -> str:
    """Lower case, punctuation -> spaces, runs of whitespace -> one space.

    Example:
        >>> normalize_text("  Hello,   WORLD!! ")
        'hello world'
    """
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def shingles(text: str, n: int = 3) -> frozenset:
    """The set of word ``n``-grams of the normalised text (a short text is one shingle).

    Example:
        >>> sorted(shingles("a b c d"))
        ['a b c', 'b c d']
    """
    words = normalize_text(text).split()
    if len(words) <= n:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a & b| / |a | b| - 1.0 for identical sets, 0.0 for disjoint ones."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicate_pairs(texts, threshold=0.8, other=None) -> list[tuple[int, int, float]]:
    """All pairs of texts whose word-3-gram Jaccard similarity is at least ``threshold``.

    With ``other``, pairs ``(i, j, sim)`` link ``texts[i]`` to ``other[j]`` (e.g. test vs train);
    without it, pairs ``i < j`` within ``texts``.

    This is exact, not sampled (unlike MinHash): it uses *prefix filtering*. Order every set's
    shingles from rarest to commonest; two sets with Jaccard >= t must share one of the first
    ``len - ceil(t * len) + 1`` shingles of each set. Rare shingles have short posting lists, so
    only a few candidate pairs need the full Jaccard computation.

    Example:
        >>> near_duplicate_pairs(["the cat sat on the mat", "The cat sat on the mat!", "dogs bark"])
        [(0, 1, 1.0)]
    """
    sets_a = [shingles(t) for t in texts]
    sets_b = [shingles(t) for t in other] if other is not None else sets_a
    freq = Counter(s for group in ((sets_a, sets_b) if other is not None else (sets_a,)) for x in group for s in x)
    rank = lambda s: (freq[s], zlib.crc32(s.encode()), s)  # noqa: E731  rarest first, deterministic

    def prefix(x):
        ordered = sorted(x, key=rank)
        return ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1]

    index: dict[str, list[int]] = {}
    for j, y in enumerate(sets_b):
        for s in prefix(y):
            index.setdefault(s, []).append(j)
    pairs = []
    for i, x in enumerate(sets_a):
        candidates = {j for s in prefix(x) for j in index.get(s, ())}
        for j in sorted(candidates):
            if other is None and j <= i:
                continue
            y = sets_b[j]
            if min(len(x), len(y)) < threshold * max(len(x), len(y)):
                continue  # sizes too different to reach the threshold
            sim = jaccard(x, y)
            if sim >= threshold:
                pairs.append((i, j, round(sim, 4)))
    return pairs


def _exact_key(record) -> str:
    if "messages" in record:
        return json.dumps([[m["role"], m["content"]] for m in record["messages"]], ensure_ascii=False)
    return "text:" + str(record.get("text"))


def _canonical_view(records) -> list[dict]:
    """Canonical versions of ``records`` (raw ones, e.g. Alpaca triples, are converted) for comparing them."""
    records = list(records)
    if all(isinstance(r, dict) and ("messages" in r or "text" in r) for r in records):
        return records
    return load_records(records, validate=False, verbose=False)


def duplicate_groups(records, near=True, threshold=0.8) -> list[list[int]]:
    """Group record indices so that exact and near copies share a group (singletons included).

    Example:
        >>> recs = [{"text": "a b c d e"}, {"text": "x y z"}, {"text": "A b c d e."}]
        >>> duplicate_groups(recs)
        [[0, 2], [1]]
    """
    records = _canonical_view(records)
    parent = list(range(len(records)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first: dict[str, int] = {}
    for i, r in enumerate(records):
        key = _exact_key(r)
        if key in first:
            union(first[key], i)
        else:
            first[key] = i
    if near:
        for i, j, _ in near_duplicate_pairs([record_text(r) for r in records], threshold):
            union(i, j)
    groups: dict[int, list[int]] = {}
    for i in range(len(records)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())


def drop_duplicates(records, near=True, threshold=0.8, verbose=True) -> tuple[list[dict], int]:
    """Keep the first record of every group of exact (and, with ``near``, near) copies.

    Returns ``(kept, n_dropped)``; nothing is dropped unless you call this.

    Example:
        >>> kept, n = drop_duplicates([{"text": "same"}, {"text": "same"}, {"text": "other"}], verbose=False)
        >>> len(kept), n
        (2, 1)
    """
    groups = duplicate_groups(records, near=near, threshold=threshold)
    keep = sorted(g[0] for g in groups)
    kept = [records[i] for i in keep]
    n_dropped = len(records) - len(kept)
    if verbose:
        print(f"[ftlab] drop_duplicates: kept {len(kept)}, dropped {n_dropped} {'exact/near' if near else 'exact'} copies")
    return kept, n_dropped

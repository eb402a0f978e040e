"""Part 5: deployment. Merge an adapter, export to GGUF and quantise, prove the answers survived,
write a model card, serve with ``transformers serve`` behind an OpenAI-compatible API, load-test it,
and monitor what it answers.
"""

from ftlab._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "SUPPORTED_ARCHITECTURES": "gguf_export", "GGUF_TYPES": "gguf_export", "QUANT_TYPES": "gguf_export",
    "FLOAT_TYPES": "gguf_export", "BITS_PER_WEIGHT": "gguf_export", "GGUFExportError": "gguf_export",
    "check_architecture": "gguf_export", "gguf_size_bytes": "gguf_export", "permute_qk": "gguf_export",
    "tokenizer_metadata": "gguf_export", "export_gguf": "gguf_export", "read_gguf_summary": "gguf_export",
    "read_gguf_tensor": "gguf_export",
    "load_gguf": "roundtrip", "compare_logits": "roundtrip", "quantization_table": "roundtrip",
    "format_quantization_table": "roundtrip",
    "ServerError": "serving", "ModelServer": "serving", "port_is_free": "serving", "free_port": "serving",
    "chat_completion": "serving", "post_json": "serving",
    "chat_request_problem": "launch",
    "percentile": "loadtest", "run_load": "loadtest", "summarize": "loadtest", "format_load_table": "loadtest",
    "RequestLog": "monitor", "rolling": "monitor", "drift_report": "monitor",
    "render_model_card": "model_card", "write_model_card": "model_card",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

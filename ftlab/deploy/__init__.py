"""Part 5: deployment. Merge an adapter, export to GGUF and quantise, prove the answers survived (in
transformers and in llama.cpp itself), write a model card and an Ollama Modelfile, serve with
``transformers serve`` and ``llama_cpp.server`` behind OpenAI-compatible APIs, load-test them, and
monitor what the model answers.
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
    "render_model_card": "model_card", "write_model_card": "model_card", "load_frame": "loadtest",
    "LLAMA_CPP_AVAILABLE": "llamacpp", "llama_cpp_check": "llamacpp", "open_gguf": "llamacpp",
    "render_chat": "llamacpp", "compare_tokens": "llamacpp", "greedy_tokens": "llamacpp",
    "compare_greedy": "llamacpp", "compare_logits_llama": "llamacpp", "perplexity_llama": "llamacpp",
    "evaluate_llama": "llamacpp", "llama_doctor_check": "llamacpp",
    "LLAMA_FTYPES": "quantize", "PUBLISHED_LLAMA3_8B": "quantize", "PUBLISHED_SOURCE": "quantize",
    "published_table": "quantize", "quantize_gguf": "quantize", "tensor_types": "quantize",
    "type_summary": "quantize", "bits_per_weight": "quantize", "raw_tensor_bytes": "quantize",
    "LlamaCppServer": "llamacpp_server",
    "write_modelfile": "ollama", "read_modelfile": "ollama", "gguf_chat_metadata": "ollama",
    "render_modelfile_prompt": "ollama", "jinja_prompt": "ollama",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

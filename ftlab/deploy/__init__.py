"""Part 5: deployment. Merge an adapter, export to GGUF and quantise, prove the answers survived (in
transformers and in llama.cpp itself), write a model card and an Ollama Modelfile, serve with
``transformers serve`` and ``llama_cpp.server`` behind OpenAI-compatible APIs, load-test them, and
monitor what the model answers.
"""

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.deploy.gguf_export import (BITS_PER_WEIGHT, GGUFExportError, GGUF_TYPES, export_gguf, gguf_size_bytes,
                                      permute_qk, read_gguf_summary, read_gguf_tensor)
from ftlab.deploy.launch import chat_request_problem
from ftlab.deploy.llamacpp import (LLAMA_CPP_AVAILABLE, compare_greedy, compare_logits_llama, compare_tokens, evaluate_llama,
                                   greedy_tokens, render_chat,
                                   llama_cpp_check, open_gguf, perplexity_llama)
from ftlab.deploy.llamacpp_server import LlamaCppServer
from ftlab.deploy.loadtest import load_frame, percentile, run_load
from ftlab.deploy.model_card import render_model_card, write_model_card
from ftlab.deploy.monitor import RequestLog, drift_report, rolling
from ftlab.deploy.ollama import gguf_chat_metadata, jinja_prompt, read_modelfile, render_modelfile_prompt, write_modelfile
from ftlab.deploy.quantize import (PUBLISHED_SOURCE, bits_per_weight, published_table, quantize_gguf, raw_tensor_bytes,
                                   tensor_types, type_summary)
from ftlab.deploy.roundtrip import compare_logits, load_gguf, quantization_table
from ftlab.deploy.serving import ModelServer, ServerError, chat_completion, post_json

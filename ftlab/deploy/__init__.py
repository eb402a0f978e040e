"""Part 5: deployment. Merge an adapter, export to GGUF and quantise, prove the answers survived,
write a model card, serve with ``transformers serve`` behind an OpenAI-compatible API, load-test it,
and monitor what it answers.
"""

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.deploy.gguf_export import (BITS_PER_WEIGHT, GGUFExportError, GGUF_TYPES, export_gguf, gguf_size_bytes,
                                      permute_qk, read_gguf_summary, read_gguf_tensor)
from ftlab.deploy.launch import chat_request_problem
from ftlab.deploy.loadtest import format_load_table, percentile, run_load
from ftlab.deploy.model_card import render_model_card, write_model_card
from ftlab.deploy.monitor import RequestLog, drift_report, rolling
from ftlab.deploy.roundtrip import compare_logits, format_quantization_table, load_gguf, quantization_table
from ftlab.deploy.serving import ModelServer, ServerError, chat_completion, post_json

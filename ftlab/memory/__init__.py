"""Will it fit? Model architectures, the memory estimator (one function per phase of a training
step), hardware and advice, and the teaching views.
"""

from ftlab._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "GiB": "estimator", "MiB": "estimator", "DTYPE_BYTES": "estimator", "METHODS": "estimator",
    "OPTIMIZERS": "estimator", "QUANTIZATIONS": "estimator", "ATTENTIONS": "estimator",
    "LINEARS": "estimator", "NF4_BLOCK": "estimator", "DQ_BLOCK": "estimator",
    "OPT8_BLOCK": "estimator", "OPT8_MIN_SIZE": "estimator", "Architecture": "estimator",
    "ARCHITECTURES": "estimator", "get_architecture": "estimator", "Hardware": "estimator",
    "HARDWARE": "estimator", "MemoryItem": "estimator", "MemoryEstimate": "estimator",
    "estimate_memory": "estimator", "nf4_constant_bytes": "estimator",
    "nf4_bytes_per_parameter": "estimator", "cuda_overhead_items": "estimator",
    "estimate_inference_memory": "estimator", "Advice": "estimator", "advise": "estimator",
    "worked_example_7b": "estimator", "format_worked_example": "estimator", "cli_main": "estimator",
    "CATEGORY_COLORS": "viz", "plot_breakdown": "viz", "ExplorerState": "viz",
    "MemoryExplorer": "viz", "memory_panel": "viz",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

"""Will it fit? Model architectures, the memory estimator (one function per phase of a training
step), hardware and advice, and the teaching views.

Reading order: ``architectures`` (the numbers that decide memory), ``step`` (one training step's
settings), ``state`` (persistent: weights, adapters, gradients, optimizer states), ``forward`` (what
each layer saves, the loss buffers), ``timeline`` (forward, backward, optimizer step; the peak),
``estimator`` (:func:`estimate_memory` ties them together), then ``inference``, ``hardware``,
``advice``, ``cli`` and ``viz``. ``cuda`` names what a CUDA stack keeps alive beyond the CPU path
(with sources), ``published`` checks the estimator against PEFT's published GPU measurements, and
``gpu_check`` is ``make gpu-check``.
"""

from ftlab._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "GiB": "breakdown", "MiB": "breakdown", "MemoryItem": "breakdown", "MemoryEstimate": "breakdown",
    "cuda_overhead_items": "breakdown",
    "Architecture": "architectures", "ARCHITECTURES": "architectures", "get_architecture": "architectures",
    "LINEARS": "architectures",
    "Hardware": "hardware", "HARDWARE": "hardware",
    "DTYPE_BYTES": "step", "METHODS": "step", "OPTIMIZERS": "step", "QUANTIZATIONS": "step", "ATTENTIONS": "step",
    "NF4_BLOCK": "state", "DQ_BLOCK": "state", "OPT8_BLOCK": "state", "OPT8_MIN_SIZE": "state",
    "nf4_constant_bytes": "state", "nf4_bytes_per_parameter": "state",
    "estimate_memory": "estimator",
    "estimate_inference_memory": "inference",
    "Advice": "advice", "advise": "advice", "worked_example_7b": "advice", "format_worked_example": "advice",
    "cli_main": "cli",
    "sdpa_saved_bytes": "cuda", "dequant_buffer_bytes": "cuda", "kbit_training_extra_bytes": "cuda",
    "recompute_peak_bytes": "cuda", "after_step_bytes": "cuda", "reserved_bytes": "cuda",
    "fsdp_full_shard_per_gpu": "cuda", "compare_peft_metamathqa": "published",
    "CATEGORY_COLORS": "viz", "plot_breakdown": "viz", "ExplorerState": "viz",
    "MemoryExplorer": "viz", "memory_panel": "viz",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

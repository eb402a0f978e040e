"""Part 2: training. The loss, optimizers and schedules, the methods (full, freezing, LoRA, QLoRA,
NF4), the config, the loop, checkpoints and tracking.

Why ``training`` and not ``train``: ``ftlab.train`` is the function. A subpackage of that name would
replace it on ``ftlab`` as soon as it is imported.
"""

from ftlab._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "save_adapter": "adapters", "load_adapter": "adapters", "merge_adapters": "adapters",
    "merge_and_save": "adapters",
    "CHECKPOINT_DIR": "checkpoint", "PREFIX": "checkpoint", "CheckpointError": "checkpoint",
    "checkpoint_dir": "checkpoint", "list_checkpoints": "checkpoint",
    "latest_checkpoint": "checkpoint", "resolve_checkpoint": "checkpoint",
    "rng_state": "checkpoint", "set_rng_state": "checkpoint", "trainable_state_dict": "checkpoint",
    "save_checkpoint": "checkpoint", "prune_checkpoints": "checkpoint",
    "load_checkpoint": "checkpoint", "StopOnInterrupt": "checkpoint",
    "TrainConfig": "config", "TrainResult": "config",
    "TrainingDiverged": "loop", "train": "loop", "train_step": "loop", "evaluate_and_track": "loop",
    "IGNORE_INDEX": "loss", "causal_lm_loss": "loss", "next_token_targets": "loss",
    "count_trained_tokens": "loss", "accepts_logits_mask": "loss", "forward_loss": "loss",
    "evaluate_loss": "loss",
    "METHODS": "methods", "ADAPTER_METHODS": "methods", "prepare_model": "methods",
    "OPTIMIZERS": "optim", "SCHEDULES": "optim", "NO_DECAY_PATTERNS": "optim",
    "NO_DECAY_MODULES": "optim", "decay_parameter_names": "optim", "param_groups": "optim",
    "build_optimizer": "optim", "lr_multiplier": "optim", "lr_at": "optim",
    "build_scheduler": "optim",
    "decoder_layers": "parameters", "is_peft_model": "parameters", "is_quantized": "parameters",
    "num_virtual_tokens": "parameters", "count_parameters": "parameters",
    "parameter_table": "parameters",
    "quantize_model_nf4": "quantize", "dequantize_model": "quantize", "load_model_4bit": "quantize",
    "Run": "run", "setup_run": "run", "prepare_data": "run", "setup_model": "run",
    "announce": "run", "RunState": "run", "resume": "run", "save_state": "run", "finish": "run",
    "LOG_TARGETS": "tracking", "CSV_COLUMNS": "tracking", "RunLogger": "tracking",
    "read_history": "tracking", "read_tensorboard": "tracking", "in_notebook": "tracking",
    "progress_bar": "tracking", "format_postfix": "tracking", "LivePlot": "tracking",
    "Playground": "playground", "Settings": "playground", "SettingsError": "playground",
    "check_settings": "playground", "qlora_problem": "playground", "PLAYGROUND_METHODS": "playground",
    "PlaygroundPanel": "playground_panel",  # (ftlab.playground() opens one; here "playground" is the module)
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

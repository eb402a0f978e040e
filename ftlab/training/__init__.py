"""Part 2: training. The loss, optimizers and schedules, the methods (full, freezing, LoRA, QLoRA,
NF4), the config, the loop, checkpoints and tracking.

Why ``training`` and not ``train``: ``ftlab.train`` is the function. A subpackage of that name would
replace it on ``ftlab`` as soon as it is imported.
"""

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.training.adapters import load_adapter, merge_adapters, merge_and_save, save_adapter
from ftlab.training.config import TrainConfig
from ftlab.training.loop import TrainingDiverged, train
from ftlab.training.loss import (accepts_logits_mask, causal_lm_loss, count_trained_tokens, evaluate_loss,
                                 forward_loss, next_token_targets)
from ftlab.training.measure import measure_training_peak, step_peak_mb
from ftlab.training.methods import METHODS, prepare_model
from ftlab.training.optim import build_optimizer, build_scheduler, decay_parameter_names, lr_at
from ftlab.training.parameters import count_parameters, is_peft_model, num_virtual_tokens, parameter_table
from ftlab.training.quantize import dequantize_model, load_model_4bit, quantize_model_nf4
from ftlab.training.tracking import LivePlot, progress_bar, read_history, read_tensorboard

"""Part 5: alignment after SFT. Preference data, log-probabilities under the policy and the
reference, the DPO / IPO / ORPO / GRPO losses, verifiable rewards, GRPO sampling, and the training
loop they share with ``ftlab.train``.
"""

from ftlab._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "FIELDS": "preferences", "check_preference": "preferences", "load_preferences": "preferences",
    "tokenize_preference": "preferences", "tokenize_preferences": "preferences",
    "collate_preferences": "preferences", "split_pairs": "preferences",
    "token_logprobs": "logprobs", "sequence_logprobs": "logprobs", "reference_model": "logprobs",
    "reference_logprobs": "logprobs", "precompute_reference": "logprobs",
    "dpo_loss": "losses", "orpo_loss": "losses", "log1mexp": "losses", "group_advantages": "losses",
    "grpo_loss": "losses",
    "RewardError": "rewards", "json_reward": "rewards", "label_reward": "rewards", "format_reward": "rewards",
    "task_reward": "rewards", "length_reward": "rewards", "score_completions": "rewards",
    "grpo_prompts": "grpo", "sample_completions": "grpo", "completion_batch": "grpo", "grpo_step": "grpo", "grpo_batch_loss": "grpo",
    "train_grpo": "grpo",
    "implicit_margins": "evaluate", "kl_from_reference": "evaluate", "step_peak_mb": "evaluate",
    "LOSSES": "loop", "AlignConfig": "loop", "preference_loss": "loop", "step_indices": "loop",
    "run_steps": "loop", "train_preferences": "loop",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

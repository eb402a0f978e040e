"""Part 5: alignment after SFT. Preference data, log-probabilities under the policy and the
reference, the DPO / IPO / ORPO / GRPO losses, verifiable rewards, GRPO sampling, and the training
loop they share with ``ftlab.train``.
"""

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.align.evaluate import held_out_scores, implicit_margins, kl_from_reference, reference_distributions
from ftlab.align.grpo import completion_batch, grpo_prompts, sample_completions, train_grpo
from ftlab.align.logprobs import precompute_reference, reference_logprobs, sequence_logprobs, token_logprobs
from ftlab.align.loop import AlignConfig, preference_loss, train_preferences
from ftlab.align.losses import dpo_loss, group_advantages, grpo_loss, orpo_loss
from ftlab.align.preferences import collate_preferences, load_preferences, split_pairs, tokenize_preferences
from ftlab.align.reward_model import reward_model_from, score_answers, train_reward_model
from ftlab.align.rewards import RewardError, format_reward, length_reward, score_completions, task_reward

"""Numbers a refactor must not change: two short training histories (LoRA, full), estimates (the estimator, the
workshop plan, the budget's and the memory bench's translations of a config), metric values, and the alignment
histories (DPO, IPO, ORPO, GRPO).

    FTLAB_PROFILE=ci python scripts/same_numbers.py > after.txt     # diff against the same run before the change

Used for the layout refactor (#13: be9b383 before) and for the layers refactor (#22: b0c99d4 before); both
times the output before and after was identical.
"""
import json
import ftlab
from ftlab import TrainConfig, load_model, train, estimate_memory, load_course_data, tokenize_dataset

model, tok = load_model("tiny", seed=0)
data = load_course_data("instructions", "train", limit=32)
val = load_course_data("instructions", "validation", limit=8)
for method in ("lora", "full"):
    model, tok = load_model("tiny", seed=0)
    r = train(model, tok, data, val, config=TrainConfig(output_dir=f"/tmp/same-{method}", method=method, max_steps=4,
              batch_size=4, eval_every=2, progress=False, log_to=(), save_final=False))
    print(method, json.dumps([(h.get("loss"), h.get("val_loss"), h.get("grad_norm")) for h in r.history]))
e = estimate_memory("smollm2-135m-instruct", method="qlora", seq_len=512, batch_size=4)
print("estimate", e.total_bytes if hasattr(e, "total_bytes") else e)
from ftlab.evaluate import bleu, rouge, chrf, token_f1
print("metrics", bleu(["the cat sat on a mat"], ["the cat sat on the mat"]).score, rouge(["the cat sat"], ["a cat sat down"]), chrf(["hello there"], ["hello world"]).score, token_f1("in Paris, France", "Paris"))

# the three translations of a training config into estimator settings
from ftlab.budget import training_settings
examples = tokenize_dataset(data, tok, max_length=128, progress=False, verbose=False)
for method in ("lora", "full", "dora"):
    kw = training_settings(model, TrainConfig(method=method, batch_size=4, max_length=128), examples)
    print("budget", method, json.dumps(kw, sort_keys=True, default=str), estimate_memory(model, **kw).total_bytes)
from ftlab.workshop import notebook_peaks
for device in ("cpu", "dgx-spark"):
    print("workshop", device, json.dumps([(r["notebook"], r["heaviest_step"], r["peak_bytes"]) for r in notebook_peaks("ci", device)]))
from ftlab.bench.memory import CONFIGS, estimate_for
print("bench-memory", json.dumps([estimate_for(c, "cpu").total_bytes for c in CONFIGS
                                  if c.model == "tiny" and c.trained_fraction is None]))

# alignment (#22): DPO, IPO, ORPO and GRPO histories on the tiny model, timings left out
from ftlab.align import AlignConfig, grpo_prompts, length_reward, load_preferences, train_grpo, train_preferences
from ftlab.data import data_dir
TIMING = ("tokens_per_s", "peak_memory_mb", "elapsed_s")
prefs = load_preferences(data_dir() / "preferences.jsonl", limit=8)
common = dict(max_steps=3, batch_size=2, lr=1e-3, progress=False, log_to=(), save_final=False)
for loss, extra in (("dpo", {"label_smoothing": 0.1}), ("ipo", {"beta": 0.5}), ("orpo", {"grad_accum_steps": 2})):
    model, tok = load_model("tiny", seed=0)
    r = train_preferences(model, tok, prefs, AlignConfig(output_dir=f"/tmp/same-{loss}", loss=loss, **common, **extra))
    print(loss, json.dumps([{k: v for k, v in sorted(h.items()) if k not in TIMING} for h in r.history]))
model, tok = load_model("tiny", seed=0)
r = train_grpo(model, tok, grpo_prompts(data[:4]), [length_reward], AlignConfig(output_dir="/tmp/same-grpo", loss="grpo",
               max_new_tokens=8, num_generations=3, **common))
print("grpo", json.dumps([{k: v for k, v in sorted(h.items()) if k not in TIMING} for h in r.history]), r.samples)

"""Numbers a refactor must not change: two short training histories (LoRA, full), an estimate, metric values.

    FTLAB_PROFILE=ci python scripts/same_numbers.py > after.txt     # diff against the same run before the change

Used for the layout refactor (#13): the output before (be9b383) and after was identical.
"""
import json, sys
import ftlab
from ftlab import TrainConfig, load_model, train, estimate_memory, load_course_data
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

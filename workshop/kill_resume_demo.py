"""Show the instructor that a participant's kernel killed mid-training loses only the steps since
the last checkpoint: the same training cell, run again with ``resume_from="latest"``, carries on.

    FTLAB_PROFILE=ci .venv/bin/python workshop/kill_resume_demo.py      (about a minute on a CPU)

A real Jupyter kernel runs a training cell that saves a checkpoint every 2 steps; once step 4's
checkpoint is on disk the kernel is killed with SIGKILL (what the out-of-memory killer, a memory
limit or "Kernel > Shut down" in a hurry do: no chance to save). A fresh kernel runs the cell again
with ``resume_from="latest"``; the run continues from step 4 and ends at the same loss as a run that
was never interrupted (the data order and the optimizer state are in the checkpoint).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import start_new_kernel

CELL = """
import json, ftlab
from ftlab.data import load_course_data
profile = ftlab.get_profile()
model, tok = ftlab.load_model(profile.model_name)
records = load_course_data("instructions", "train", limit=24)
config = ftlab.TrainConfig(method="full", lr=1e-3, max_steps=8, batch_size=2, max_length=profile.max_length,
                           save_every=2, keep_last=2, save_final=False, log_to=(), seed=0, progress=False,
                           output_dir={out!r}, resume_from={resume!r})
ran = []  # the steps this kernel actually computed
result = ftlab.train(model, tok, records, config=config, callbacks=[lambda r: ran.append(r["step"]), {slow}])
print("RESULT", json.dumps({{"steps": ran,
                            "final_loss": result.train_history[-1]["loss"]}}))
"""
SLOW = "lambda record: __import__('time').sleep(1.5)"  # room to kill between checkpoints


def run_cell(code: str, timeout: float = 300, kill_when=None) -> str:
    """Run ``code`` in a fresh kernel; return its stdout. ``kill_when()`` true -> SIGKILL the kernel."""
    km, kc = start_new_kernel(kernel_name="python3")
    out, msg_id, deadline = [], kc.execute(code), time.time() + timeout
    try:
        while time.time() < deadline:
            if kill_when and kill_when():
                os.kill(km.provisioner.process.pid, signal.SIGKILL)
                return "".join(out) + "\n[kernel killed with SIGKILL]"
            try:
                msg = kc.get_iopub_msg(timeout=0.5)
            except Exception:  # queue.Empty: nothing yet
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise RuntimeError("\n".join(msg["content"]["traceback"]))
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)
        raise TimeoutError(f"cell did not finish within {timeout} s")
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


def result_of(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])


def main() -> int:
    os.environ.setdefault("FTLAB_PROFILE", "ci")
    with tempfile.TemporaryDirectory() as tmp:
        straight, resumed = Path(tmp, "straight"), Path(tmp, "resumed")
        t0 = time.time()
        whole = result_of(run_cell(CELL.format(out=str(straight), resume=None, slow="lambda r: None")))
        print(f"uninterrupted run: steps {whole['steps']}, final loss {whole['final_loss']:.4f}")

        step4 = resumed / "checkpoints" / "step-000004"  # renamed into place only when complete
        killed = run_cell(CELL.format(out=str(resumed), resume=None, slow=SLOW), kill_when=step4.is_dir)
        time.sleep(1)
        print(f"first kernel: {killed.strip().splitlines()[-1]}; checkpoints on disk: "
              f"{sorted(p.name for p in (resumed / 'checkpoints').iterdir())}")
        again = result_of(run_cell(CELL.format(out=str(resumed), resume="latest", slow="lambda r: None")))
        print(f"new kernel, same cell with resume_from='latest': computes steps {again['steps']}, "
              f"final loss {again['final_loss']:.4f}")
        same = abs(again["final_loss"] - whole["final_loss"]) < 1e-4
        print(f"same final loss as the uninterrupted run: {same}  ({time.time() - t0:.0f} s in all)")
        return 0 if same and again["steps"][0] > 1 else 1


if __name__ == "__main__":
    sys.exit(main())

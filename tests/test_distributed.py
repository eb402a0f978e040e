"""The same loop under ``accelerate launch``: two CPU processes (DDP over gloo) with batch 2 each give the
same run as one process with batch 4 - same global batch, same trained-token normalisation."""

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ftlab.models import load_tokenizer
from ftlab.training import TrainConfig, train

from test_training import masked_examples, small_model

TESTS = Path(__file__).parent

WORKER = """
import sys
import torch
sys.path.insert(0, {tests!r})
from accelerate import PartialState
from ftlab.models import load_tokenizer
from ftlab.training import TrainConfig, train
from test_training import masked_examples, small_model

model = small_model(seed=0)
config = TrainConfig(**{config!r})
result = train(model, load_tokenizer("tiny"), masked_examples(32, seed=4), config=config)
if PartialState().is_main_process:
    torch.save({{"history": result.history, "params": dict(model.named_parameters())}}, {out!r})
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    common = dict(method="full", grad_accum_steps=2, max_steps=3, lr=1e-3, weight_decay=0.1, warmup_steps=1,
                  max_grad_norm=1.0, progress=False, log_to=("jsonl",), save_final=True, max_length=64, save_every=3)
    # two processes: batch 2 per process x 2 accumulation x 2 processes = 8 examples per step
    two = dict(common, batch_size=2, output_dir=str(tmp_path / "two"))
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(tests=str(TESTS), config=two, out=str(tmp_path / "two.pt"))))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " x 2, " in proc.stdout  # really two processes
    two_run = torch.load(tmp_path / "two.pt", weights_only=False)

    # one process: batch 4 x 2 accumulation = the same 8 examples per step
    model = small_model(seed=0)
    one = train(model, load_tokenizer("tiny"), masked_examples(32, seed=4),
                config=TrainConfig(**dict(common, batch_size=4, output_dir=str(tmp_path / "one"))))

    assert [h["step"] for h in two_run["history"]] == [1, 2, 3]
    for a, b in zip(one.history, two_run["history"]):
        assert a["step_tokens"] == b["step_tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-5), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), (a, b)
    for name, p in model.named_parameters():
        torch.testing.assert_close(two_run["params"][name], p.detach(), rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")
    # the main process wrote the checkpoint (with both processes' RNG states) and the final model
    rngs = torch.load(tmp_path / "two" / "checkpoints" / "step-000003" / "rng.pt", weights_only=False)
    assert len(rngs) == 2
    assert (tmp_path / "two" / "final" / "config.json").exists()

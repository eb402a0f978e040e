"""FSDP full sharding on two CPU processes (gloo) equals one process, within float tolerance.

Why torch's ``fully_shard`` directly and not ``accelerate launch --config_file configs/accelerate_fsdp.yaml``
as the DDP test does: accelerate turns FSDP on only for accelerator process groups. Its
``AcceleratorState`` (accelerate/state.py) sets ``DistributedType.FSDP`` only when the launch is
MULTI_GPU/NPU/XPU/...; a CPU launch becomes ``MULTI_CPU``, i.e. DDP over gloo, with the FSDP config
silently ignored (checked with accelerate 1.x: the worker reports ``MULTI_CPU``). torch itself runs
FSDP2 on CPU over gloo, so this test applies the same wrapping the FSDP config asks for
(``fully_shard`` per ``LlamaDecoderLayer``, then the root; ``reshard_after_forward=True``, the default)
to the course's small model and checks that two ranks with half a batch each train exactly like one
process with the whole batch: the same losses and the same parameters after three AdamW steps.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_distributed import free_port

TESTS = Path(__file__).parent

WORKER = """
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from torch.distributed.fsdp import fully_shard
from test_training import small_model

world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
if world > 1:
    dist.init_process_group("gloo")
torch.manual_seed(0)
model = small_model(seed=0)
if world > 1:
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
mine = ids[rank * 4 // world:(rank + 1) * 4 // world]
losses = []
for _ in range(3):
    loss = model(input_ids=mine, labels=mine).loss   # equal rows per rank: the mean of means is the mean
    loss.backward()
    opt.step()
    opt.zero_grad()
    loss = loss.detach().clone()
    if world > 1:
        dist.all_reduce(loss)
    losses.append(float(loss) / world)
params = {{n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in model.named_parameters()}}
sharded = [type(p).__name__ for p in model.parameters()]
if rank == 0:
    torch.save({{"losses": losses, "params": params, "sharded": sharded}}, {out!r})
if world > 1:
    dist.destroy_process_group()
"""


def _run(tmp_path, world: int) -> dict:
    out = tmp_path / f"w{world}.pt"
    script = tmp_path / f"worker{world}.py"
    script.write_text(textwrap.dedent(WORKER.format(tests=str(TESTS), out=str(out))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script)]
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_fsdp_two_cpu_processes_equal_one(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert set(two["sharded"]) == {"DTensor"}   # really sharded: every parameter is a DTensor shard
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    for name, p in one["params"].items():
        torch.testing.assert_close(two["params"][name], p, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")

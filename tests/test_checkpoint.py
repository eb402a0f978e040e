"""Checkpoints: atomic writes survive a crash (an exception and a real kill) mid-save; load restores
weights, optimizer, scheduler and RNGs; keep-last pruning; clear errors for mismatched models."""

import subprocess
import sys
import textwrap

import pytest
import torch

from ftlab.training import checkpoint as ckpt


def tiny_setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    model[1].weight.requires_grad_(False)  # a frozen parameter: must not be stored
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def one_step(model, opt, sched):
    loss = model(torch.randn(4, 8)).pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_roundtrip_restores_everything(tmp_path):
    model, opt, sched = tiny_setup()
    one_step(model, opt, sched)
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, sched, state={"data_position": {"epoch": 0, "index": 3}})
    after_save = torch.rand(3)  # what the RNG draws next
    model2, opt2, sched2 = tiny_setup(seed=1)
    state = ckpt.load_checkpoint(path, model2, opt2, sched2)
    assert state["step"] == 1 and state["data_position"] == {"epoch": 0, "index": 3}
    assert torch.equal(torch.rand(3), after_save)  # RNG restored
    assert sched2.get_last_lr() == sched.get_last_lr()
    # The next step from the original and from the restored copy is identical (optimizer moments restored).
    for m, o, s in [(model, opt, sched), (model2, opt2, sched2)]:
        torch.manual_seed(5)
        one_step(m, o, s)
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        if p.requires_grad:
            assert torch.equal(p, q), n


def test_frozen_parameters_are_not_stored(tmp_path):
    from safetensors.torch import load_file

    model, opt, sched = tiny_setup()
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, sched)
    assert sorted(load_file(str(path / "trainable.safetensors"))) == ["0.bias", "0.weight", "1.bias", "2.bias", "2.weight"]


def test_exception_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = tiny_setup()
    good = ckpt.save_checkpoint(tmp_path, 1, model, opt, sched)
    one_step(model, opt, sched)
    real_save = torch.save

    def crash_on_optimizer(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            real_save(obj, f, *a, **k)
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", crash_on_optimizer)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_checkpoint(tmp_path, 2, model, opt, sched)
    monkeypatch.undo()
    assert ckpt.list_checkpoints(tmp_path) == [good]  # the half-written step 2 is invisible
    assert any(p.name.startswith(".tmp-") for p in ckpt.checkpoint_dir(tmp_path).iterdir())
    ckpt.load_checkpoint(good, *tiny_setup())  # and the old one still loads
    ckpt.save_checkpoint(tmp_path, 2, model, opt, sched)  # the next save cleans the leftovers up
    assert not any(p.name.startswith(".tmp-") for p in ckpt.checkpoint_dir(tmp_path).iterdir())


def test_process_killed_mid_save_keeps_previous_checkpoint(tmp_path):
    """A real kill (os._exit: no exception handlers, no cleanup) after half of the files are written."""
    script = textwrap.dedent(f"""
        import os, torch
        from ftlab.training import checkpoint as ckpt
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 4)
        opt = torch.optim.AdamW(model.parameters())
        ckpt.save_checkpoint({str(tmp_path)!r}, 1, model, opt)
        model(torch.randn(2, 4)).sum().backward(); opt.step()
        real_save = torch.save
        def killed(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            os._exit(9)      # killed right after writing optimizer.pt
        ckpt.torch.save = killed
        ckpt.save_checkpoint({str(tmp_path)!r}, 2, model, opt)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    found = ckpt.list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step-000001"]
    model = torch.nn.Linear(4, 4)
    assert ckpt.load_checkpoint(found[0], model, torch.optim.AdamW(model.parameters()))["step"] == 1


def test_truncated_file_is_detected(tmp_path):
    model, opt, sched = tiny_setup()
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, sched)
    data = (path / "optimizer.pt").read_bytes()
    (path / "optimizer.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="optimizer.pt: missing or truncated"):
        ckpt.load_checkpoint(path, *tiny_setup())


def test_keep_last_and_protect(tmp_path):
    model, opt, sched = tiny_setup()
    for step in range(1, 6):
        ckpt.save_checkpoint(tmp_path, step, model, opt, sched, keep_last=2,
                             protect=[ckpt.checkpoint_dir(tmp_path) / "step-000001"])
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000001", "step-000004", "step-000005"]
    assert ckpt.resolve_checkpoint("latest", tmp_path).name == "step-000005"
    assert ckpt.resolve_checkpoint(tmp_path, tmp_path).name == "step-000005"  # a run folder works too


def test_mismatched_model_is_a_clear_error(tmp_path):
    model, opt, sched = tiny_setup()
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, sched)
    other = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(ckpt.CheckpointError, match="same method/LoRA settings"):
        ckpt.load_checkpoint(path, other)
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.resolve_checkpoint("latest", tmp_path / "elsewhere")

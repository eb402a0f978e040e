"""The real GPU checks (the same ones `make gpu-check` runs). Marked `gpu`: skipped without CUDA."""

import pytest
import torch

from ftlab.preflight import gpu_check as G

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("name", ["bf16 LoRA", "QLoRA", "8-bit AdamW", "full fine-tuning", "generation", "memory: CUDA free vs OS"])
def test_gpu_path_runs(name):
    fn = dict(G.gpu_checks())[name]
    row = G.run_checks([(name, fn)], budget_s=300)[0]
    assert row.ok, row.detail


@pytest.mark.parametrize("cfg", G.ESTIMATE_CONFIGS, ids=lambda c: f"{c[0]}-b{c[1]}-s{c[2]}{'-ckpt' if c[3] else ''}")
def test_estimate_against_cuda_counters(cfg):
    row = G.check_estimate(*cfg)
    assert row.ok, row.detail

"""`make gpu-check`: its logic with CUDA mocked, and the CPU-side self-test it runs without a GPU."""

import pytest
import torch

from ftlab.preflight import gpu_check as G


def test_without_a_gpu_it_says_so_runs_the_self_test_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert G.main([]) == 0
    out = capsys.readouterr().out
    assert "No CUDA GPU on this machine" in out and "NOT run" in out
    assert "estimate vs MemTracker: tiny full  PASS" in out and "4/4 passed" in out


def test_with_cuda_mocked_the_table_reports_every_check_and_fails_on_one(capsys, monkeypatch):
    class Props:
        name, total_memory = "NVIDIA GB10", 128 * 10**9

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    monkeypatch.setattr(G, "gpu_checks", lambda: [("good", lambda: G.Check("good", True, "fine")),
                                                   ("bad", lambda: G.compare("est", 130, 100))])
    assert G.main([]) == 1
    out = capsys.readouterr().out
    assert "GPU: NVIDIA GB10" in out and "good" in out and "+30.0 %" in out and "1/2 passed" in out


def test_run_checks_turns_errors_into_rows_and_keeps_to_the_budget():
    now = [0.0]

    def slow_ok():
        now[0] += 400   # this check uses up the whole budget
        return G.Check("ok", True, "")

    rows = G.run_checks([("boom", lambda: 1 / 0), ("ok", slow_ok), ("late", lambda: G.Check("late", True, ""))],
                        budget_s=300, clock=lambda: now[0])
    assert [r.ok for r in rows] == [False, True, False]
    assert "ZeroDivisionError" in rows[0].detail and rows[1].seconds == 400 and "budget" in rows[2].detail


def test_compare_passes_within_ten_percent_of_max_allocated():
    assert G.compare("x", 105, 100).ok and G.compare("x", 91, 100).ok
    assert not G.compare("x", 89, 100).ok
    r = G.compare("x", 100, 100, reserved_est=110, reserved=100)
    assert r.numbers["reserved_error_pct"] == pytest.approx(10.0) and "reserved" in r.detail


def test_unified_memory_row_on_a_mocked_spark():
    class FakeCuda:
        def mem_get_info(self):
            return 100 * 2**30, 119 * 2**30

        def get_device_name(self, i):
            return "NVIDIA GB10"

    row = G.unified_memory_row(FakeCuda(), "MemTotal: 1 kB\nMemAvailable:  115343360 kB\n")
    assert row.ok and row.numbers["unified"] and row.numbers["os_available"] == 115343360 * 1024
    assert "100.0 of 119.0 GiB" in row.detail and "110.0 GiB" in row.detail
    assert G.meminfo_available("nothing here") is None


def test_gpu_checks_cover_the_gpu_profile():
    names = [n for n, _ in G.gpu_checks()]
    for want in ("bf16 LoRA", "QLoRA", "8-bit AdamW", "full fine-tuning", "generation", "memory: CUDA free vs OS"):
        assert want in names
    assert sum(n.startswith("estimate ") for n in names) >= 6

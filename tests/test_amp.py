"""--amp, one check for every script: bf16 reads images only where the CPU has native bf16 (training may
emulate it, with a warning); fp16 only on CUDA."""
from __future__ import annotations

import pytest
import torch

import runtime
from runtime import check_amp


def test_bf16_is_refused_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    with pytest.raises(ValueError, match="slower than fp32 on this CPU.*AVX512-BF16 nor AMX.*--amp off"):
        check_amp("bf16", torch.device("cpu"))


def test_training_may_emulate_bf16_with_a_warning(monkeypatch, capfd):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    assert check_amp("bf16", "cpu", training=True) is torch.bfloat16
    out, err = capfd.readouterr()
    assert "warning: --amp bf16 is slower than fp32 on this CPU" in out + err


def test_test_py_refuses_emulated_bf16_before_reading_the_model(tmp_path, monkeypatch):
    from test import main

    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    with pytest.raises(SystemExit, match="2"):  # a usage error, before the missing model is noticed
        main(["--eval_data", str(tmp_path), "--saved_model", str(tmp_path / "missing.pth"), "--amp", "bf16",
              "--device", "cpu"])


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_bf16_is_used_on_a_cpu_with_native_bf16(monkeypatch, flag):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", flag})
    assert check_amp("bf16", torch.device("cpu")) is torch.bfloat16


def test_off_and_fp16():
    assert check_amp("off", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        check_amp("fp16", torch.device("cpu"))


def test_cpu_flags_reads_proc_cpuinfo():
    flags = runtime.cpu_flags()
    assert isinstance(flags, set)
    if flags:  # Linux: every x86-64 CPU lists sse2, every arm64 one fp/asimd
        assert flags & {"sse2", "fp", "asimd"}


def test_demo_reads_in_bf16_where_the_cpu_allows(tmp_path, monkeypatch):
    from checkpoint import save_checkpoint
    from demo import main
    from helpers import make_gt_folder
    from model import ModelConfig, build_model

    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    torch.manual_seed(0)
    model = build_model(ModelConfig("None", "VGG", "BiLSTM", "CTC", output_channel=32, hidden_size=16)).eval()
    save_checkpoint(tmp_path / "m.pth", model)
    folder = make_gt_folder(tmp_path / "words", copies=1)
    args = ["--image_folder", str(folder / "images"), "--saved_model", str(tmp_path / "m.pth"), "--workers", "0",
            "--log_file", str(tmp_path / "log.txt")]
    fp32 = main(args)
    bf16 = main(args + ["--amp", "bf16"])
    assert [p for p, _, _ in bf16] == [p for p, _, _ in fp32]
    agree = sum(a[1] == b[1] for a, b in zip(fp32, bf16)) / len(fp32)
    assert agree >= 0.5, agree  # bf16 rounds the activations: close to fp32, not always equal

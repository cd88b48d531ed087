"""ONNX models run on an emulated CPU: Debian's qemu-user runs this same Python and ONNX Runtime as an
AVX2-only x86 CPU, so the int8 kernels that CPU would take (u8s8 without VNNI, whose int16 pair sums
saturate) can be checked on any x86 machine. Emulation is about a hundred times slower than native: it
checks correctness, never speed.

    from cpu_emulation import run_emulated
    outputs = run_emulated({"int8": ("model.onnx", [batch0, batch1])}, cpu="avx2")  # → {"int8": [logits...]}

Run as a script (``python cpu_emulation.py jobs.json``), it is the child that qemu starts: it imports
only numpy and onnxruntime (never torch, whose import alone takes minutes under emulation), reads each
job's input batches from an .npz, and writes the outputs beside them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# --emulate name → qemu's CPU model. EPYC-Rome (Zen 2): AVX2 and FMA, no AVX-512, no VNNI.
QEMU_CPUS = {"avx2": "EPYC-Rome"}
QEMU = "qemu-x86_64"
INSTALL_HINT = "install qemu-user (as root on Debian: apt-get install qemu-user; scripts/setup.sh does)"
# A MatMulInteger of 64 products 255 x 127: 2,072,640 exactly; non-VNNI u8s8 kernels saturate each pair's
# int16 sum at 32,767, which gives 32 x 32,767 = 1,048,544.
PROBE_EXACT, PROBE_SATURATED = 64 * 255 * 127, 32 * 32767


class EmulationError(RuntimeError):
    """qemu or the emulated child failed (not a user error: the message carries the child's output)."""


def emulation_unavailable(cpu: str = "avx2") -> str | None:
    """Why ``run_emulated`` cannot run here (a reason to skip), or None when it can."""
    import platform

    if cpu not in QEMU_CPUS:
        return f"unknown CPU to emulate {cpu!r}; one of {', '.join(QEMU_CPUS)}"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"qemu-user runs this x86-64 Python only on an x86-64 host, not {platform.machine()}"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed: {INSTALL_HINT}"
    return None


def run_emulated(jobs: dict[str, tuple[str | os.PathLike, list]], cpu: str = "avx2", timeout: float = 1800,
                 threads: int = 1) -> dict[str, list]:
    """Run ONNX models under ``qemu-x86_64 -cpu QEMU_CPUS[cpu]`` in one child process (its start-up, about
    15 s emulated, is paid once). ``jobs``: name → (model path, list of input arrays for its one input).
    → name → list of first-output arrays, in the inputs' order."""
    import numpy as np

    if reason := emulation_unavailable(cpu):
        raise EmulationError(reason)
    with tempfile.TemporaryDirectory(prefix="emulate_") as tmp:
        plan = []
        for i, (name, (model, batches)) in enumerate(jobs.items()):
            inputs, outputs = Path(tmp) / f"in{i}.npz", Path(tmp) / f"out{i}.npz"
            np.savez(inputs, *[np.ascontiguousarray(b) for b in batches])
            plan.append({"name": name, "model": str(Path(model).resolve()), "inputs": str(inputs),
                         "outputs": str(outputs)})
        (Path(tmp) / "jobs.json").write_text(json.dumps({"threads": threads, "jobs": plan}))
        command = [QEMU, "-cpu", QEMU_CPUS[cpu], sys.executable, str(Path(__file__).resolve()),
                   str(Path(tmp) / "jobs.json")]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise EmulationError(f"{' '.join(command)} ran past {timeout:.0f} s") from e
        if done.returncode != 0:
            # qemu's "TCG doesn't support requested feature" lines are noise; keep the child's own.
            lines = [line for line in done.stderr.splitlines() if not line.startswith("qemu-x86_64: warning")]
            raise EmulationError(f"the emulated child failed ({done.returncode}): " + "\n".join(lines[-20:]))
        results = {}
        for job in plan:
            with np.load(job["outputs"]) as out:
                results[job["name"]] = [out[f"arr_{k}"] for k in range(len(out.files))]
        return results


def saturation_probe_model(path: str | os.PathLike) -> Path:
    """Write the MatMulInteger probe (uint8 a[1, 64] @ int8 b[64, 1] → int32) to ``path``."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "saturation_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
        initializer=[helper.make_tensor("b", TensorProto.INT8, [64, 1], [127] * 64)])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Path(path)


def probe_input():
    import numpy as np

    return np.full((1, 64), 255, np.uint8)


def _child(jobs_file: str) -> None:
    """The emulated side: numpy and onnxruntime only."""
    import numpy as np
    import onnxruntime as ort

    spec = json.loads(Path(jobs_file).read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    for job in spec["jobs"]:
        session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        with np.load(job["inputs"]) as inputs:
            outputs = [session.run(None, {name: inputs[f"arr_{k}"]})[0] for k in range(len(inputs.files))]
        np.savez(job["outputs"], *outputs)


if __name__ == "__main__":
    _child(sys.argv[1])

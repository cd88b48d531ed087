"""A model's profile: parameters, FLOPs per image, latency, throughput and peak memory (``profile_model``).

FLOPs follow the paper's convention, 2 x multiply-accumulates of one image at the model's input size, on
the inference path (eval mode; the attention and PARSeq decoders run all batch_max_length + 1 steps, as
the reference's fixed loop does, whatever an untrained model reads). ``torch.utils.flop_counter.
FlopCounterMode`` counts the matrix products and convolutions it knows; ``OP_FLOPS`` adds the operators
it gives no count (LSTM, grid_sample, attention on the CPU), and ``MODULE_FLOPS`` what no operator shows
(TPS's sampling grid, computed as elementwise products). Elementwise work (activations, normalisation,
pooling, bias adds) is counted nowhere, as in FlopCounterMode. ``as_reference`` adds what the reference
implementation, on which the paper's figures rest, computes beyond ours (``REFERENCE_MODULE_FLOPS``).

Memory is the peak growth above the state before the step (the model and its input in place), after a
warm-up at batch 1 (what a kernel's first call loads): CUDA ``max_memory_allocated``; on the CPU the
peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the step) in a fresh
process per model, with glibc's mmap threshold fixed, since an allocator that keeps freed pages would
let a step reuse them unseen.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import plugins
from decoding import decode, forward_logits
from model import Model, ModelConfig, build_model, compute_loss, config_from_name, count_parameters
from modules.registry import Head
from runtime import UsageError, check_amp
from utils import make_converter

__all__ = ["Profile", "profile_model", "count_flops", "flop_breakdown", "count_parameters", "build_by_name",
           "measure_latency", "measure_throughput", "time_reads", "Timing", "peak_memory", "peak_memory_mb", "PRECISIONS"]

aten = torch.ops.aten
PRECISIONS = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}  # --amp names (runtime.check_amp)


# ---------------------------------------------------------------- FLOPs: the rules FlopCounterMode lacks

def lstm_flops(input_shape, hx_shapes, param_shapes, has_biases, num_layers, dropout, train, bidirectional,
               batch_first, out_shape=None, **kwargs) -> int:
    """``aten.lstm``: every weight matrix [out, in] (W_ih [4h, in], W_hh [4h, h], per layer and direction) is
    applied once per time step per sequence: 2 * out * in * T * B FLOPs each. A layer of width h on input
    width i, one direction: T * B * 2 * 4h * (i + h). The gates' elementwise work is not counted."""
    B, T = (input_shape[0], input_shape[1]) if batch_first else (input_shape[1], input_shape[0])
    return sum(2 * s[0] * s[1] * T * B for s in param_shapes if len(s) == 2)


def lstm_cell_flops(input_shape, hx_shapes, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """``aten.lstm_cell``: one step, B * 2 * 4h * (i + h) FLOPs (W_ih [4h, i] and W_hh [4h, h])."""
    B = input_shape[0] if len(input_shape) == 2 else 1
    return 2 * B * w_ih_shape[0] * (w_ih_shape[1] + w_hh_shape[1])


def grid_sample_flops(input_shape, grid_shape, interpolation_mode=0, *args, out_shape=None, **kwargs) -> int:
    """``aten.grid_sampler``: bilinear interpolation (mode 0) weighs the 4 neighbours of every output value:
    4 multiply-accumulates, 2 * 4 * N * C * H_out * W_out FLOPs (bicubic 16 neighbours; nearest none)."""
    N, C = input_shape[0], input_shape[1]
    neighbours = {0: 4, 1: 0, 2: 16}[int(interpolation_mode)]
    return 2 * neighbours * N * C * grid_shape[1] * grid_shape[2]


def sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``aten.scaled_dot_product_attention`` (counted before it is lowered to a device's kernel, so that the
    CPU, which FlopCounterMode has no rule for, counts as CUDA does): Q K^T and the weights times V,
    2 * B * heads * L_q * L_k * (d_k + d_v) FLOPs. Masks (causal or not) are not subtracted."""
    *batch, Lq, dk = query_shape
    Lk, dv = key_shape[-2], value_shape[-1]
    b = 1
    for n in batch:
        b *= n
    return 2 * b * Lq * Lk * (dk + dv)


def native_mha_flops(query_shape, key_shape, value_shape, embed_dim, num_heads, qkv_weight_shape, qkv_bias_shape,
                     proj_weight_shape, *args, out_shape=None, **kwargs) -> int:
    """``aten._native_multi_head_attention`` (nn.MultiheadAttention's inference fast path): the q, k, v
    projections 2 * B * (L_q + 2 L_k) * E^2, the attention 2 * B * L_q * L_k * 2E, the output
    projection 2 * B * L_q * E^2."""
    B, Lq, E = query_shape
    Lk = key_shape[1]
    return 2 * B * (Lq + 2 * Lk) * E * E + 2 * B * Lq * Lk * 2 * E + 2 * B * Lq * E * E


OP_FLOPS = {
    aten.lstm: lstm_flops,
    aten.lstm_cell: lstm_cell_flops,  # counted by its decomposition on the CPU, not CUDA's fused cell
    aten.grid_sampler: grid_sample_flops,
    aten.grid_sampler_2d: grid_sample_flops,
    aten.scaled_dot_product_attention: sdpa_flops,
    aten._native_multi_head_attention: native_mha_flops,
}
# FlopCounterMode counts by the operator (packet) but decomposes an overload it finds no formula for: the
# mapping names both, so that a composite operator (LSTM, attention) is counted whole.
_COUNTER_MAPPING = {**OP_FLOPS, **{getattr(op, name): rule for op, rule in OP_FLOPS.items() for name in op.overloads()}}


# FLOPs no operator shows, declared by the stages themselves: a module's ``extra_flops(args, kwargs)`` (TPS's
# sampling grid) and, for --as_reference, ``extra_reference_flops`` (what the reference implementation computes
# on top: the attention decoder's encoder projection at every step).
MODULE_FLOPS = "extra_flops"
REFERENCE_MODULE_FLOPS = "extra_reference_flops"


@contextlib.contextmanager
def every_decoding_step(model: nn.Module):
    """Within it, the attention and PARSeq decoders never read their end token, so they run every step."""
    def suppress(eos):
        def hook(module, args, output):
            return output.index_fill(-1, torch.tensor([eos], device=output.device), torch.finfo(output.dtype).min)
        return hook

    # The decoders' steps end early once every row has read its end token (a head's ``end_index``, in the
    # output of its ``end_layer``); the FLOPs (and the timing, by default) are of all batch_max_length + 1
    # steps: the end token's logit is pushed to the minimum.
    handles = [getattr(m, m.end_layer).register_forward_hook(suppress(m.end_index))
               for m in model.modules() if isinstance(m, Head) and m.end_layer]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _training_mode(model: nn.Module, mode: bool):
    was = model.training
    model.train(mode)
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def _no_grad_parameters(model: nn.Module):
    """Parameters that need no gradient, for counting in inference mode: there the composite operators (LSTM,
    attention) reach FlopCounterMode whole on every device (under no_grad the CPU shows mkldnn_rnn_layer, CUDA
    cuDNN's kernel), and its module tracker hooks no gradient of a parameter (which inference mode has not)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _input(config: ModelConfig, batch_size: int, device) -> torch.Tensor:
    return torch.rand(batch_size, config.input_channel, config.imgH, config.imgW, device=device) * 2 - 1


def _inference(model: Model, image: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The model's inference forward (decoding.forward_logits' call), every decoding step."""
    with every_decoding_step(model):
        return forward_logits(model, image, model.config, amp_dtype)


def _count(model: nn.Module, image: torch.Tensor | None) -> tuple[dict[str, int], dict[str, int]]:
    """→ (FLOPs per top-level part and "total", the same of what the reference computes on top)."""
    extra: dict[str, int] = {}
    reference: dict[str, int] = {}
    names = {m: name for name, m in model.named_modules()}

    def add(rule, into):
        def hook(module, args, kwargs, output):
            part = names[module].split(".")[0]
            into[part] = into.get(part, 0) + getattr(module, rule)(args, kwargs)
        return hook

    handles = [m.register_forward_hook(add(rule, into), with_kwargs=True) for m in model.modules()
               for rule, into in ((MODULE_FLOPS, extra), (REFERENCE_MODULE_FLOPS, reference)) if hasattr(m, rule)]
    counter = FlopCounterMode(display=False, custom_mapping=_COUNTER_MAPPING)
    try:
        with _training_mode(model, False), _no_grad_parameters(model), torch.inference_mode(), counter:
            if image is None:
                _inference(model, _input(model.config, 1, next(model.parameters()).device))
            else:
                model(image)
    finally:
        for h in handles:
            h.remove()
    counts = counter.get_flop_counts()
    root = type(model).__name__
    parts = {name: sum(counts.get(f"{root}.{name}", {}).values()) + extra.get(name, 0)
             for name, _ in model.named_children()}
    parts["total"] = sum(counts.get("Global", {}).values()) + sum(extra.values())
    reference["total"] = sum(reference.values())
    return parts, reference


def flop_breakdown(model: nn.Module, image: torch.Tensor | None = None, as_reference: bool = False) -> dict[str, int]:
    """FLOPs of the forward pass per top-level part ({"Transformation": ..., "Prediction": ...}) and their
    "total". Without ``image``, ``model`` is a ``Model`` read at its input size, one image, on its inference
    path with every decoding step; with it, ``model(image)`` in eval mode.

    ``as_reference``: count what the reference implementation computes, on which the paper's figures
    rest: also the attention decoder's encoder projection at every step (``REFERENCE_MODULE_FLOPS``).
    """
    parts, reference = _count(model, image)
    if as_reference:
        parts = {name: count + reference.get(name, 0) for name, count in parts.items()}
    return parts


def count_flops(model: nn.Module, image: torch.Tensor | None = None, as_reference: bool = False) -> int:
    """FLOPs (2 x multiply-accumulates) of one image at the model's input size, on its inference path
    (``flop_breakdown``'s "total"; ``image``: of ``model(image)`` instead)."""
    return flop_breakdown(model, image, as_reference)["total"]


# ---------------------------------------------------------------- time

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Each timed figure stops on a time budget once it rests on enough runs for a stable median; the repeat
# count is an upper bound. A single run is never cut short, so a slow model's figure rests on MIN_RUNS.
DEFAULT_BUDGET_S = 10.0
MIN_RUNS = 3


@dataclass(frozen=True)
class Timing:
    """The median of ``runs`` timed reads (seconds) and how many were timed."""

    median_s: float
    runs: int


def _timed_runs(model: Model, batch_size: int, device: torch.device, amp_dtype, warmup: int, repeats: int,
                every_step: bool, budget_s: float | None = None, min_runs: int = MIN_RUNS,
                clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of each timed read (``decoding.decode``: forward and greedy decoding) of one batch: up to
    ``warmup`` untimed reads (stopping once a quarter of ``budget_s`` has passed, after the first), then up
    to ``repeats`` timed ones, stopping once ``budget_s`` has passed and ``min_runs`` are done (None: no
    budget, exactly ``repeats``). ``clock`` is injectable for the tests."""
    image = _input(model.config, batch_size, device)
    steps = every_decoding_step(model) if every_step else contextlib.nullcontext()

    def read() -> float:
        _sync(device)
        start = clock()
        decode(model, image, model.config, amp_dtype=amp_dtype)
        _sync(device)
        return clock() - start

    times: list[float] = []
    with _training_mode(model, False), torch.inference_mode(), steps:
        spent = 0.0
        for i in range(warmup):
            spent += read()
            if budget_s is not None and spent > budget_s / 4:
                break
        spent = 0.0
        while len(times) < repeats:
            times.append(read())
            spent += times[-1]
            if budget_s is not None and spent >= budget_s and len(times) >= min(min_runs, repeats):
                break
    return times


def time_reads(model: Model, batch_size: int, device, amp_dtype=None, warmup: int = 2, repeats: int = 10,
               every_step: bool = True, budget_s: float | None = None, min_runs: int = MIN_RUNS) -> Timing:
    """The median time of one read of a batch and the number of runs it rests on (``_timed_runs``)."""
    times = _timed_runs(model, batch_size, torch.device(device), amp_dtype, warmup, repeats, every_step, budget_s,
                        min_runs)
    return Timing(statistics.median(times), len(times))


def measure_latency(model: Model, device, amp_dtype=None, warmup: int = 5, repeats: int = 30,
                    every_step: bool = True, budget_s: float | None = None) -> float:
    """Milliseconds per image at batch 1: the median of up to ``repeats`` synchronised reads after ``warmup``
    (at most ``budget_s`` seconds of timed reads once MIN_RUNS are done)."""
    return 1000 * time_reads(model, 1, device, amp_dtype, warmup, repeats, every_step, budget_s).median_s


def measure_throughput(model: Model, batch_size: int, device, amp_dtype=None, warmup: int = 2, repeats: int = 10,
                       every_step: bool = True, budget_s: float | None = None) -> float:
    """Images per second at ``batch_size``: the batch over the median time of one read."""
    return batch_size / time_reads(model, batch_size, device, amp_dtype, warmup, repeats, every_step,
                                   budget_s).median_s


# ---------------------------------------------------------------- memory

def _labels(config: ModelConfig, batch_size: int) -> list[str]:
    """Labels of the longest length (PARSeq's training cost grows with it; the others' does not)."""
    chars = config.character
    return ["".join(chars[(i + j) % len(chars)] for j in range(config.batch_max_length)) for i in range(batch_size)]


def _step(model: Model, kind: str, batch_size: int, device: torch.device, amp_dtype) -> Callable[[], None]:
    """→ a function running one inference (``kind`` "infer") or one training step ("train": the loss of
    ``model.compute_loss``, backward, gradient clipping at 5 and an Adadelta step, train.py's defaults) on a
    prepared batch."""
    config = model.config
    image = _input(config, batch_size, device)
    if kind == "infer":
        model.eval()

        def infer():
            with torch.inference_mode():
                _inference(model, image, amp_dtype)
        return infer
    model.train()
    converter = make_converter(config.Prediction, config.character)
    labels = _labels(config, batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adadelta(params, lr=1.0)

    def train():
        loss = compute_loss(model, image, labels, converter, config, amp_dtype)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train


def _cuda_peak_mb(model: Model, kind: str, batch_size: int, device: torch.device, amp_dtype) -> float:
    model = copy.deepcopy(model)  # a training step changes the weights: not the caller's
    _step(model, kind, 1, device, amp_dtype)()  # warm-up: cuBLAS/cuDNN workspaces, first-call allocations
    step = _step(model, kind, batch_size, device, amp_dtype)
    _sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _rss_growth_mb(step) -> float:
    """Peak resident-set growth of ``step()`` in this process: VmHWM reset to the current RSS just before
    (Linux ``clear_refs`` 5); elsewhere ``ru_maxrss`` after the step minus the RSS before (an upper bound
    where the process had a higher peak before)."""
    import gc
    import resource

    gc.collect()
    try:
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        step()
        return (_status_kb("VmHWM") - before) / 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, after - before) / 1024 * (1 / 1024 if sys.platform == "darwin" else 1)


def _memory_child() -> None:
    """The fresh process of a CPU measurement: reads its job (JSON) on stdin, prints {kind: MiB} on stdout.

    A warm-up at batch 1 first loads what a kernel's first call loads: an inference, and for training a
    forward and backward (no optimizer step: small freed tensors stay in the heap and could be reused
    unseen, so the optimizer's state is first made in the measured step). The parent fixes glibc's mmap
    threshold (``CHILD_MALLOC_ENV``) so that what the warm-up and an earlier measurement free goes back to
    the system, instead of being reused unseen by the next step."""
    job = json.loads(sys.stdin.read())
    for name in job["plugins"]:  # the parent's plugins, which registered the model's stages there
        plugins.load(name)
    torch.set_num_threads(job["threads"])
    model = build_model(ModelConfig.from_dict(job["config"]), init=False)
    config, device = model.config, torch.device("cpu")
    amp_dtype = getattr(torch, job["amp_dtype"]) if job["amp_dtype"] else None
    _step(model, "infer", 1, device, amp_dtype)()
    if "train" in job["kinds"]:
        model.train()
        compute_loss(model, _input(config, 1, device), _labels(config, 1),
                     make_converter(config.Prediction, config.character), config, amp_dtype).backward()
        model.zero_grad(set_to_none=True)
    growth = {kind: _rss_growth_mb(_step(model, kind, job["batch_size"], device, amp_dtype)) for kind in job["kinds"]}
    print(json.dumps(growth))


# glibc: blocks from 64 KiB on are mapped and unmapped one by one (a fixed threshold, which glibc would
# otherwise raise as blocks are freed), and the heap's free top is returned at once.
CHILD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _cpu_peak_mb(model: Model, kinds: tuple[str, ...], batch_size: int, amp_dtype) -> dict[str, float]:
    job = {"config": model.config.to_dict(), "kinds": list(kinds), "batch_size": batch_size,
           "threads": torch.get_num_threads(), "plugins": plugins.required(model.config),
           "amp_dtype": str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else None}
    root = Path(__file__).resolve().parent
    path = [str(root), os.getcwd(), os.environ.get("PYTHONPATH", "")]  # the toolkit, and a plugin beside the user
    env = {**os.environ, **CHILD_MALLOC_ENV, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run([sys.executable, "-c", "import profiling; profiling._memory_child()"], input=json.dumps(job),
                          capture_output=True, text=True, cwd=root, env=env)
    if done.returncode:
        raise RuntimeError(f"the memory measurement of {model.config.name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_memory(model: Model, batch_size: int, device, amp_dtype=None,
                kinds: tuple[str, ...] = ("infer", "train")) -> dict[str, float]:
    """Peak memory growth (MiB) of one inference ("infer") and one training step ("train": the loss,
    backward and an optimizer step, with its gradients and optimizer state) at ``batch_size``, above the state
    before each (model and input in place): CUDA max_memory_allocated; on the CPU the resident set, in one
    fresh process for the model. → {kind: MiB}. The caller's model is left as it was."""
    unknown = set(kinds) - {"infer", "train"}
    if unknown:
        raise ValueError(f"kinds must be 'infer' or 'train', got {sorted(unknown)}")
    device = torch.device(device)
    if device.type == "cuda":
        return {kind: _cuda_peak_mb(model, kind, batch_size, device, amp_dtype) for kind in kinds}
    return _cpu_peak_mb(model, tuple(kinds), batch_size, amp_dtype)


def peak_memory_mb(model: Model, kind: str, batch_size: int, device, amp_dtype=None) -> float:
    """``peak_memory`` of one kind ("infer" or "train")."""
    return peak_memory(model, batch_size, device, amp_dtype, (kind,))[kind]


# ---------------------------------------------------------------- the profile

def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    return f"{model or 'CPU'}, {torch.get_num_threads()} threads"


@dataclass(frozen=True)
class Profile:
    """One model's profile on one device and precision (``profile_model``)."""

    name: str  # the combination, "TPS-ResNet-BiLSTM-Attn"
    params_m: float  # trainable parameters, millions
    gflops: float  # 2 x MACs of one image at imgH x imgW, 1e9
    gflops_reference: float  # the same of the reference implementation (the paper's basis; Attn: i2h per step)
    latency_ms: float  # per image at batch 1, median
    throughput_ips: float  # images per second at batch_size
    infer_mem_mb: float  # peak memory growth of one inference at batch_size (MiB)
    train_mem_mb: float | None  # ... of one training step at batch_size (None: not measured)
    weights_mb: float  # parameters and buffers (MiB), in place before either step
    device: str
    precision: str  # fp32 | bf16 | fp16
    batch_size: int
    machine: str  # GPU name, or CPU model and threads
    latency_runs: int = 0  # how many timed reads the latency's median rests on
    throughput_runs: int = 0  # ... the throughput's

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def profile_model(model: Model, *, device="cpu", precision: str = "fp32", batch_size: int = 192, warmup: int = 5,
                  repeats: int = 30, throughput_repeats: int = 5, train_step: bool = True,
                  every_step: bool = True, budget_s: float | None = DEFAULT_BUDGET_S) -> Profile:
    """Parameters, FLOPs, latency (batch 1: the median of up to ``repeats`` after up to ``warmup``), throughput
    (at ``batch_size``: the median of up to ``throughput_repeats`` after one) and peak memory (at ``batch_size``).

    Each timed figure stops once its timed reads pass ``budget_s`` seconds and rest on MIN_RUNS (None: the
    full counts); ``latency_runs`` and ``throughput_runs`` say how many runs each median rests on.
    ``precision`` fp32 | bf16 | fp16 goes through ``runtime.check_amp`` (fp16 needs CUDA; bf16 on a CPU
    without AVX512-BF16/AMX is refused). ``every_step``: time the decoders over all their steps, as the
    FLOPs count them (an untrained model's first end token is arbitrary); False stops where decoding
    stops. The model is moved to ``device``; its weights and mode are left as they were.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if min(batch_size, repeats, throughput_repeats) < 1 or warmup < 0:
        raise UsageError(f"batch_size, repeats and throughput_repeats must be at least 1 and warmup at least 0, got "
                         f"{batch_size}, {repeats}, {throughput_repeats}, {warmup}")
    if budget_s is not None and budget_s <= 0:
        raise UsageError(f"the profile's time budget must be positive seconds, got {budget_s}")
    device = torch.device(device)
    amp_dtype = check_amp(PRECISIONS[precision], device)
    model = model.to(device)
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    memory = peak_memory(model, batch_size, device, amp_dtype, ("infer", "train") if train_step else ("infer",))
    flops, reference = _count(model, None)
    latency = time_reads(model, 1, device, amp_dtype, warmup, repeats, every_step, budget_s)
    throughput = time_reads(model, batch_size, device, amp_dtype, min(warmup, 1), throughput_repeats, every_step,
                            budget_s)
    return Profile(
        name=model.config.name,
        params_m=count_parameters(model) / 1e6,
        gflops=flops["total"] / 1e9,
        gflops_reference=(flops["total"] + reference["total"]) / 1e9,
        latency_ms=1000 * latency.median_s,
        throughput_ips=batch_size / throughput.median_s,
        infer_mem_mb=memory["infer"],
        train_mem_mb=memory.get("train"),
        weights_mb=weights / 2 ** 20,
        device=str(device),
        precision=precision,
        batch_size=batch_size,
        machine=machine_name(device),
        latency_runs=latency.runs,
        throughput_runs=throughput.runs,
    )


def build_by_name(name: str, **options) -> Model:
    """Any combination by its name ("TPS-ResNet-BiLSTM-Attn", "None-ViT-None-PARSeq") with the reference's
    default widths (``model.config_from_name``); ``options`` override config fields (output_channel=32 ...)."""
    return build_model(config_from_name(name, **options))

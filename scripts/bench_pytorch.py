#!/usr/bin/python3
"""The peer benchmark: cumnist's model, initialisation, optimizer and batch sizes in PyTorch on the
CPU, configured to be as fast as PyTorch gets here, measured the way `cumnist bench` measures.

The model is --model as cumnist takes it: mlp (default: 784-512-256-10, ReLU, dropout 0.2 after
each hidden layer), cnn (cumnist's preset, conv32k3same,relu,pool2,conv16k3same,relu,pool2,flatten,
dropout0.25,dense128,relu,dropout0.5,dense10) or a layer string: comma-separated dense<units>,
conv<filters>k<k>[x<kw>][s<stride>][same], pool<k>[x<kw>][s<stride>], flatten, dropout<rate>, relu,
sigmoid, tanh (parsed by scripts/load_checkpoint.py, which also reads these models from cumnist's
checkpoints). Built as one torch.nn.Sequential with cumnist's layouts: NCHW activations (the
flat images unflattened to 1x28x28 before the first convolution), conv weights (out, in, kh, kw),
flatten in (c, h, w) order, max pooling without padding; padding "same" is SAME_UPPER (out =
ceil(in / stride), the odd row or column after): Conv2d's own padding when it is symmetric, else
an explicit zero pad (nn.ZeroPad2d, i.e. F.pad) before an unpadded Conv2d. Glorot-uniform weights
(for a convolution fan_in = in·kh·kw, fan_out = out·kh·kw), zero biases, Adam (lr 1e-3, betas
0.9/0.999, eps 1e-7), softmax cross-entropy. The data set is read
from cumnist's data folder (IDX files, raw or .gz) with numpy and held in memory as float tensors;
each batch is a slice of a random permutation. Per configuration: warm-up steps, then timed steps
(time.perf_counter, a monotonic clock, around each step); samples/s from the sum of the step times.
Inference: the test set in batches of 1000 under torch.inference_mode().

Speed settings: torch.set_num_threads(<cores>); Adam's multi-tensor (foreach) implementation
(~1.4x faster at batch 32 than 1.13's CPU default); gradients set to None rather than zeroed; and
the OpenMP wait policy chosen for the BLAS that torch loads: OMP_WAIT_POLICY=PASSIVE (set before
torch is imported: the script re-executes itself) when it is a pthreads OpenBLAS, whose threads
PyTorch's spinning OpenMP threads would otherwise fight (about 3x slower); libgomp's default with
the OpenMP OpenBLAS (libopenblas0-openmp), where PASSIVE is 1.2-1.7x slower. An
OMP_WAIT_POLICY in the environment is respected.

Usage: scripts/bench_pytorch.py [--model mlp|cnn|LAYERS] [--batch-sizes 32,128,256,1024] [--steps 1000]
                                [--warmup 20] [--threads N] [--json FILE] [--data DIR] [--dataset mnist]
                                [--device cpu|cuda]
Needs python3-torch and python3-numpy (Debian); scripts/compare.sh installs them when missing.
"""

import os
import sys


def blas_flavours():
    """The OpenBLAS flavours (openblas-pthread, openblas-openmp, ...) that Debian's alternatives
    select for libblas.so.3 and libopenblas.so.0, both of which libtorch links."""
    import sysconfig
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    found = set()
    for name in ("libblas.so.3", "libopenblas.so.0"):
        for folder in (os.path.join("/usr/lib", multiarch), "/usr/lib", "/lib"):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                found.add(os.path.basename(os.path.dirname(os.path.realpath(path))))
                break
    return found


# OMP_WAIT_POLICY must be in the environment before libgomp is loaded (with torch). With a pthreads
# OpenBLAS, PyTorch's spinning OpenMP threads and OpenBLAS's own threads fight over the cores
# (about 3x slower): wait passively. With the OpenMP OpenBLAS both share one libgomp pool, and
# its default (spin briefly, then sleep) is faster: PASSIVE measured 1.2-1.7x slower here.
# An OMP_WAIT_POLICY already in the environment is respected.
# Debian's OpenBLAS 0.3.21 can compute wrong results or crash on processors newer than it knows
# (Zen 5, recent Xeons): unless told otherwise, it runs its Haswell (AVX2) kernels, which every
# x86-64 processor with AVX2 runs correctly.
if "OPENBLAS_CORETYPE" not in os.environ and any(f.startswith("openblas") for f in blas_flavours()):
    try:
        with open("/proc/cpuinfo") as f:
            has_avx2 = " avx2 " in f.read()
    except OSError:
        has_avx2 = False
    if has_avx2:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"
if "OMP_WAIT_POLICY" not in os.environ and "openblas-pthread" in blas_flavours():
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import argparse
import gzip
import json
import platform
import statistics
import time

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit(f"bench_pytorch: PyTorch is not installed for {sys.executable}: "
             "apt-get install python3-torch (scripts/compare.sh does this)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/, for the model parser
sys.dont_write_bytecode = True  # no __pycache__ in scripts/
from load_checkpoint import ModelError, conv_padding, describe, layer_macs, layer_string, parse_model, shapes  # noqa: E402

# --model mlp: cumnist bench's MLP (its --hidden and --dropout defaults, ReLU)
HIDDEN = (512, 256)
DROPOUT = 0.2


def default_data_dir():
    if os.environ.get("CUMNIST_DATA"):
        return os.environ["CUMNIST_DATA"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "cumnist")


def read_idx(path):
    """An IDX file of unsigned bytes (raw or gzip, by content) as a numpy array of its dims."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        sys.exit(f"bench_pytorch: {path}: not an IDX file of unsigned bytes")
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        sys.exit(f"bench_pytorch: {path}: header says {dims}, file holds {body.size} bytes of data")
    return body.reshape(dims)


def load_split(data_dir, dataset, prefix):
    def find(name):
        for candidate in (name, name + ".gz"):
            path = os.path.join(data_dir, dataset, candidate)
            if os.path.exists(path):
                return path
        sys.exit(f"bench_pytorch: {os.path.join(data_dir, dataset, name)}[.gz] not found; "
                 "run scripts/fetch_data.sh")
    images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(f"{prefix}-labels-idx1-ubyte"))
    x = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return (x, y), tuple(images.shape[1:])


ACTIVATION_MODULES = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}


def make_model(spec, seed):
    """spec ({"input", "classes", "layers"}, as parse_model returns) as a torch.nn.Sequential taking
    the flat images (n, c·h·w)."""
    torch.manual_seed(seed)
    layers, shape = [], tuple(spec["input"])
    if any(l["type"] in ("conv2d", "maxpool2d") for l in spec["layers"]):
        layers.append(torch.nn.Unflatten(1, shape))  # (n, c·h·w) -> (n, c, h, w)
    for l, out in zip(spec["layers"], shapes(spec)):
        t = l["type"]
        if t == "dense":
            layers.append(torch.nn.Linear(shape[0] * shape[1] * shape[2], l["units"]))
        elif t == "conv2d":
            (top, bottom), (left, right) = conv_padding(l, shape)
            padding = (top, left)
            if (top, left) != (bottom, right):  # SAME_UPPER with an odd total: the extra row/column after
                layers.append(torch.nn.ZeroPad2d((left, right, top, bottom)))  # F.pad's order: w, then h
                padding = (0, 0)
            layers.append(torch.nn.Conv2d(shape[0], l["filters"], tuple(l["kernel"]), stride=tuple(l["stride"]),
                                          padding=padding))
        elif t == "maxpool2d":
            layers.append(torch.nn.MaxPool2d(tuple(l["pool"]), stride=tuple(l["stride"])))
        elif t == "flatten":
            layers.append(torch.nn.Flatten())  # (c, h, w) order, as cumnist
        elif t == "dropout":
            layers.append(torch.nn.Dropout(l["rate"]))
        else:
            layers.append(ACTIVATION_MODULES[l["activation"]]())
        shape = out
    model = torch.nn.Sequential(*layers)
    for m in model:
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            # Glorot uniform, as Keras and cumnist (for a convolution, fans times kh·kw)
            torch.nn.init.xavier_uniform_(m.weight)
            torch.nn.init.zeros_(m.bias)
    return model


def training_step_flops(spec, n):
    """GEMM FLOPs of one training step, as cumnist counts them (include/cumnist/bench.h), from the
    multiply-adds per image of each layer with parameters (in·out for a dense layer,
    out_h·out_w·filters·in·kh·kw for a convolution): 6·n·Σ macs − 2·n·macs_0 (forward, dW, dX
    except the first layer's input gradient)."""
    macs = layer_macs(spec)
    return n * (6 * sum(macs) - 2 * macs[0])


def quantile(values, q):
    """Linear interpolation between order statistics (numpy's default), as cumnist."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


def synchronize(device):
    """Waits for the GPU's queued work (a no-op on the CPU), so a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_adam(model, device):
    """The fastest Adam this PyTorch has for the device: the fused CUDA kernel where it exists (1.13
    and newer), else foreach, the multi-tensor Adam (one op per formula over all six tensors instead
    of six; in 1.13 it is not the CPU default, and it is the faster one there, ~1.4x at batch 32)."""
    kwargs = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    if device.type == "cuda":
        try:
            return torch.optim.Adam(model.parameters(), fused=True, **kwargs), "fused"
        except (TypeError, RuntimeError):
            pass
    return torch.optim.Adam(model.parameters(), foreach=True, **kwargs), "foreach"


def bench_training(x, y, batch, steps, warmup, seed, spec, device):
    model = make_model(spec, seed).to(device)
    model.train()
    opt, _ = make_adam(model, device)
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(n, generator=gen).to(device), 0

    def step():
        nonlocal order, pos
        if pos + batch > n:  # full batches only, as cumnist's bench
            order, pos = torch.randperm(n, generator=gen).to(device), 0
        idx = order[pos:pos + batch]
        pos += batch
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    # Per-step latency (waiting for each step), then, as cumnist's bench does on the GPU, the same
    # number of steps queued back to back for the throughput. On the CPU a step ends when it
    # returns, so the per-step times are the back-to-back time.
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    seconds = sum(times)
    if device.type == "cuda":
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds = time.perf_counter() - t0
    sps = steps * batch / seconds
    flops = training_step_flops(spec, batch)
    return {
        "device": device.type,
        "batch": batch,
        "steps": steps,
        "seconds": seconds,
        "samples_per_second": sps,
        "ms_per_step_median": quantile(times, 0.5) * 1e3,
        "ms_per_step_p90": quantile(times, 0.9) * 1e3,
        "ms_per_step_mean": statistics.fmean(times) * 1e3,
        "epoch_seconds": n / sps,
        "flops_per_step": flops,
        "gflops": flops * steps / seconds / 1e9,
    }


def bench_inference(x, y, seed, spec, batch, repeats, device):
    model = make_model(spec, seed).to(device)
    model.eval()

    def one_pass():
        with torch.inference_mode():
            correct = torch.zeros((), dtype=torch.int64, device=x.device)  # read once per pass, as cumnist
            for first in range(0, x.shape[0], batch):
                logits = model(x[first:first + batch])
                correct += (logits.argmax(1) == y[first:first + batch]).sum()
        return int(correct)

    one_pass()  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    synchronize(device)
    seconds = time.perf_counter() - t0
    macs = sum(layer_macs(spec))
    return {
        "device": device.type,
        "samples": x.shape[0],
        "batch": min(batch, x.shape[0]),
        "repeats": repeats,
        "seconds": seconds,
        "samples_per_second": x.shape[0] * repeats / seconds,
        "gflops": 2 * macs * x.shape[0] * repeats / seconds / 1e9,
    }


def loaded_blas():
    """The BLAS / OpenMP libraries mapped into this process (which OpenBLAS flavour torch uses)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "blas" in line or "gomp" in line or "omp." in line}
        return sorted(p for p in paths if p.startswith("/"))
    except OSError:
        return []


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp",
                   help="mlp (784-512-256-10 relu, dropout 0.2), cnn (cumnist's preset) or a layer string as "
                        "cumnist's --model takes it, e.g. conv8k3same,relu,pool2,flatten,dense10")
    p.add_argument("--batch-sizes", default="32,128,256,1024")
    p.add_argument("--steps", type=int, default=1000, help="timed steps per batch size")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    p.add_argument("--eval-batch", type=int, default=1000)
    p.add_argument("--eval-repeats", type=int, default=5, help="timed passes over the test set (0: skip)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data", default=default_data_dir())
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to train: the CPU (default) or the first CUDA GPU")
    a = p.parse_args()
    try:
        batches = [int(b) for b in a.batch_sizes.split(",")]
    except ValueError:
        sys.exit(f"bench_pytorch: --batch-sizes: '{a.batch_sizes}' is not a comma-separated list of sizes")
    if any(b <= 0 for b in batches) or a.steps <= 0 or a.warmup < 0 or a.threads < 0:
        sys.exit("bench_pytorch: batch sizes and --steps must be positive, --warmup and --threads not negative")

    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"bench_pytorch: --device cuda: this PyTorch {torch.__version__} sees no usable CUDA GPU")
    device = torch.device(a.device)
    cores = len(os.sched_getaffinity(0))
    threads = a.threads or cores
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    (x, y), image_shape = load_split(a.data, a.dataset, "train")
    x, y = x.to(device), y.to(device)
    (xt, yt), _ = load_split(a.data, a.dataset, "t10k")
    xt, yt = xt.to(device), yt.to(device)
    classes = 10
    try:
        spec = parse_model(a.model, (1, *image_shape), classes, HIDDEN, "relu", DROPOUT)
    except ModelError as e:
        sys.exit(f"bench_pytorch: --model: {e}")
    model_text = describe(spec)
    if max(batches) > x.shape[0]:
        sys.exit(f"bench_pytorch: batch {max(batches)} is larger than the training set ({x.shape[0]})")

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = list(os.getloadavg())
    print(f"PyTorch {torch.__version__} bench: {model_text}, Adam; {a.dataset} from "
          f"{os.path.join(a.data, a.dataset)}")
    adam = make_adam(make_model(spec, a.seed).to(device), device)[1]  # which Adam this PyTorch has
    if device.type == "cuda":
        print(f"  device {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), Adam {adam}", flush=True)
    print(f"  {a.warmup} warm-up, then {a.steps} timed steps per batch size; {cpu}, {threads} threads "
          f"(of {cores} cores), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default)')}, "
          f"BLAS {'/'.join(sorted(blas_flavours())) or 'unknown'}, "
          f"load average {load[0]:.2f} at start", flush=True)

    training, inference = [], []
    for i, b in enumerate(batches):
        r = bench_training(x, y, b, a.steps, a.warmup, a.seed, spec, device)
        training.append(r)
        print(f"[{i + 1}/{len(batches)}] {device.type:<4} batch {b:>5}: {r['samples_per_second']:>9,.0f} samples/s, "
              f"{r['ms_per_step_median']:.3f} ms/step (p90 {r['ms_per_step_p90']:.3f}), {r['gflops']:.1f} GFLOP/s",
              file=sys.stderr, flush=True)
    if a.eval_repeats > 0:
        inference.append(bench_inference(xt, yt, a.seed, spec, a.eval_batch, a.eval_repeats, device))

    print(f"\nTraining ({a.steps} timed steps after {a.warmup} warm-up)")
    print(f"{'device':<6} {'batch':>6} {'samples/s':>11} {'ms/step':>10} {'p90 ms':>10} {'s/epoch':>9} {'GFLOP/s':>9}")
    for r in training:
        print(f"{r['device']:<6} {r['batch']:>6} {r['samples_per_second']:>11,.0f} {r['ms_per_step_median']:>10.3f} "
              f"{r['ms_per_step_p90']:>10.3f} {r['epoch_seconds']:>9.2f} {r['gflops']:>9.1f}")
    for r in inference:
        print(f"\nInference (the {r['samples']} test images in batches of {r['batch']}, {r['repeats']} passes): "
              f"{r['samples_per_second']:,.0f} samples/s, {r['gflops']:.1f} GFLOP/s")

    if a.json:
        result = {
            "tool": "pytorch",
            "torch_version": torch.__version__,
            "machine": {"cpu": cpu, "cores": cores, "threads": threads, "load_average_start": load,
                        "load_average_end": list(os.getloadavg())},
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "blas": sorted(blas_flavours()),
            "device": device.type,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "adam": adam,
            "adam_foreach": adam == "foreach",
            "libraries": loaded_blas(),
            "model": model_text,
            "layers": layer_string(spec["layers"]),
            "parameters": sum(t.numel() for t in make_model(spec, a.seed).parameters()),
            "optimizer": "adam (lr 0.001, beta1 0.9, beta2 0.999, epsilon 1e-07)",
            "dataset": a.dataset,
            "warmup": a.warmup,
            "steps": a.steps,
            "training": training,
            "inference": inference,
        }
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(tmp, a.json)
        print(f"Wrote {a.json}", file=sys.stderr)


if __name__ == "__main__":
    main()

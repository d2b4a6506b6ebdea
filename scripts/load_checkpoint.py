#!/usr/bin/env python3
"""Reads a cumnist checkpoint (safetensors layout) with numpy alone and runs the model.

As a module:
    from load_checkpoint import load_checkpoint, forward
    ckpt = load_checkpoint("runs/best.safetensors")
    logits = forward(ckpt, images)          # images: (n, 784) float32 in [0, 1]
    labels = logits.argmax(axis=1)

As a program: evaluates a checkpoint on an MNIST-format test set (IDX files, raw or .gz):
    python3 scripts/load_checkpoint.py runs/best.safetensors [--data DIR] [--dataset mnist] [--json OUT]

The file: 8 bytes little-endian header length, a JSON header mapping tensor names to dtype, shape
and data_offsets (relative to the data that follows the header), then the raw little-endian data.
"__metadata__" maps strings to strings; cumnist stores JSON text in every entry but "format".
The model: for each layer l, x <- act(x @ layers.{l}.weight.T + layers.{l}.bias), with the
activation (relu or sigmoid) after every layer but the last; dropout is a training-only thing.
"""

import argparse
import gzip
import json
import os
import struct
import sys

try:
    import numpy as np
except ImportError:  # pragma: no cover
    sys.exit(f"load_checkpoint.py needs numpy, which {sys.executable} lacks (Debian: apt-get install python3-numpy)")

MAX_HEADER_BYTES = 100 << 20


class Checkpoint:
    """Tensors (name -> float32 array) and metadata (decoded JSON values) of a checkpoint."""

    def __init__(self, tensors, metadata):
        self.tensors = tensors
        self.metadata = metadata
        self.model = metadata["model"]

    def layers(self):
        """[(weight (out, in), bias (out,)), ...] in order."""
        n_layers = len(self.model["hidden"]) + 1
        return [(self.tensors[f"layers.{l}.weight"], self.tensors[f"layers.{l}.bias"]) for l in range(n_layers)]


def load_checkpoint(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: {len(data)} bytes, too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8 or header_len > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header length {header_len} does not fit the file ({len(data)} bytes)")
    header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    body = memoryview(data)[8 + header_len :]
    raw_meta = header.pop("__metadata__", {})
    metadata = {k: (v if k == "format" else json.loads(v)) for k, v in raw_meta.items()}
    if metadata.get("format") != "cumnist":
        raise ValueError(f"{path}: not a cumnist checkpoint (metadata format {metadata.get('format')!r})")
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if not (0 <= begin <= end <= len(body)) or end - begin != 4 * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: tensor {name}: data_offsets {begin, end} do not fit shape {shape}")
        tensors[name] = np.frombuffer(body[begin:end], dtype="<f4").reshape(shape)
    return Checkpoint(tensors, metadata)


def forward(ckpt, x):
    """Logits (n, classes) for images x (n, inputs) scaled to [0, 1]; float32 like cumnist."""
    x = np.asarray(x, dtype=np.float32)
    activation = ckpt.model["activation"]
    layers = ckpt.layers()
    for l, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if l + 1 < len(layers):
            # sigmoid as 0.5·(1 + tanh(x/2)): the same function, without overflow warnings for large |x|
            x = np.maximum(x, np.float32(0)) if activation == "relu" else np.float32(0.5) * (1 + np.tanh(np.float32(0.5) * x))
    return x


def softmax_cross_entropy(logits, labels):
    """Per-sample -log p(label), max-subtracted, in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(z).sum(axis=1))
    return log_sum - z[np.arange(len(labels)), labels]


def read_idx(path):
    """An IDX file of unsigned bytes (raw or gzip) as a numpy array."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def default_data_dir():
    if os.environ.get("CUMNIST_DATA"):
        return os.environ["CUMNIST_DATA"]
    if os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.environ["XDG_CACHE_HOME"], "cumnist")
    return os.path.join(os.path.expanduser("~"), ".cache", "cumnist")


def load_test_set(data_dir, dataset):
    """(images (n, rows·cols) float32 in [0, 1], labels (n,) int64)."""
    def find(name):
        for candidate in (name, name + ".gz"):
            path = os.path.join(data_dir, dataset, candidate)
            if os.path.exists(path):
                return path
        raise FileNotFoundError(f"{os.path.join(data_dir, dataset, name)} not found (run scripts/fetch_data.sh)")

    images = read_idx(find("t10k-images-idx3-ubyte"))
    labels = read_idx(find("t10k-labels-idx1-ubyte"))
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0), labels.astype(np.int64)


def main():
    parser = argparse.ArgumentParser(description="Evaluate a cumnist checkpoint with numpy")
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default=default_data_dir(), help="data folder holding <dataset>/")
    parser.add_argument("--dataset", help="mnist or fashion (default: the checkpoint's)")
    parser.add_argument("--json", help="write loss, accuracy, predictions and logits' top-2 gaps here")
    args = parser.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    dataset = args.dataset or ckpt.metadata.get("dataset") or "mnist"
    x, y = load_test_set(args.data, dataset)
    logits = forward(ckpt, x)
    predictions = logits.argmax(axis=1)
    loss = float(softmax_cross_entropy(logits, y).mean())
    accuracy = float((predictions == y).mean())
    top2 = np.sort(logits, axis=1)[:, -2:]
    m = ckpt.model
    shape = "-".join(str(s) for s in [m["inputs"], *m["hidden"], m["classes"]])
    print(f"{args.checkpoint}: {shape} {m['activation']}, epoch {ckpt.metadata.get('epoch')}")
    print(f"{dataset} test: loss {loss:.4f}, accuracy {accuracy:.4f} ({int((predictions == y).sum())} of {len(y)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"loss": loss, "accuracy": accuracy, "predictions": predictions.tolist(),
                       "top2_gap": (top2[:, 1] - top2[:, 0]).tolist()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Reads a cumnist checkpoint (safetensors layout) with numpy alone and runs the model.

As a module:
    from load_checkpoint import load_checkpoint, forward
    ckpt = load_checkpoint("runs/best.safetensors")
    logits = forward(ckpt, images)          # images: (n, c·h·w) float32 in [0, 1], e.g. (n, 784)
    labels = logits.argmax(axis=1)
    print(ckpt.describe())                  # "784-512-256-10 relu, dropout 0.2" or "conv32k3same,relu,..."

As a program: evaluates a checkpoint on an MNIST-format test set (IDX files, raw or .gz):
    python3 scripts/load_checkpoint.py runs/best.safetensors [--data DIR] [--dataset mnist] [--json OUT]
It prints the model and its epoch, then the test loss and accuracy; --json writes loss, accuracy,
predictions and the gap between each image's top two logits. A file it cannot read (not a cumnist
checkpoint, an unknown layer type, a missing tensor or one of the wrong shape) exits 1 with one
line saying what is wrong.

The file: 8 bytes little-endian header length, a JSON header mapping tensor names to dtype, shape
and data_offsets (relative to the data that follows the header), then the raw little-endian data.
"__metadata__" maps strings to strings; cumnist stores JSON text in every entry but "format".

The model, __metadata__["model"]:
  format_version 2: {"input": [c, h, w], "classes": 10, "layers": [...]}, each layer one of
    {"type": "dense", "units": u}                      x (n, in) -> x @ W.T + b, W (u, in), b (u,)
    {"type": "conv2d", "filters": f, "kernel": [kh, kw], "stride": [sh, sw], "padding": "valid"|"same"}
                                                       W (f, c, kh, kw), b (f,); cross-correlation
    {"type": "maxpool2d", "pool": [kh, kw], "stride": [sh, sw]}            no padding, floor
    {"type": "flatten"}                                (n, c, h, w) -> (n, c·h·w), (c, h, w) order
    {"type": "dropout", "rate": r}                     training only: the identity here
    {"type": "activation", "activation": "relu"|"sigmoid"|"tanh"}
  Activations are NCHW, one image per row; a dense layer reads its input in (c, h, w) order.
  Padding "same" is Keras/TensorFlow/ONNX SAME_UPPER: out = ceil(in / stride),
  total = max((out - 1)·stride + k - in, 0), before = total // 2, after = total - before.
  format_version 1: {"inputs": 784, "hidden": [512, 256], "classes": 10, "activation": "relu",
    "dropout": 0.2}, an MLP, read as the same layer list: dense, activation, dropout (when > 0) per
    hidden layer, then dense<classes>; the input [1, 28, 28] for 784 inputs, else [1, 1, inputs].
Tensors: layers.{p}.weight and layers.{p}.bias, p counting only the layers with parameters (dense
and conv2d) in order; other tensors (the optimizer's state) are not read. Everything is float32,
like cumnist.
"""

import argparse
import gzip
import json
import os
import re
import struct
import sys

try:
    import numpy as np
except ImportError:  # pragma: no cover
    sys.exit(f"load_checkpoint.py needs numpy, which {sys.executable} lacks (Debian: apt-get install python3-numpy)")

MAX_HEADER_BYTES = 100 << 20
FORMAT_VERSION = 2  # the newest checkpoint format this reader knows
ACTIVATIONS = ("relu", "sigmoid", "tanh")
LAYER_TYPES = ("dense", "conv2d", "maxpool2d", "flatten", "dropout", "activation")
CNN_PRESET = "conv32k3same,relu,pool2,conv16k3same,relu,pool2,flatten,dropout0.25,dense128,relu,dropout0.5,dense10"
FORWARD_CHUNK = 256  # images per im2col block: bounds the memory a convolution's columns take


class ModelError(ValueError):
    """A model description (checkpoint metadata or layer string) that cannot be run."""


# --- model descriptions: layer lists, layer strings, shapes ----------------------------------------

def _pair(layer, key, where):
    v = layer.get(key)
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1
                                                       for i in v)):
        raise ModelError(f"{where}: '{key}' is {json.dumps(v)}, expected [height, width] of positive integers")
    return v


def _positive(layer, key, where):
    v = layer.get(key)
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        raise ModelError(f"{where}: '{key}' is {json.dumps(v)}, expected a positive integer")
    return v


def check_layer(layer, index):
    """A layer dict checked for its type's fields; raises ModelError saying what is wrong."""
    where = f"layer {index + 1}"
    if not isinstance(layer, dict):
        raise ModelError(f"{where} is {json.dumps(layer)[:60]}, expected an object")
    t = layer.get("type")
    if t not in LAYER_TYPES:
        raise ModelError(f"{where} has unknown type {json.dumps(t)} (expected {', '.join(LAYER_TYPES)})")
    where = f"{where} ({t})"
    if t == "dense":
        _positive(layer, "units", where)
    elif t == "conv2d":
        _positive(layer, "filters", where)
        _pair(layer, "kernel", where)
        _pair(layer, "stride", where)
        if layer.get("padding") not in ("valid", "same"):
            raise ModelError(f"{where}: padding is {json.dumps(layer.get('padding'))}, expected \"valid\" or \"same\"")
    elif t == "maxpool2d":
        _pair(layer, "pool", where)
        _pair(layer, "stride", where)
    elif t == "dropout":
        r = layer.get("rate")
        if not (isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1):
            raise ModelError(f"{where}: rate is {json.dumps(r)}, expected a number in [0, 1)")
    elif t == "activation":
        if layer.get("activation") not in ACTIVATIONS:
            raise ModelError(f"{where}: activation {json.dumps(layer.get('activation'))} is not one of "
                             f"{', '.join(ACTIVATIONS)}")
    return layer


def _number(v):
    """A rate as cumnist prints it: 0.25, 0.5, 0 (no trailing .0)."""
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def layer_token(layer):
    """A layer's token in cumnist's layer string: dense10, conv32k3same, conv8k3x5s2, pool2, dropout0.5, relu."""
    t = layer["type"]
    if t == "dense":
        return f"dense{layer['units']}"
    if t in ("conv2d", "maxpool2d"):
        (kh, kw), (sh, sw) = layer["kernel" if t == "conv2d" else "pool"], layer["stride"]
        window = f"{kh}" if kh == kw else f"{kh}x{kw}"
        if t == "conv2d":
            stride = "" if (sh, sw) == (1, 1) else f"s{sh}" if sh == sw else f"s{sh}x{sw}"
            return f"conv{layer['filters']}k{window}{stride}{'same' if layer['padding'] == 'same' else ''}"
        stride = "" if (sh, sw) == (kh, kw) else f"s{sh}" if sh == sw else f"s{sh}x{sw}"
        return f"pool{window}{stride}"
    if t == "dropout":
        return f"dropout{_number(layer['rate'])}"
    if t == "activation":
        return layer["activation"]
    return t  # flatten


def layer_string(layers):
    return ",".join(layer_token(l) for l in layers)


def mlp_layers(hidden, classes, activation="relu", dropout=0.2):
    """The layer list of an MLP, as cumnist builds it (and reads a format version 1 checkpoint)."""
    layers = []
    for h in hidden:
        layers.append({"type": "dense", "units": h})
        if activation != "none":
            layers.append({"type": "activation", "activation": activation})
        if dropout > 0:
            layers.append({"type": "dropout", "rate": dropout})
    layers.append({"type": "dense", "units": classes})
    return layers


_TOKEN = {
    "dense": re.compile(r"dense(\d{1,9})"),
    "conv": re.compile(r"conv(\d{1,9})k(\d{1,9})(?:x(\d{1,9}))?(?:s(\d{1,9}))?(same)?"),
    "pool": re.compile(r"pool(\d{1,9})(?:x(\d{1,9}))?(?:s(\d{1,9}))?"),
    "dropout": re.compile(r"dropout([0-9.eE+-]+)"),
}


def parse_token(token):
    """One token of a layer string as a layer dict (the checkpoint's form); ModelError when invalid."""
    if token == "flatten":
        return {"type": "flatten"}
    if token in ACTIVATIONS:
        return {"type": "activation", "activation": token}
    for prefix, pattern in _TOKEN.items():
        if not token.startswith(prefix):
            continue
        m = pattern.fullmatch(token)
        if m is None:
            form = {"dense": "dense<units>, e.g. dense128", "conv": "conv<filters>k<kernel>[x<width>][s<stride>][same], e.g. conv32k3",
                    "pool": "pool<size>[x<width>][s<stride>], e.g. pool2", "dropout": "dropout<rate>, e.g. dropout0.5"}[prefix]
            raise ModelError(f"'{token}': expected {form}")
        if prefix == "dense":
            return {"type": "dense", "units": int(m[1])}
        if prefix == "conv":
            kh = int(m[2])
            kw = int(m[3]) if m[3] else kh
            s = int(m[4]) if m[4] else 1
            return {"type": "conv2d", "filters": int(m[1]), "kernel": [kh, kw], "stride": [s, s],
                    "padding": "same" if m[5] else "valid"}
        if prefix == "pool":
            kh = int(m[1])
            kw = int(m[2]) if m[2] else kh
            stride = [int(m[3])] * 2 if m[3] else [kh, kw]
            return {"type": "maxpool2d", "pool": [kh, kw], "stride": stride}
        try:
            rate = float(m[1])
        except ValueError:
            raise ModelError(f"'{token}': expected dropout<rate>, e.g. dropout0.5") from None
        return {"type": "dropout", "rate": rate}
    raise ModelError(f"'{token}': unknown layer (expected dense<units>, conv<filters>k<kernel>[s<stride>][same], "
                     "pool<size>[s<stride>], flatten, dropout<rate>, relu, sigmoid or tanh)")


def parse_model(text, input_shape=(1, 28, 28), classes=10, hidden=(512, 256), activation="relu", dropout=0.2):
    """A model as cumnist's --model takes it: "mlp" (the MLP of hidden, activation, dropout), "cnn"
    (the preset) or comma-separated layer tokens. Returns {"input", "classes", "layers"}, checked
    with shapes(); raises ModelError with the reason otherwise."""
    if text == "mlp":
        layers = mlp_layers(hidden, classes, activation, dropout)
    else:
        tokens = (CNN_PRESET if text == "cnn" else text).split(",")
        if any(not t for t in tokens):
            raise ModelError(f"empty layer in '{text}' (expected mlp, cnn or comma-separated layers)")
        layers = [parse_token(t) for t in tokens]
    model = {"input": list(input_shape), "classes": classes, "layers": layers}
    shapes(model)
    return model


def same_padding(size, k, stride):
    """(before, after) for SAME_UPPER padding of one dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def conv_padding(layer, in_shape):
    """((top, bottom), (left, right)) for a conv2d layer on a (c, h, w) input."""
    if layer["padding"] != "same":
        return (0, 0), (0, 0)
    (kh, kw), (sh, sw) = layer["kernel"], layer["stride"]
    return same_padding(in_shape[1], kh, sh), same_padding(in_shape[2], kw, sw)


def shapes(model):
    """The (c, h, w) output of each layer (a flat vector of n is (n, 1, 1)), with the checks cumnist
    makes: dense needs flatten after a convolution or pooling, conv and pool need a spatial input,
    the last output is one value per class. Raises ModelError naming the layer."""
    inp = model.get("input")
    if not (isinstance(inp, list) and len(inp) == 3 and all(isinstance(i, int) and i >= 1 for i in inp)):
        raise ModelError(f"input is {json.dumps(inp)}, expected [channels, height, width] of positive integers")
    classes = model.get("classes")
    if not (isinstance(classes, int) and 2 <= classes <= 256):
        raise ModelError(f"classes is {json.dumps(classes)}, expected an integer in [2, 256]")
    layers = model.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ModelError(f"layers is {json.dumps(layers)[:60]}, expected a non-empty array")
    out, s = [], tuple(inp)
    spatial = False  # the previous layer was a convolution or pooling: flatten before dense
    params = False
    for i, layer in enumerate(layers):
        check_layer(layer, i)
        t = layer["type"]
        where = f"layer {i + 1} '{layer_token(layer)}'"
        flat = s[1] == 1 and s[2] == 1 and not spatial and i > 0
        if t == "dense":
            if spatial:
                raise ModelError(f"{where}: dense after a {s[0]}x{s[1]}x{s[2]} spatial output needs 'flatten' before it")
            s = (layer["units"], 1, 1)
            params = True
        elif t in ("conv2d", "maxpool2d"):
            if flat:
                raise ModelError(f"{where}: needs a (channels, height, width) input, got a flat vector of {s[0]}")
            (kh, kw), (sh, sw) = layer["kernel" if t == "conv2d" else "pool"], layer["stride"]
            if t == "conv2d" and layer["padding"] == "same":
                oh, ow = -(-s[1] // sh), -(-s[2] // sw)
            else:
                if kh > s[1] or kw > s[2]:
                    raise ModelError(f"{where}: the {kh}x{kw} window is larger than its {s[1]}x{s[2]} input")
                oh, ow = (s[1] - kh) // sh + 1, (s[2] - kw) // sw + 1
            s = (layer["filters"] if t == "conv2d" else s[0], oh, ow)
            spatial = True
            params = params or t == "conv2d"
        elif t == "flatten":
            s = (s[0] * s[1] * s[2], 1, 1)
            spatial = False
        out.append(s)
    if not params:
        raise ModelError(f"'{layer_string(layers)}' has no layer with parameters (dense or conv2d)")
    if spatial or s[0] * s[1] * s[2] != classes:
        raise ModelError(f"'{layer_string(layers)}' ends in {s[0] * s[1] * s[2]} values per image, expected {classes} "
                         f"(one per class)")
    return out


def as_mlp(model):
    """(inputs, hidden, activation, dropout) when the model is the MLP cumnist builds from those
    (so it describes it as one), else None."""
    hidden, activation, dropout = [], "none", 0.0
    for layer in model["layers"]:
        t = layer["type"]
        if t == "dense":
            hidden.append(layer["units"])
        elif t == "activation":
            activation = layer["activation"]
        elif t == "dropout":
            dropout = layer["rate"]
        else:
            return None
    if not hidden or hidden[-1] != model["classes"]:
        return None
    hidden.pop()
    c, h, w = model["input"]
    inputs = c * h * w
    expected_input = [1, 28, 28] if inputs == 784 else [1, 1, inputs]
    rebuilt = mlp_layers(hidden, model["classes"], activation, dropout)
    if list(model["input"]) != expected_input or layer_string(rebuilt) != layer_string(model["layers"]):
        return None
    return inputs, hidden, activation, dropout


def describe(model):
    """The model as cumnist describes it: "784-512-256-10 relu, dropout 0.2" for an MLP, else its
    layer string ("conv4k3,relu,pool2,flatten,dense10")."""
    mlp = as_mlp(model)
    if mlp is None:
        return layer_string(model["layers"])
    inputs, hidden, activation, dropout = mlp
    shape = "-".join(str(s) for s in [inputs, *hidden, model["classes"]])
    return shape if not hidden else f"{shape} {activation}, dropout {_number(dropout)}"


def layer_macs(model):
    """Multiply-adds per image of each layer with parameters, as cumnist counts them: in·out for a
    dense layer, out_h·out_w·filters·in_c·kh·kw for a convolution."""
    macs, s = [], tuple(model["input"])
    for layer, out in zip(model["layers"], shapes(model)):
        if layer["type"] == "dense":
            macs.append(s[0] * s[1] * s[2] * layer["units"])
        elif layer["type"] == "conv2d":
            kh, kw = layer["kernel"]
            macs.append(out[0] * out[1] * out[2] * s[0] * kh * kw)
        s = out
    return macs


def legacy_model(m):
    """A format version 1 model (an MLP) as the version 2 layer list."""
    if not isinstance(m, dict):
        raise ModelError(f"model is {json.dumps(m)[:80]}, expected an object")
    missing = [k for k in ("inputs", "hidden", "classes", "activation", "dropout") if k not in m]
    if missing:
        raise ModelError(f"model {json.dumps(m)[:120]} has neither 'layers' (format version 2) nor "
                         f"{', '.join(missing)} (format version 1)")
    inputs, hidden = m["inputs"], m["hidden"]
    if not (isinstance(inputs, int) and inputs >= 1):
        raise ModelError(f"inputs is {json.dumps(inputs)}, expected a positive integer")
    if not (isinstance(hidden, list) and all(isinstance(h, int) and h >= 1 for h in hidden)):
        raise ModelError(f"hidden is {json.dumps(hidden)[:60]}, expected an array of positive integers")
    if m["activation"] not in ("relu", "sigmoid"):
        raise ModelError(f"activation {json.dumps(m['activation'])} is not relu or sigmoid")
    if not (isinstance(m["dropout"], (int, float)) and 0 <= m["dropout"] < 1):
        raise ModelError(f"dropout is {json.dumps(m['dropout'])}, expected a number in [0, 1)")
    return {"input": [1, 28, 28] if inputs == 784 else [1, 1, inputs], "classes": m["classes"],
            "layers": mlp_layers(hidden, m["classes"], m["activation"], m["dropout"])}


# --- the checkpoint -------------------------------------------------------------------------------

class Checkpoint:
    """Tensors (name -> float32 array) and metadata (decoded JSON values) of a checkpoint.
    model: the model as format version 2 describes it ({"input", "classes", "layers"}; a version 1
    MLP converted), checked against the tensors. Raises ModelError when they do not fit."""

    def __init__(self, tensors, metadata):
        self.tensors = tensors
        self.metadata = metadata
        self.format_version = metadata.get("format_version", 1)
        if not isinstance(self.format_version, int) or self.format_version < 1:
            raise ModelError(f"__metadata__ 'format_version' is {json.dumps(self.format_version)}, expected 1 or 2")
        if self.format_version > FORMAT_VERSION:
            raise ModelError(f"format version {self.format_version} is newer than this reader knows "
                             f"(version {FORMAT_VERSION}); update scripts/load_checkpoint.py")
        if "model" not in metadata:
            raise ModelError("__metadata__ has no 'model'")
        raw = metadata["model"]
        try:
            self.model = raw if isinstance(raw, dict) and "layers" in raw else legacy_model(raw)
            self.shapes = shapes(self.model)
        except ModelError as e:
            raise ModelError(f"__metadata__ 'model': {e}") from None
        self.params = self._check_tensors()

    def _check_tensors(self):
        params, in_shape, p = [], tuple(self.model["input"]), 0
        for i, (layer, out) in enumerate(zip(self.model["layers"], self.shapes)):
            t = layer["type"]
            if t in ("dense", "conv2d"):
                if t == "dense":
                    w_shape = (layer["units"], in_shape[0] * in_shape[1] * in_shape[2])
                else:
                    w_shape = (layer["filters"], in_shape[0], *layer["kernel"])
                pair = []
                for name, shape in ((f"layers.{p}.weight", w_shape), (f"layers.{p}.bias", (w_shape[0],))):
                    where = f"layer {i + 1} '{layer_token(layer)}'"
                    if name not in self.tensors:
                        raise ModelError(f"tensor {name} is missing ({where} needs it, shape {shape})")
                    if tuple(self.tensors[name].shape) != shape:
                        raise ModelError(f"tensor {name} has shape {tuple(self.tensors[name].shape)}, expected {shape} "
                                         f"for {where}")
                    pair.append(self.tensors[name])
                params.append(tuple(pair))
                p += 1
            in_shape = out
        extra = sorted(n for n in self.tensors
                       if n.startswith("layers.") and not any(n == f"layers.{q}.{k}" for q in range(p)
                                                              for k in ("weight", "bias")))
        if extra:
            raise ModelError(f"tensor {extra[0]} belongs to no layer of '{layer_string(self.model['layers'])}' "
                             f"({p} layers with parameters)")
        return params

    def layers(self):
        """[(weight, bias), ...] of the layers with parameters, in order: dense weights (out, in),
        conv2d weights (out, in, kh, kw), biases (out,)."""
        return list(self.params)

    def layer_string(self):
        return layer_string(self.model["layers"])

    def describe(self):
        return describe(self.model)


def load_checkpoint(path):
    """The checkpoint at path; ValueError (ModelError for the model) saying what is wrong otherwise."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: {len(data)} bytes, too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8 or header_len > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header length {header_len} does not fit the file ({len(data)} bytes)")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object")
    body = memoryview(data)[8 + header_len :]
    raw_meta = header.pop("__metadata__", {})
    if not isinstance(raw_meta, dict):
        raise ValueError(f"{path}: __metadata__ is not an object of strings")
    metadata = {}
    for k, v in raw_meta.items():
        if k == "format":
            metadata[k] = v
            continue
        try:
            metadata[k] = json.loads(v)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: __metadata__ '{k}' is not JSON text ({e})") from None
    if metadata.get("format") != "cumnist":
        raise ValueError(f"{path}: not a cumnist checkpoint (metadata format {metadata.get('format')!r})")
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise ValueError(f"{path}: tensor {name}: expected dtype, shape and data_offsets, found {json.dumps(info)[:80]}")
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if not (0 <= begin <= end <= len(body)) or end - begin != 4 * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: tensor {name}: data_offsets {begin, end} do not fit shape {shape}")
        tensors[name] = np.frombuffer(body[begin:end], dtype="<f4").reshape(shape)
    try:
        return Checkpoint(tensors, metadata)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None


# --- the forward pass -----------------------------------------------------------------------------

def _windows(x, kh, kw, sh, sw, oh, ow):
    """(n, c, oh, ow, kh, kw) view of x (n, c, h, w): the kh x kw windows at stride (sh, sw)."""
    v = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return v[:, :, ::sh, ::sw][:, :, :oh, :ow]


def conv2d(x, w, b, stride, padding):
    """x (n, c, h, w) -> (n, f, oh, ow): im2col and one matmul; padding ((top, bottom), (left, right))."""
    (top, bottom), (left, right) = padding
    if top or bottom or left or right:
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    sh, sw = stride
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    cols = _windows(x, kh, kw, sh, sw, oh, ow).transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)
    y = cols @ w.reshape(f, c * kh * kw).T + b
    return np.ascontiguousarray(y.reshape(n, oh, ow, f).transpose(0, 3, 1, 2))


def maxpool2d(x, pool, stride):
    kh, kw = pool
    sh, sw = stride
    oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    return _windows(x, kh, kw, sh, sw, oh, ow).max(axis=(4, 5))


def activation(x, name):
    if name == "relu":
        return np.maximum(x, np.float32(0))
    if name == "sigmoid":
        # 0.5·(1 + tanh(x/2)): the same function, without overflow warnings for large |x|
        return np.float32(0.5) * (1 + np.tanh(np.float32(0.5) * x))
    return np.tanh(x)


def _forward_block(ckpt, x):
    c, h, w = ckpt.model["input"]
    x = x.reshape(len(x), c, h, w)
    in_shape, p = (c, h, w), 0
    for layer, out in zip(ckpt.model["layers"], ckpt.shapes):
        t = layer["type"]
        if t == "dense":
            wt, b = ckpt.params[p]
            p += 1
            x = x.reshape(len(x), -1) @ wt.T + b
        elif t == "conv2d":
            wt, b = ckpt.params[p]
            p += 1
            x = conv2d(x, wt, b, layer["stride"], conv_padding(layer, in_shape))
        elif t == "maxpool2d":
            x = maxpool2d(x, layer["pool"], layer["stride"])
        elif t == "flatten":
            x = x.reshape(len(x), -1)
        elif t == "activation":
            x = activation(x, layer["activation"])
        # dropout: training only, the identity at inference
        x = x.reshape(len(x), *out)  # (n, c, h, w) throughout; dense outputs (n, units, 1, 1)
        in_shape = out
    return x.reshape(len(x), -1)


def forward(ckpt, x):
    """Logits (n, classes) for images x (n, c·h·w) scaled to [0, 1]; float32 like cumnist."""
    x = np.asarray(x, dtype=np.float32)
    c, h, w = ckpt.model["input"]
    if x.ndim != 2 or x.shape[1] != c * h * w:
        raise ValueError(f"forward: images of shape {x.shape}, expected (n, {c * h * w}) for the model's "
                         f"{c}x{h}x{w} input")
    spatial = any(l["type"] in ("conv2d", "maxpool2d") for l in ckpt.model["layers"])
    chunk = FORWARD_CHUNK if spatial else max(len(x), 1)  # an MLP in one go, as before
    if len(x) <= chunk:
        return _forward_block(ckpt, x)
    return np.concatenate([_forward_block(ckpt, x[i : i + chunk]) for i in range(0, len(x), chunk)])


# --- the test set and the command line ------------------------------------------------------------

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

    try:
        ckpt = load_checkpoint(args.checkpoint)
        dataset = args.dataset or ckpt.metadata.get("dataset") or "mnist"
        x, y = load_test_set(args.data, dataset)
        logits = forward(ckpt, x)
    except (OSError, ValueError) as e:
        print(f"load_checkpoint.py: {e}", file=sys.stderr)
        return 1
    predictions = logits.argmax(axis=1)
    loss = float(softmax_cross_entropy(logits, y).mean())
    accuracy = float((predictions == y).mean())
    top2 = np.sort(logits, axis=1)[:, -2:]
    print(f"{args.checkpoint}: {ckpt.describe()}, epoch {ckpt.metadata.get('epoch')}")
    print(f"{dataset} test: loss {loss:.4f}, accuracy {accuracy:.4f} ({int((predictions == y).sum())} of {len(y)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"loss": loss, "accuracy": accuracy, "predictions": predictions.tolist(),
                       "top2_gap": (top2[:, 1] - top2[:, 0]).tolist()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

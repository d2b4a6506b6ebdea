// ONNX export of a trained checkpoint, for inference anywhere ONNX runs (ONNX Runtime, TensorRT,
// OpenCV's DNN module, the browser).
//
// The graph, opset kOnnxOpset, one node per layer (dropout disappears at inference):
//   input   "input"  float [N, C, H, W] (N symbolic), pixels / 255 in [0, 1], as cumnist trains:
//           [N, 1, 28, 28] for MNIST (an MLP reads the image through a Flatten)
//   Dense   Gemm(x, W, b, transB = 1), W stored (out, in); a Flatten first when x is an image
//   Conv2D  Conv(x, W, b), W stored (out, in, kh, kw), explicit pads [top, left, bottom, right]
//   MaxPool2D MaxPool (floor: no partial windows); Flatten; Relu, Sigmoid, Tanh
//   output  "logits" float [N, classes]; with `softmax` also "probabilities" = Softmax(logits, axis 1)
// The model's metadata_props: "architecture" (the layer string), "model" (the checkpoint's layer
// list as JSON), "dataset", "epochs" (completed), "test_accuracy" (the last epoch's; "validation_accuracy" for a run with a validation split), "class_names"
// (a JSON array: the digits, or Fashion-MNIST's names), "input" and "output" (their meaning).
#pragma once

#include <string>

#include "cumnist/checkpoint.h"

namespace cumnist {

constexpr int kOnnxOpset = 13;

struct OnnxExportOptions {
    bool softmax = false;  // add the "probabilities" output
};

// The exported input's per-image shape: the model's, except that a flat kMnistSide² vector (a
// version-1 MLP checkpoint) is the 1 x 28 x 28 image it is.
Shape onnx_input_shape(const ModelSpec& spec);

// Whether this build can export (it was built with Debian's libonnx-dev and libprotobuf-dev).
bool onnx_export_available();

// The serialized ModelProto. The model has passed the ONNX checker with strict shape inference,
// and its inferred output shape is [N, classes], before it is returned. Throws Error when this
// build has no ONNX support or the checkpoint's model cannot be expressed.
std::string export_onnx(const Checkpoint& checkpoint, const OnnxExportOptions& options = {});

}  // namespace cumnist

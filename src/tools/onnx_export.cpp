// ONNX export (onnx_export.h): the checkpoint's layers as ONNX nodes, its parameters as
// initializers, written with the ONNX protobuf classes and checked with the ONNX checker.
#include "cumnist/onnx_export.h"

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "cumnist/error.h"
#include "cumnist/image.h"
#include "model/layer.h"

#if defined(CUMNIST_WITH_ONNX)
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#endif

namespace cumnist {

Shape onnx_input_shape(const ModelSpec& spec) {
    const Shape& s = spec.input;
    if (s.h == 1 && s.w == 1 && s.c == kMnistSide * kMnistSide) return Shape{1, kMnistSide, kMnistSide};
    return s;
}

#if defined(CUMNIST_WITH_ONNX)

namespace {

constexpr int kIrVersion = 7;  // the IR version of opset 13 (ONNX 1.8)

class GraphBuilder {
public:
    explicit GraphBuilder(onnx::GraphProto* g) : m_g(g) {}

    // A float tensor of `dims` holding `values`, little-endian as ONNX stores raw data.
    void initializer(const std::string& name, const std::vector<int64_t>& dims, const float* values, std::size_t n) {
        onnx::TensorProto* t = m_g->add_initializer();
        t->set_name(name);
        t->set_data_type(onnx::TensorProto_DataType_FLOAT);
        for (int64_t d : dims) t->add_dims(d);
        std::string raw(n * 4, '\0');
        for (std::size_t i = 0; i < n; ++i) {
            uint32_t bits = 0;
            std::memcpy(&bits, &values[i], 4);
            for (int b = 0; b < 4; ++b) raw[4 * i + b] = static_cast<char>((bits >> (8 * b)) & 0xffu);
        }
        t->set_raw_data(std::move(raw));
    }

    // Adds a node reading `inputs`; returns the name of its output.
    onnx::NodeProto* node(const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
                          const std::string& output) {
        onnx::NodeProto* n = m_g->add_node();
        n->set_op_type(op);
        n->set_name(name);
        for (const std::string& in : inputs) n->add_input(in);
        n->add_output(output);
        return n;
    }

    static void attribute(onnx::NodeProto* n, const std::string& name, int64_t value) {
        onnx::AttributeProto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto_AttributeType_INT);
        a->set_i(value);
    }
    static void attribute(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& values) {
        onnx::AttributeProto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto_AttributeType_INTS);
        for (int64_t v : values) a->add_ints(v);
    }

    // A graph input or output: float, a symbolic batch dimension "N", then `dims`.
    static void describe(onnx::ValueInfoProto* v, const std::string& name, const std::vector<int64_t>& dims,
                         const std::string& doc) {
        v->set_name(name);
        v->set_doc_string(doc);
        onnx::TypeProto_Tensor* t = v->mutable_type()->mutable_tensor_type();
        t->set_elem_type(onnx::TensorProto_DataType_FLOAT);
        onnx::TensorShapeProto* shape = t->mutable_shape();
        shape->add_dim()->set_dim_param("N");
        for (int64_t d : dims) shape->add_dim()->set_dim_value(d);
    }

private:
    onnx::GraphProto* m_g;
};

const char* onnx_activation(Activation a) {
    switch (a) {
        case Activation::Relu: return "Relu";
        case Activation::Sigmoid: return "Sigmoid";
        case Activation::Tanh: return "Tanh";
        case Activation::None: break;
    }
    throw Error("ONNX export: an activation layer without an activation");
}

std::string class_names_json(const std::string& dataset, int classes) {
    std::vector<std::string> names = class_names(dataset);
    if (static_cast<int>(names.size()) != classes) {
        names.clear();
        for (int k = 0; k < classes; ++k) names.push_back(std::to_string(k));
    }
    return nlohmann::json(names).dump();
}

void add_metadata(onnx::ModelProto& m, const std::string& key, const std::string& value) {
    onnx::StringStringEntryProto* p = m.add_metadata_props();
    p->set_key(key);
    p->set_value(value);
}

// The checker's verdict, and strict shape inference (onnx.checker.check_model(full_check=True)).
void check(const onnx::ModelProto& m) {
    try {
        onnx::checker::check_model(m);
        onnx::ModelProto inferred = m;
        onnx::shape_inference::InferShapes(inferred, onnx::OpSchemaRegistry::Instance(),
                                           onnx::ShapeInferenceOptions(/*check_type=*/true, /*strict_mode=*/1));
    } catch (const std::exception& e) {
        throw Error(fmt::format("ONNX export: the exported model fails the ONNX checker: {}", e.what()));
    }
}

}  // namespace

bool onnx_export_available() { return true; }

std::string export_onnx(const Checkpoint& checkpoint, const OnnxExportOptions& options) {
    const ModelSpec& spec = checkpoint.meta.model;
    const std::vector<Shape> shapes = spec.shapes();
    const std::vector<LayerLayout> layout = layer_layout(spec);
    if (checkpoint.parameters.size() != parameter_count(spec))
        throw Error(fmt::format("ONNX export: the checkpoint holds {} parameters, its model {}",
                                checkpoint.parameters.size(), parameter_count(spec)));

    onnx::ModelProto m;
    m.set_ir_version(kIrVersion);
    m.set_producer_name("cumnist");
    m.set_producer_version(CUMNIST_VERSION);
    m.set_model_version(1);
    m.set_doc_string(fmt::format("{} trained by cumnist on {}", spec.describe(),
                                 checkpoint.meta.dataset.empty() ? "unknown data" : checkpoint.meta.dataset));
    onnx::OperatorSetIdProto* opset = m.add_opset_import();
    opset->set_domain("");
    opset->set_version(kOnnxOpset);
    onnx::GraphProto* g = m.mutable_graph();
    g->set_name("cumnist");
    GraphBuilder b(g);

    const Shape input = onnx_input_shape(spec);
    GraphBuilder::describe(g->add_input(), "input", {input.c, input.h, input.w},
                           "images, pixels / 255 in [0, 1] (light ink on black, as MNIST)");
    std::string x = "input";
    bool flat = false;
    Shape in = spec.input;  // the shape cumnist's layers see (flat for a version-1 MLP)
    int p = 0, produced = 0;
    auto next = [&](const std::string& what) { return fmt::format("{}_{}", what, produced++); };
    for (std::size_t i = 0; i < spec.layers.size(); ++i) {
        const LayerSpec& l = spec.layers[i];
        const std::string name = fmt::format("layers.{}.{}", i, to_string(l.kind));
        switch (l.kind) {
            case LayerKind::Dense: {
                if (!flat) {
                    const std::string y = next("flatten");
                    GraphBuilder::attribute(b.node("Flatten", name + ".flatten", {x}, y), "axis", 1);
                    x = y, flat = true;
                }
                const LayerLayout& ll = layout[p];
                const std::string w = fmt::format("layers.{}.weight", p), bias = fmt::format("layers.{}.bias", p);
                b.initializer(w, {ll.out, ll.in}, checkpoint.parameters.data() + ll.w_offset,
                              static_cast<std::size_t>(ll.out) * ll.in);
                b.initializer(bias, {ll.out}, checkpoint.parameters.data() + ll.b_offset, static_cast<std::size_t>(ll.out));
                const std::string y = next("dense");
                GraphBuilder::attribute(b.node("Gemm", name, {x, w, bias}, y), "transB", 1);
                x = y, ++p;
                break;
            }
            case LayerKind::Conv2D: {
                const Conv2dGeometry c = conv_geometry(l, in);
                const LayerLayout& ll = layout[p];
                const std::string w = fmt::format("layers.{}.weight", p), bias = fmt::format("layers.{}.bias", p);
                b.initializer(w, {c.out_c, c.in_c, c.k_h, c.k_w}, checkpoint.parameters.data() + ll.w_offset,
                              static_cast<std::size_t>(ll.out) * ll.in);
                b.initializer(bias, {c.out_c}, checkpoint.parameters.data() + ll.b_offset, static_cast<std::size_t>(ll.out));
                const std::string y = next("conv");
                onnx::NodeProto* n = b.node("Conv", name, {x, w, bias}, y);
                GraphBuilder::attribute(n, "kernel_shape", {c.k_h, c.k_w});
                GraphBuilder::attribute(n, "strides", {c.stride_h, c.stride_w});
                GraphBuilder::attribute(n, "pads", {c.pad_top, c.pad_left, c.pad_bottom, c.pad_right});
                x = y, ++p;
                break;
            }
            case LayerKind::MaxPool2D: {
                const std::string y = next("pool");
                onnx::NodeProto* n = b.node("MaxPool", name, {x}, y);
                GraphBuilder::attribute(n, "kernel_shape", {l.k_h, l.k_w});
                GraphBuilder::attribute(n, "strides", {l.stride_h, l.stride_w});
                x = y;
                break;
            }
            case LayerKind::Flatten: {
                const std::string y = next("flatten");
                GraphBuilder::attribute(b.node("Flatten", name, {x}, y), "axis", 1);
                x = y, flat = true;
                break;
            }
            case LayerKind::Activation: {
                const std::string y = next(to_string(l.activation));
                b.node(onnx_activation(l.activation), name, {x}, y);
                x = y;
                break;
            }
            case LayerKind::Dropout: break;  // the identity at inference
        }
        in = shapes[i];
    }
    // The last tensor is the logits: renamed where it is produced.
    for (onnx::NodeProto& n : *g->mutable_node())
        if (n.output(0) == x) n.set_output(0, "logits");
    GraphBuilder::describe(g->add_output(), "logits", {spec.classes}, "one score per class; the largest is the prediction");
    if (options.softmax) {
        GraphBuilder::attribute(b.node("Softmax", "probabilities", {"logits"}, "probabilities"), "axis", 1);
        GraphBuilder::describe(g->add_output(), "probabilities", {spec.classes}, "softmax of the logits");
    }

    const CheckpointMeta& meta = checkpoint.meta;
    add_metadata(m, "architecture", spec.layer_string());
    add_metadata(m, "model", model_to_json(spec).dump());
    add_metadata(m, "dataset", meta.dataset);
    add_metadata(m, "epochs", std::to_string(meta.epoch));
    if (!meta.history.empty() && std::isfinite(meta.history.back().test_accuracy))
        add_metadata(m, meta.history.back().on_validation ? "validation_accuracy" : "test_accuracy",
                     fmt::format("{:.4f}", meta.history.back().test_accuracy));
    add_metadata(m, "class_names", class_names_json(meta.dataset, spec.classes));
    add_metadata(m, "input", fmt::format("float [N, {}, {}, {}]: pixels / 255 in [0, 1], light ink on black", input.c,
                                         input.h, input.w));
    add_metadata(m, "output", options.softmax ? "logits [N, classes]; probabilities [N, classes] = softmax(logits)"
                                              : "logits [N, classes]");
    check(m);
    std::string bytes;
    if (!m.SerializeToString(&bytes)) throw Error("ONNX export: the model could not be serialized");
    return bytes;
}

#else  // !defined(CUMNIST_WITH_ONNX)

bool onnx_export_available() { return false; }

std::string export_onnx(const Checkpoint&, const OnnxExportOptions&) {
    throw Error("this build of cumnist has no ONNX export: install libonnx-dev and libprotobuf-dev (scripts/setup.sh) "
                "and rebuild");
}

#endif

}  // namespace cumnist

// ONNX export (onnx_export.h) as the library sees it: every layer kind exports and passes the ONNX
// checker with strict shape inference (export_onnx runs both before it returns), the parameters
// go in as the checkpoint's tensors, and the refusals. What the exported models compute is checked
// against an independent engine (OpenCV's DNN module) in tests/test_onnx_export.sh.
#include <gtest/gtest.h>

#include <string>

#include "cumnist/checkpoint.h"
#include "cumnist/error.h"
#include "cumnist/onnx_export.h"

namespace {

using namespace cumnist;

Checkpoint checkpoint_of(const std::string& layers) {
    Checkpoint c;
    c.meta.model = parse_model(layers, Shape{1, 28, 28}, 10);
    c.meta.dataset = "mnist";
    c.parameters = glorot_uniform_init(c.meta.model, 3);
    return c;
}

std::string error_of_export(const Checkpoint& c) {
    try {
        (void)export_onnx(c);
    } catch (const Error& e) {
        return e.what();
    }
    return "<no error>";
}

TEST(OnnxExport, EveryLayerKindPassesTheCheckerAndCarriesItsTensors) {
    if (!onnx_export_available()) {
        EXPECT_NE(error_of_export(checkpoint_of("mlp")).find("has no ONNX export: install libonnx-dev"), std::string::npos);
        GTEST_SKIP() << "this build has no ONNX export (libonnx-dev and libprotobuf-dev were not found)";
    }
    for (const std::string layers :
         {"mlp", "cnn", "conv4k3s2same,tanh,pool2,conv6k3,sigmoid,flatten,dropout0.1,dense32,relu,dense10",
          "conv3k5x3s1x2,relu,pool3x2s1x2,flatten,dense10", "dense10", "flatten,dense16,sigmoid,dense10,relu"}) {
        const Checkpoint c = checkpoint_of(layers);
        for (bool softmax : {false, true}) {
            OnnxExportOptions options;
            options.softmax = softmax;
            std::string bytes;
            ASSERT_NO_THROW(bytes = export_onnx(c, options)) << layers;
            // Protobuf stores strings as they are: the names, the metadata and the raw float bytes.
            EXPECT_NE(bytes.find("cumnist"), std::string::npos) << layers;
            EXPECT_NE(bytes.find(c.meta.model.layer_string()), std::string::npos) << layers;
            const std::size_t params = layer_layout(c.meta.model).size();
            for (std::size_t p = 0; p < params; ++p)
                EXPECT_NE(bytes.find("layers." + std::to_string(p) + ".weight"), std::string::npos) << layers;
            EXPECT_EQ(bytes.find("probabilities") != std::string::npos, softmax) << layers;
            EXPECT_GT(bytes.size(), parameter_count(c.meta.model) * 4) << "every parameter is in the file";
            EXPECT_NE(bytes.find(std::string(reinterpret_cast<const char*>(c.parameters.data()), 64)), std::string::npos)
                << layers << ": the first weights, as little-endian float32";
        }
    }
}

TEST(OnnxExport, RefusesACheckpointWhoseParametersDoNotMatchItsModel) {
    if (!onnx_export_available()) GTEST_SKIP() << "this build has no ONNX export";
    Checkpoint c = checkpoint_of("dense10");
    c.parameters.pop_back();
    EXPECT_NE(error_of_export(c).find("the checkpoint holds 7849 parameters, its model 7850"), std::string::npos)
        << error_of_export(c);
}

// A version-1 MLP checkpoint describes its input as 784 values; the export takes the image.
TEST(OnnxExport, FlatMnistInputIsExportedAsTheImage) {
    ModelSpec flat = parse_model("dense10", Shape{784, 1, 1}, 10);
    EXPECT_EQ(onnx_input_shape(flat), (Shape{1, 28, 28}));
    EXPECT_EQ(onnx_input_shape(parse_model("dense10", Shape{1, 14, 14}, 10)), (Shape{1, 14, 14}));
}

}  // namespace

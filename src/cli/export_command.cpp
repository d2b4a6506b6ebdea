// `cumnist export`: a trained checkpoint as an ONNX model (onnx_export.h), for ONNX Runtime,
// TensorRT, OpenCV's DNN module and the browser.
#include <memory>

#include "cli_common.h"
#include "cumnist/checkpoint.h"
#include "cumnist/onnx_export.h"

namespace cumnist::cli {
namespace {

struct ExportOptions {
    std::string model;
    std::string onnx;
    bool softmax = false;
};

int run_export(const ExportOptions& o) {
    if (!onnx_export_available()) (void)export_onnx(Checkpoint{}, {});  // says what to install
    require_distinct({{"--onnx", o.onnx}}, {{"--model", o.model}});
    require_writable(o.onnx, "--onnx");
    const Checkpoint checkpoint = load_checkpoint(o.model);
    OnnxExportOptions options;
    options.softmax = o.softmax;
    const std::string bytes = export_onnx(checkpoint, options);
    write_file_atomically(o.onnx, bytes, "ONNX model");
    const Shape in = onnx_input_shape(checkpoint.meta.model);
    fmt::print("Wrote {} ({} bytes, ONNX opset {}): {} ({} parameters)\n", o.onnx, bytes.size(), kOnnxOpset,
               checkpoint.meta.model.describe(), parameter_count(checkpoint.meta.model));
    fmt::print("  input   'input'  float [N, {}, {}, {}], pixels / 255 in [0, 1]\n", in.c, in.h, in.w);
    fmt::print("  output  'logits' float [N, {}]{}\n", checkpoint.meta.model.classes,
               o.softmax ? fmt::format("; 'probabilities' float [N, {}] (softmax)", checkpoint.meta.model.classes) : "");
    return 0;
}

}  // namespace

void add_export_command(CLI::App& parent, std::vector<Command>& commands) {
    auto o = std::make_shared<ExportOptions>();
    CLI::App* cmd = parent.add_subcommand(
        "export", "Export a trained checkpoint as an ONNX model (input [N, 1, 28, 28] in [0, 1], output the logits)");
    cmd->add_option("--model,-m", o->model, "Checkpoint to export (written by cumnist train)")->required();
    cmd->add_option("--onnx", o->onnx, "ONNX file to write")->required();
    cmd->add_flag("--softmax", o->softmax, "Also output the class probabilities ('probabilities', softmax of the logits)");
    commands.push_back({cmd, [o] { return run_export(*o); }});
}

}  // namespace cumnist::cli

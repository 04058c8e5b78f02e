// Ascend 310 inference of an exported VGG MindIR over a folder of inputs.
//
// cifar10: every .bin file in --input0_path (float32, normalised CHW, written by preprocess.py)
// is one model input. imagenet2012: every image under --input0_path (class sub-folders) is
// decoded, resized, centre-cropped and normalised here with MindSpore's dataset C++ API on the
// host CPU, exactly as eval.py prepares ImageNet, so the 310 only runs the network.
// Each input gives <output_path>/<input_stem>_<i>.bin per model output i (raw float32 logits),
// which postprocess.py reads; the average Predict time is printed at the end.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/serialization.h"
#include "include/api/types.h"
#include "include/dataset/execute.h"
#include "include/dataset/vision.h"
#include "inc/utils.h"

using mindspore::AscendDeviceInfo;
using mindspore::Context;
using mindspore::Graph;
using mindspore::GraphCell;
using mindspore::kSuccess;
using mindspore::Model;
using mindspore::ModelType;
using mindspore::MSTensor;
using mindspore::Serialization;
using mindspore::Status;

namespace {
// Keep in step with src/dataset.py (IMAGENET_MEAN/STD on the 0-255 scale, 256/224 resize).
const std::vector<float> kImagenetMean = {0.485f * 255, 0.456f * 255, 0.406f * 255};
const std::vector<float> kImagenetStd = {0.229f * 255, 0.224f * 255, 0.225f * 255};
const std::vector<std::string> kImageExtensions = {".jpeg", ".jpg", ".png", ".bmp"};

int Fail(const std::string &message) {
  std::cerr << "error: " << message << std::endl;
  return 1;
}

std::string ShapeText(const std::vector<int64_t> &shape) {
  std::ostringstream text;
  text << "(";
  for (size_t i = 0; i < shape.size(); ++i) text << (i ? ", " : "") << shape[i];
  text << ")";
  return text.str();
}

Status BuildModel(const InferFlags &flags, Model *model) {
  auto context = std::make_shared<Context>();
  auto ascend = std::make_shared<AscendDeviceInfo>();
  ascend->SetDeviceID(static_cast<uint32_t>(flags.device_id));
  context->MutableDeviceInfo().push_back(ascend);

  Graph graph;
  Status ret = Serialization::Load(flags.mindir_path, ModelType::kMindIR, &graph);
  if (ret != kSuccess) return ret;
  return model->Build(GraphCell(graph), context);
}

// Decode -> resize the short side -> centre crop to the model's H x W -> normalise -> CHW.
std::unique_ptr<mindspore::dataset::Execute> ImagenetTransform(const std::vector<int64_t> &input_shape) {
  namespace vision = mindspore::dataset::vision;
  const int32_t height = static_cast<int32_t>(input_shape[2]);
  const int32_t width = static_cast<int32_t>(input_shape[3]);
  const int32_t short_side = static_cast<int32_t>(std::lround(256.0 * std::min(height, width) / 224.0));
  std::vector<std::shared_ptr<mindspore::dataset::TensorTransform>> ops = {
      std::make_shared<vision::Decode>(),
      std::make_shared<vision::Resize>(std::vector<int32_t>{short_side}),
      std::make_shared<vision::CenterCrop>(std::vector<int32_t>{height, width}),
      std::make_shared<vision::Normalize>(kImagenetMean, kImagenetStd),
      std::make_shared<vision::HWC2CHW>()};
  return std::make_unique<mindspore::dataset::Execute>(ops);
}

// The bytes of one model input: the file itself (cifar10) or the transformed image (imagenet2012).
bool LoadInput(const std::string &file, mindspore::dataset::Execute *transform, MSTensor *tensor,
               std::string *error) {
  std::vector<char> bytes;
  if (!ReadFile(file, &bytes)) {
    *error = file + ": cannot read";
    return false;
  }
  MSTensor raw(file, mindspore::DataType::kNumberTypeUInt8, {static_cast<int64_t>(bytes.size())}, bytes.data(),
               bytes.size());
  if (transform == nullptr) {
    *tensor = raw;
    return true;
  }
  Status ret = (*transform)(raw, tensor);
  if (ret != kSuccess) {
    *error = file + ": image preprocessing failed: " + ret.ToString();
    return false;
  }
  return true;
}
}  // namespace

int main(int argc, char **argv) {
  InferFlags flags;
  const std::string flag_error = ParseFlags(argc, argv, &flags);
  if (!flag_error.empty()) return Fail(flag_error + "; " + Usage(argv[0]));

  Model model;
  Status ret = BuildModel(flags, &model);
  if (ret != kSuccess) return Fail(flags.mindir_path + ": cannot load or build the model: " + ret.ToString());

  std::vector<MSTensor> model_inputs = model.GetInputs();
  if (model_inputs.size() != 1) {
    return Fail(flags.mindir_path + ": expected a model with one input, got " + std::to_string(model_inputs.size()));
  }
  const MSTensor &model_input = model_inputs[0];
  const std::vector<int64_t> input_shape = model_input.Shape();

  const bool imagenet = flags.dataset_name == "imagenet2012";
  std::unique_ptr<mindspore::dataset::Execute> transform;
  if (imagenet) {
    if (input_shape.size() != 4) return Fail(flags.mindir_path + ": model input is not NCHW " + ShapeText(input_shape));
    transform = ImagenetTransform(input_shape);
  }
  const std::vector<std::string> files = imagenet ? ListFiles(flags.input0_path, kImageExtensions, true)
                                                  : ListFiles(flags.input0_path, {".bin"}, false);
  if (files.empty()) {
    return Fail(flags.input0_path + ": no input files (" + (imagenet ? "images in class folders" : "*.bin") + ")");
  }
  std::error_code ec;
  std::filesystem::create_directories(flags.output_path, ec);
  if (ec) return Fail(flags.output_path + ": cannot create the result folder: " + ec.message());

  double total_ms = 0.0;
  for (const std::string &file : files) {
    MSTensor input;
    std::string error;
    if (!LoadInput(file, transform.get(), &input, &error)) return Fail(error);
    if (input.DataSize() != model_input.DataSize()) {
      return Fail(file + ": " + std::to_string(input.DataSize()) + " bytes, but the model input " +
                  ShapeText(input_shape) + " takes " + std::to_string(model_input.DataSize()) +
                  " (was the MindIR exported with batch size 1 and this image size?)");
    }
    std::vector<MSTensor> inputs;
    inputs.emplace_back(model_input.Name(), model_input.DataType(), input_shape, input.Data().get(), input.DataSize());
    std::vector<MSTensor> outputs;

    const auto start = std::chrono::steady_clock::now();
    ret = model.Predict(inputs, &outputs);
    const auto end = std::chrono::steady_clock::now();
    if (ret != kSuccess) return Fail(file + ": Predict failed: " + ret.ToString());
    total_ms += std::chrono::duration<double, std::milli>(end - start).count();

    for (size_t i = 0; i < outputs.size(); ++i) {
      const std::string result = ResultPath(flags.output_path, FileStem(file), i);
      if (!WriteFile(result, outputs[i].Data().get(), outputs[i].DataSize())) return Fail(result + ": cannot write");
    }
  }
  std::printf("Inference avg time: %.3f ms over %zu inputs\n", total_ms / files.size(), files.size());
  return 0;
}

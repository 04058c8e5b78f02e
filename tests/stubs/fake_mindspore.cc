// A stand-in for libmindspore.so, so tests can build ascend310_infer with CMake and run it.
// A "MindIR" here is a text file "fake-mindir N C H W CLASSES"; Predict computes, for one
// float32 input x, logits[k] = sum of x[j] over j % CLASSES == k (tests redo this in NumPy).
// The device context must name an Ascend device, as the real 310 build needs.
#include <algorithm>
#include <fstream>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/serialization.h"
#include "include/api/types.h"
#include "include/dataset/execute.h"
#include "include/dataset/vision.h"

namespace mindspore {
Status::Status() : code_(kSuccess) {}
Status::Status(enum StatusCode status_code, const std::string &status_msg)
    : code_(status_code), message_(status_msg) {}
enum StatusCode Status::StatusCode() const { return code_; }
std::string Status::ToString() const { return message_; }
bool Status::operator==(const Status &other) const { return code_ == other.code_; }
bool Status::operator==(enum StatusCode other_code) const { return code_ == other_code; }
bool Status::operator!=(const Status &other) const { return code_ != other.code_; }
bool Status::operator!=(enum StatusCode other_code) const { return code_ != other_code; }
Status::operator bool() const { return code_ == kSuccess; }
bool Status::IsOk() const { return code_ == kSuccess; }
bool Status::IsError() const { return code_ != kSuccess; }

class MSTensor::Impl {
 public:
  std::string name;
  enum DataType type = DataType::kTypeUnknown;
  std::vector<int64_t> shape;
  std::shared_ptr<std::vector<char>> bytes = std::make_shared<std::vector<char>>();
};

MSTensor::MSTensor() : impl_(std::make_shared<Impl>()) {}
MSTensor::MSTensor(const std::shared_ptr<Impl> &impl) : impl_(impl) {}
MSTensor::MSTensor(const std::string &name, enum DataType type, const std::vector<int64_t> &shape, const void *data,
                   size_t data_len)
    : impl_(std::make_shared<Impl>()) {
  impl_->name = name;
  impl_->type = type;
  impl_->shape = shape;
  impl_->bytes->resize(data_len);
  if (data != nullptr && data_len > 0) std::copy_n(static_cast<const char *>(data), data_len, impl_->bytes->data());
}
MSTensor::~MSTensor() = default;
std::string MSTensor::Name() const { return impl_->name; }
enum DataType MSTensor::DataType() const { return impl_->type; }
const std::vector<int64_t> &MSTensor::Shape() const { return impl_->shape; }
int64_t MSTensor::ElementNum() const {
  return std::accumulate(impl_->shape.begin(), impl_->shape.end(), int64_t{1}, std::multiplies<int64_t>());
}
std::shared_ptr<const void> MSTensor::Data() const {
  auto bytes = impl_->bytes;
  return std::shared_ptr<const void>(bytes, bytes->data());
}
void *MSTensor::MutableData() { return impl_->bytes->data(); }
size_t MSTensor::DataSize() const { return impl_->bytes->size(); }
bool MSTensor::operator==(std::nullptr_t) const { return impl_ == nullptr; }
bool MSTensor::operator!=(std::nullptr_t) const { return impl_ != nullptr; }

DeviceInfoContext::DeviceInfoContext() = default;
void AscendDeviceInfo::SetDeviceID(uint32_t) {}
uint32_t AscendDeviceInfo::GetDeviceID() const { return 0; }
void AscendDeviceInfo::SetPrecisionMode(const std::string &) {}
std::string AscendDeviceInfo::GetPrecisionMode() const { return ""; }

struct Context::Data {
  std::vector<std::shared_ptr<DeviceInfoContext>> devices;
};
Context::Context() : data_(std::make_shared<Data>()) {}
void Context::SetThreadNum(int32_t) {}
std::vector<std::shared_ptr<DeviceInfoContext>> &Context::MutableDeviceInfo() { return data_->devices; }

class Graph::GraphData {
 public:
  std::vector<int64_t> input_shape;
  int64_t classes = 0;
};
Graph::Graph() = default;
Graph::Graph(const std::shared_ptr<GraphData> &graph_data) : graph_data_(graph_data) {}
Graph::Graph(std::nullptr_t) {}
Graph::~Graph() = default;
bool Graph::operator==(std::nullptr_t) const { return graph_data_ == nullptr; }
bool Graph::operator!=(std::nullptr_t) const { return graph_data_ != nullptr; }

GraphCell::GraphCell(const Graph &graph) : graph_(std::make_shared<Graph>(graph)) {}
GraphCell::GraphCell(Graph &&graph) : graph_(std::make_shared<Graph>(std::move(graph))) {}
GraphCell::GraphCell(const std::shared_ptr<Graph> &graph) : graph_(graph) {}

Status Serialization::Load(const std::string &file, ModelType model_type, Graph *graph, const Key &,
                           const std::string &) {
  std::ifstream in(file);
  std::string magic;
  auto data = std::make_shared<Graph::GraphData>();
  data->input_shape.resize(4);
  if (model_type != kMindIR || !(in >> magic) || magic != "fake-mindir") return Status(kMEFailed, "not a fake MindIR");
  for (int64_t &dim : data->input_shape) in >> dim;
  if (!(in >> data->classes)) return Status(kMEFailed, "truncated fake MindIR");
  *graph = Graph(data);
  return kSuccess;
}

class ModelImpl {
 public:
  void Load(const Graph &loaded) { graph = std::make_shared<Graph::GraphData>(*loaded.graph_data_); }
  std::shared_ptr<Graph::GraphData> graph;
};
Model::Model() : impl_(std::make_shared<ModelImpl>()) {}
Model::~Model() = default;

Status Model::Build(GraphCell graph, const std::shared_ptr<Context> &model_context) {
  if (model_context == nullptr || model_context->MutableDeviceInfo().size() != 1 ||
      model_context->MutableDeviceInfo()[0]->GetDeviceType() != kAscend) {
    return Status(kMCFailed, "fake: expected one Ascend device in the context");
  }
  impl_->Load(*graph.GetGraph());
  return kSuccess;
}

std::vector<MSTensor> Model::GetInputs() {
  const auto &shape = impl_->graph->input_shape;
  int64_t count = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
  std::vector<float> zeros(static_cast<size_t>(count));
  return {MSTensor("x", DataType::kNumberTypeFloat32, shape, zeros.data(), zeros.size() * sizeof(float))};
}

std::vector<MSTensor> Model::GetOutputs() { return {}; }

Status Model::Predict(const std::vector<MSTensor> &inputs, std::vector<MSTensor> *outputs) {
  if (inputs.size() != 1 || inputs[0].DataType() != DataType::kNumberTypeFloat32) {
    return Status(kMEFailed, "fake: expected one float32 input");
  }
  const auto *x = static_cast<const float *>(inputs[0].Data().get());
  const size_t count = inputs[0].DataSize() / sizeof(float);
  const auto classes = static_cast<size_t>(impl_->graph->classes);
  std::vector<float> logits(classes, 0.0f);
  for (size_t j = 0; j < count; ++j) logits[j % classes] += x[j];
  outputs->clear();
  outputs->emplace_back("logits", DataType::kNumberTypeFloat32, std::vector<int64_t>{1, impl_->graph->classes},
                        logits.data(), logits.size() * sizeof(float));
  return kSuccess;
}

namespace dataset {
Execute::Execute(const std::shared_ptr<TensorTransform> &, MapTargetDevice, uint32_t) {}
Execute::Execute(const std::vector<std::shared_ptr<TensorTransform>> &, MapTargetDevice, uint32_t) {}
Execute::~Execute() = default;
Status Execute::operator()(const MSTensor &, MSTensor *) { return Status(kMEFailed, "fake: no image decoding"); }
namespace vision {
Decode::Decode(bool) {}
Resize::Resize(const std::vector<int32_t> &, InterpolationMode) {}
CenterCrop::CenterCrop(const std::vector<int32_t> &) {}
Normalize::Normalize(const std::vector<float> &, const std::vector<float> &, bool) {}
HWC2CHW::HWC2CHW() {}
}  // namespace vision
}  // namespace dataset
}  // namespace mindspore

// Stub of MindSpore's include/api/model.h: Build, GetInputs, Predict.
#ifndef STUB_MINDSPORE_INCLUDE_API_MODEL_H_
#define STUB_MINDSPORE_INCLUDE_API_MODEL_H_
#include <memory>
#include <vector>

#include "include/api/cell.h"
#include "include/api/context.h"
#include "include/api/status.h"
#include "include/api/types.h"

namespace mindspore {
class ModelImpl;

class Model {
 public:
  Model();
  ~Model();
  Model(const Model &) = delete;
  void operator=(const Model &) = delete;

  Status Build(GraphCell graph, const std::shared_ptr<Context> &model_context = nullptr);
  Status Predict(const std::vector<MSTensor> &inputs, std::vector<MSTensor> *outputs);
  std::vector<MSTensor> GetInputs();
  std::vector<MSTensor> GetOutputs();

 private:
  std::shared_ptr<ModelImpl> impl_;
};
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_API_MODEL_H_

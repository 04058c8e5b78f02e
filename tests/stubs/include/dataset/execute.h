// Stub of MindSpore's include/dataset/execute.h: eager execution of vision transforms.
#ifndef STUB_MINDSPORE_INCLUDE_DATASET_EXECUTE_H_
#define STUB_MINDSPORE_INCLUDE_DATASET_EXECUTE_H_
#include <cstdint>
#include <memory>
#include <vector>

#include "include/api/status.h"
#include "include/api/types.h"
#include "include/dataset/constants.h"
#include "include/dataset/transforms.h"

namespace mindspore {
namespace dataset {
class Execute {
 public:
  explicit Execute(const std::shared_ptr<TensorTransform> &op, MapTargetDevice device_type = MapTargetDevice::kCpu,
                   uint32_t device_id = 0);
  explicit Execute(const std::vector<std::shared_ptr<TensorTransform>> &ops,
                   MapTargetDevice device_type = MapTargetDevice::kCpu, uint32_t device_id = 0);
  ~Execute();
  Status operator()(const mindspore::MSTensor &input, mindspore::MSTensor *output);
};
}  // namespace dataset
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_DATASET_EXECUTE_H_

// Stub of MindSpore's include/dataset/vision.h (with vision_lite.h): the CPU ops an eval needs.
#ifndef STUB_MINDSPORE_INCLUDE_DATASET_VISION_H_
#define STUB_MINDSPORE_INCLUDE_DATASET_VISION_H_
#include <cstdint>
#include <vector>

#include "include/dataset/constants.h"
#include "include/dataset/transforms.h"

namespace mindspore {
namespace dataset {
namespace vision {
class Decode final : public TensorTransform {
 public:
  explicit Decode(bool rgb = true);
};

class Resize final : public TensorTransform {
 public:
  explicit Resize(const std::vector<int32_t> &size, InterpolationMode interpolation = InterpolationMode::kLinear);
};

class CenterCrop final : public TensorTransform {
 public:
  explicit CenterCrop(const std::vector<int32_t> &size);
};

class Normalize final : public TensorTransform {
 public:
  Normalize(const std::vector<float> &mean, const std::vector<float> &std, bool is_hwc = true);
};

class HWC2CHW final : public TensorTransform {
 public:
  HWC2CHW();
};
}  // namespace vision
}  // namespace dataset
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_DATASET_VISION_H_

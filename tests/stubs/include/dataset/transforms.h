// Stub of MindSpore's include/dataset/transforms.h: the TensorTransform base.
#ifndef STUB_MINDSPORE_INCLUDE_DATASET_TRANSFORMS_H_
#define STUB_MINDSPORE_INCLUDE_DATASET_TRANSFORMS_H_
#include <memory>

namespace mindspore {
namespace dataset {
class TensorTransform : public std::enable_shared_from_this<TensorTransform> {
 public:
  TensorTransform() = default;
  virtual ~TensorTransform() = default;
};
}  // namespace dataset
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_DATASET_TRANSFORMS_H_

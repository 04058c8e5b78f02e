// Stub of MindSpore's include/api/data_type.h: only what ascend310_infer uses (syntax checks).
#ifndef STUB_MINDSPORE_INCLUDE_API_DATA_TYPE_H_
#define STUB_MINDSPORE_INCLUDE_API_DATA_TYPE_H_

namespace mindspore {
enum class DataType : int {
  kTypeUnknown = 0,
  kNumberTypeUInt8 = 37,
  kNumberTypeFloat32 = 43,
};
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_API_DATA_TYPE_H_

// Stub of MindSpore's include/api/types.h: ModelType and MSTensor as ascend310_infer uses them.
#ifndef STUB_MINDSPORE_INCLUDE_API_TYPES_H_
#define STUB_MINDSPORE_INCLUDE_API_TYPES_H_
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "include/api/data_type.h"
#include "include/api/status.h"

namespace mindspore {
enum ModelType : uint32_t { kMindIR = 0, kAIR = 1, kOM = 2, kONNX = 3, kMindIR_Lite = 4, kUnknownType = 0xFFFFFFFF };

class MSTensor {
 public:
  class Impl;
  MSTensor();
  explicit MSTensor(const std::shared_ptr<Impl> &impl);
  MSTensor(const std::string &name, enum DataType type, const std::vector<int64_t> &shape, const void *data,
           size_t data_len);
  ~MSTensor();

  std::string Name() const;
  enum DataType DataType() const;
  const std::vector<int64_t> &Shape() const;
  int64_t ElementNum() const;
  std::shared_ptr<const void> Data() const;
  void *MutableData();
  size_t DataSize() const;
  bool operator==(std::nullptr_t) const;
  bool operator!=(std::nullptr_t) const;

 private:
  std::shared_ptr<Impl> impl_;
};

using Key = std::vector<unsigned char>;
constexpr char kDecModeAesGcm[] = "AES-GCM";
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_API_TYPES_H_

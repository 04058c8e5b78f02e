// Stub of MindSpore's include/api/context.h: Context and the Ascend device description.
#ifndef STUB_MINDSPORE_INCLUDE_API_CONTEXT_H_
#define STUB_MINDSPORE_INCLUDE_API_CONTEXT_H_
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mindspore {
enum DeviceType { kCPU = 0, kGPU, kKirinNPU, kAscend, kAscend910, kAscend310, kInvalidDeviceType = 100 };

class DeviceInfoContext : public std::enable_shared_from_this<DeviceInfoContext> {
 public:
  DeviceInfoContext();
  virtual ~DeviceInfoContext() = default;
  virtual enum DeviceType GetDeviceType() const = 0;
};

class AscendDeviceInfo : public DeviceInfoContext {
 public:
  enum DeviceType GetDeviceType() const override { return DeviceType::kAscend; }
  void SetDeviceID(uint32_t device_id);
  uint32_t GetDeviceID() const;
  void SetPrecisionMode(const std::string &precision_mode);
  std::string GetPrecisionMode() const;
};
using Ascend310DeviceInfo = AscendDeviceInfo;

class Context {
 public:
  Context();
  ~Context() = default;
  void SetThreadNum(int32_t thread_num);
  std::vector<std::shared_ptr<DeviceInfoContext>> &MutableDeviceInfo();

 private:
  struct Data;
  std::shared_ptr<Data> data_;
};
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_API_CONTEXT_H_

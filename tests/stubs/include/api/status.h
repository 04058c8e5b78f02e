// Stub of MindSpore's include/api/status.h (the members ascend310_infer uses).
#ifndef STUB_MINDSPORE_INCLUDE_API_STATUS_H_
#define STUB_MINDSPORE_INCLUDE_API_STATUS_H_
#include <cstdint>
#include <string>

namespace mindspore {
enum StatusCode : uint32_t { kSuccess = 0, kMEFailed = 0x10000001, kMCFailed = 0x20000001 };

class Status {
 public:
  Status();
  Status(enum StatusCode status_code, const std::string &status_msg = "");  // NOLINT: implicit like the real one
  enum StatusCode StatusCode() const;
  std::string ToString() const;
  bool operator==(const Status &other) const;
  bool operator==(enum StatusCode other_code) const;
  bool operator!=(const Status &other) const;
  bool operator!=(enum StatusCode other_code) const;
  explicit operator bool() const;
  bool IsOk() const;
  bool IsError() const;

 private:
  enum StatusCode code_;
  std::string message_;
};
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_API_STATUS_H_

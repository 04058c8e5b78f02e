// Stub of MindSpore's include/api/serialization.h.
#ifndef STUB_MINDSPORE_INCLUDE_API_SERIALIZATION_H_
#define STUB_MINDSPORE_INCLUDE_API_SERIALIZATION_H_
#include <string>

#include "include/api/graph.h"
#include "include/api/status.h"
#include "include/api/types.h"

namespace mindspore {
class Serialization {
 public:
  static Status Load(const std::string &file, ModelType model_type, Graph *graph, const Key &dec_key = {},
                     const std::string &dec_mode = kDecModeAesGcm);
};
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_API_SERIALIZATION_H_

// Stub of MindSpore's include/api/graph.h.
#ifndef STUB_MINDSPORE_INCLUDE_API_GRAPH_H_
#define STUB_MINDSPORE_INCLUDE_API_GRAPH_H_
#include <cstddef>
#include <memory>

namespace mindspore {
class Graph {
 public:
  class GraphData;
  Graph();
  explicit Graph(const std::shared_ptr<GraphData> &graph_data);
  explicit Graph(std::nullptr_t);
  ~Graph();
  bool operator==(std::nullptr_t) const;
  bool operator!=(std::nullptr_t) const;

 private:
  friend class GraphCell;
  friend class ModelImpl;
  std::shared_ptr<GraphData> graph_data_;
};
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_API_GRAPH_H_

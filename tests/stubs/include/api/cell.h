// Stub of MindSpore's include/api/cell.h: GraphCell wraps a loaded Graph for Model::Build.
#ifndef STUB_MINDSPORE_INCLUDE_API_CELL_H_
#define STUB_MINDSPORE_INCLUDE_API_CELL_H_
#include <memory>

#include "include/api/graph.h"

namespace mindspore {
class GraphCell {
 public:
  GraphCell() = default;
  explicit GraphCell(const Graph &graph);
  explicit GraphCell(Graph &&graph);
  explicit GraphCell(const std::shared_ptr<Graph> &graph);
  const std::shared_ptr<Graph> &GetGraph() const { return graph_; }

 private:
  std::shared_ptr<Graph> graph_;
};
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_API_CELL_H_

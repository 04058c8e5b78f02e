// Stub of MindSpore's include/dataset/constants.h.
#ifndef STUB_MINDSPORE_INCLUDE_DATASET_CONSTANTS_H_
#define STUB_MINDSPORE_INCLUDE_DATASET_CONSTANTS_H_

namespace mindspore {
namespace dataset {
enum class MapTargetDevice { kCpu = 0, kGpu, kAscend310 };
enum class InterpolationMode { kLinear = 0, kNearestNeighbour = 1, kCubic = 2, kArea = 3, kCubicPil = 4 };
}  // namespace dataset
}  // namespace mindspore
#endif  // STUB_MINDSPORE_INCLUDE_DATASET_CONSTANTS_H_

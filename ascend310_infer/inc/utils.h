// Flags, file listing and result writing for the Ascend 310 inference app.
// Plain C++17 on purpose: nothing here needs MindSpore, so it builds and tests anywhere.
#ifndef VGG_ASCEND310_INFER_INC_UTILS_H_
#define VGG_ASCEND310_INFER_INC_UTILS_H_

#include <cstddef>
#include <string>
#include <vector>

struct InferFlags {
  std::string mindir_path;
  std::string dataset_name;  // cifar10 | imagenet2012
  std::string input0_path;   // cifar10: folder of preprocessed .bin files; imagenet2012: folder of class folders
  std::string output_path = "./result_Files";
  int device_id = 0;
};

// Parses --name=value flags into *flags. Returns "" when they are usable, else a one-line error.
std::string ParseFlags(int argc, const char *const *argv, InferFlags *flags);
std::string Usage(const std::string &program);

// Regular files under dir whose lower-cased extension is one of `extensions` (".bin"), sorted
// by path; sub-folders are searched when `recursive`. Hidden files are skipped.
std::vector<std::string> ListFiles(const std::string &dir, const std::vector<std::string> &extensions,
                                   bool recursive);

bool ReadFile(const std::string &path, std::vector<char> *data);

// "a/b/img_7.bin" -> "img_7".
std::string FileStem(const std::string &path);

// The file a result goes to: <out_dir>/<stem>_<output_index>.bin, the name postprocess reads.
std::string ResultPath(const std::string &out_dir, const std::string &stem, size_t output_index);

bool WriteFile(const std::string &path, const void *data, size_t size);

#endif  // VGG_ASCEND310_INFER_INC_UTILS_H_

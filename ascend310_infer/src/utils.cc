// Flags, file listing and result writing for the Ascend 310 inference app.
#include "inc/utils.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace fs = std::filesystem;

namespace {
std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

bool ParseInt(const std::string &text, int *value) {
  try {
    size_t used = 0;
    int parsed = std::stoi(text, &used);
    if (used != text.size() || parsed < 0) return false;
    *value = parsed;
    return true;
  } catch (const std::exception &) {
    return false;
  }
}

bool Wanted(const fs::directory_entry &entry, const std::vector<std::string> &extensions) {
  std::error_code ec;
  if (!entry.is_regular_file(ec)) return false;
  const fs::path &path = entry.path();
  if (path.filename().string().rfind('.', 0) == 0) return false;
  const std::string ext = Lower(path.extension().string());
  return std::find(extensions.begin(), extensions.end(), ext) != extensions.end();
}
}  // namespace

std::string Usage(const std::string &program) {
  return "usage: " + program +
         " --mindir_path=MODEL.mindir --dataset_name=cifar10|imagenet2012 --input0_path=DIR"
         " [--device_id=0] [--output_path=./result_Files]";
}

std::string ParseFlags(int argc, const char *const *argv, InferFlags *flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      return "argument '" + arg + "' is not of the form --name=value";
    }
    const std::string name = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    if (name == "mindir_path") {
      flags->mindir_path = value;
    } else if (name == "dataset_name") {
      flags->dataset_name = value;
    } else if (name == "input0_path") {
      flags->input0_path = value;
    } else if (name == "output_path") {
      flags->output_path = value;
    } else if (name == "device_id") {
      if (!ParseInt(value, &flags->device_id)) return "--device_id=" + value + " is not a non-negative integer";
    } else {
      return "unknown flag --" + name;
    }
  }
  std::error_code ec;
  if (flags->mindir_path.empty() || !fs::is_regular_file(flags->mindir_path, ec)) {
    return "--mindir_path='" + flags->mindir_path + "' is not a file";
  }
  if (flags->dataset_name != "cifar10" && flags->dataset_name != "imagenet2012") {
    return "--dataset_name='" + flags->dataset_name + "' must be cifar10 or imagenet2012";
  }
  if (flags->input0_path.empty() || !fs::is_directory(flags->input0_path, ec)) {
    return "--input0_path='" + flags->input0_path + "' is not a folder";
  }
  if (flags->output_path.empty()) return "--output_path must not be empty";
  return "";
}

std::vector<std::string> ListFiles(const std::string &dir, const std::vector<std::string> &extensions,
                                   bool recursive) {
  std::vector<std::string> files;
  std::error_code ec;
  if (recursive) {
    for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (Wanted(*it, extensions)) files.push_back(it->path().string());
    }
  } else {
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (Wanted(*it, extensions)) files.push_back(it->path().string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

bool ReadFile(const std::string &path, std::vector<char> *data) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return false;
  const std::streamsize size = in.tellg();
  if (size < 0) return false;
  data->resize(static_cast<size_t>(size));
  in.seekg(0, std::ios::beg);
  return static_cast<bool>(in.read(data->data(), size));
}

std::string FileStem(const std::string &path) { return fs::path(path).stem().string(); }

std::string ResultPath(const std::string &out_dir, const std::string &stem, size_t output_index) {
  return (fs::path(out_dir) / (stem + "_" + std::to_string(output_index) + ".bin")).string();
}

bool WriteFile(const std::string &path, const void *data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return false;
  out.write(static_cast<const char *>(data), static_cast<std::streamsize>(size));
  return static_cast<bool>(out);
}

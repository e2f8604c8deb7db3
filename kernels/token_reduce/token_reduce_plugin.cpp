// IPluginV3 glue of hulu::TokenReduce (see token_reduce_plugin.h for the op's I/O). The math is in token_reduce.cu.
#include "token_reduce_plugin.h"

#include <cmath>
#include <cstring>
#include <string>

#include "token_reduce.cuh"

using namespace nvinfer1;

namespace {

ILoggerFinder* g_logger_finder = nullptr;

void log_error(std::string const& msg) {
  ILogger* logger = g_logger_finder ? g_logger_finder->findLogger() : nullptr;
  std::string const full = std::string(HULU_PLUGIN_NAMESPACE "::" HULU_PLUGIN_NAME ": ") + msg;
  if (logger) logger->log(ILogger::Severity::kERROR, full.c_str());
}

constexpr int64_t kPatchDim = 588;  // 14 * 14 * 3 values per patch (hulurt.contract)

// Workspace: the per-frame kept counts (int64 [T]) that the scan reads; 256-byte aligned.
size_t workspace_bytes(int64_t n_frames) { return ((static_cast<size_t>(n_frames) * 8 + 255) / 256) * 256; }

}  // namespace

namespace hulu {

TokenReducePlugin::TokenReducePlugin(float threshold, int32_t min_tokens, int32_t bf16)
    : threshold_(threshold), min_tokens_(min_tokens), bf16_(bf16) {}

IPluginCapability* TokenReducePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

IPluginV3* TokenReducePlugin::clone() noexcept {
  try {
    return new TokenReducePlugin(threshold_, min_tokens_, bf16_);
  } catch (...) {
    log_error("clone: out of memory");
    return nullptr;
  }
}

int32_t TokenReducePlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                           DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  if (nbInputs != 1 || nbOutputs != kNbOutputs || in == nullptr || out == nullptr) {
    log_error("expects 1 input (pixel_patches) and 3 outputs (keep_mask, kept_indices, n_kept)");
    return -1;
  }
  Dims const& d = in[0].desc.dims;
  if (d.nbDims != 4 || (d.d[3] != -1 && d.d[3] != kPatchDim)) {
    log_error("pixel_patches must be [n_frames, n_groups, merge_group, 588]");
    return -1;
  }
  return 0;
}

int32_t TokenReducePlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                              int32_t nbInputs) const noexcept {
  if (nbInputs != 1 || nbOutputs != kNbOutputs || inputTypes[0] != DataType::kFLOAT) return -1;
  outputTypes[0] = DataType::kBOOL;
  outputTypes[1] = DataType::kINT64;
  outputTypes[2] = DataType::kINT64;  // size tensor
  return 0;
}

int32_t TokenReducePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                           DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept {
  if (nbInputs != 1 || nbOutputs != kNbOutputs || inputs[0].nbDims != 4) return -1;
  // keep_mask [T, G]
  outputs[0].nbDims = 2;
  outputs[0].d[0] = inputs[0].d[0];
  outputs[0].d[1] = inputs[0].d[1];
  // kept_indices [n_kept]: data-dependent, bounded by n_merged = T * G; opt: half kept
  IDimensionExpr const* upper = exprBuilder.operation(DimensionOperation::kPROD, *inputs[0].d[0], *inputs[0].d[1]);
  IDimensionExpr const* opt = exprBuilder.operation(DimensionOperation::kFLOOR_DIV, *upper, *exprBuilder.constant(2));
  IDimensionExpr const* n_kept = exprBuilder.declareSizeTensor(2, *opt, *upper);
  if (n_kept == nullptr) return -1;
  outputs[1].nbDims = 1;
  outputs[1].d[0] = n_kept;
  // n_kept: the size tensor itself is a scalar
  outputs[2].nbDims = 0;
  return 0;
}

bool TokenReducePlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                                  int32_t nbOutputs) noexcept {
  if (nbInputs != 1 || nbOutputs != kNbOutputs || pos < 0 || pos > 3) return false;
  static constexpr DataType kTypes[4] = {DataType::kFLOAT, DataType::kBOOL, DataType::kINT64, DataType::kINT64};
  return inOut[pos].desc.format == TensorFormat::kLINEAR && inOut[pos].desc.type == kTypes[pos];
}

size_t TokenReducePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                           DynamicPluginTensorDesc const*, int32_t) const noexcept {
  if (nbInputs != 1 || inputs[0].max.nbDims != 4) return 0;
  return workspace_bytes(inputs[0].max.d[0]);
}

int32_t TokenReducePlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
                                         int32_t nbOutputs) noexcept {
  if (nbInputs != 1 || nbOutputs != kNbOutputs || in[0].dims.nbDims != 4 || in[0].dims.d[3] != kPatchDim) {
    log_error("runtime pixel_patches shape is not [n_frames, n_groups, merge_group, 588]");
    return -1;
  }
  return 0;
}

int32_t TokenReducePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
                                   void const* const* inputs, void* const* outputs, void* workspace,
                                   cudaStream_t stream) noexcept {
  Dims const& d = inputDesc[0].dims;  // [T, G, M, 588] -> the kernels' [T, G, M*588] view (groups contiguous)
  int64_t const n_frames = d.d[0], n_groups = d.d[1], token_dim = d.d[2] * d.d[3];
  int const rc = hulu_tr_reduce(static_cast<float const*>(inputs[0]), n_frames, n_groups, token_dim, threshold_,
                                min_tokens_, bf16_, HULU_TR_ALGO_AUTO, static_cast<uint8_t*>(outputs[0]),
                                static_cast<int64_t*>(outputs[1]), static_cast<int64_t*>(workspace),
                                static_cast<int64_t*>(outputs[2]), stream);
  if (rc != 0) {
    log_error(std::string("enqueue: ") + hulu_tr_error_string(rc));
    return -1;
  }
  return 0;
}

IPluginV3* TokenReducePlugin::attachToContext(IPluginResourceContext*) noexcept { return clone(); }

PluginFieldCollection const* TokenReducePlugin::getFieldsToSerialize() noexcept {
  fields_.clear();
  fields_.emplace_back("threshold", &threshold_, PluginFieldType::kFLOAT32, 1);
  fields_.emplace_back("min_tokens", &min_tokens_, PluginFieldType::kINT32, 1);
  fields_.emplace_back("bf16", &bf16_, PluginFieldType::kINT32, 1);
  collection_.nbFields = static_cast<int32_t>(fields_.size());
  collection_.fields = fields_.data();
  return &collection_;
}

TokenReducePluginCreator::TokenReducePluginCreator() {
  fields_.emplace_back("threshold", nullptr, PluginFieldType::kFLOAT32, 1);
  fields_.emplace_back("min_tokens", nullptr, PluginFieldType::kINT32, 1);
  fields_.emplace_back("bf16", nullptr, PluginFieldType::kINT32, 1);
  collection_.nbFields = static_cast<int32_t>(fields_.size());
  collection_.fields = fields_.data();
}

IPluginV3* TokenReducePluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc,
                                                  TensorRTPhase) noexcept {
  // Defaults are upstream's (hulumed_arch.py): threshold 0.1, min_tokens 1, bf16 arithmetic.
  float threshold = 0.1f;
  int32_t min_tokens = 1;
  int32_t bf16 = 1;
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    if (f.data == nullptr || f.length < 1) continue;
    if (std::strcmp(f.name, "threshold") == 0 && f.type == PluginFieldType::kFLOAT32) {
      threshold = *static_cast<float const*>(f.data);
    } else if (std::strcmp(f.name, "threshold") == 0 && f.type == PluginFieldType::kFLOAT64) {
      threshold = static_cast<float>(*static_cast<double const*>(f.data));
    } else if (std::strcmp(f.name, "min_tokens") == 0 && f.type == PluginFieldType::kINT32) {
      min_tokens = *static_cast<int32_t const*>(f.data);
    } else if (std::strcmp(f.name, "bf16") == 0 && f.type == PluginFieldType::kINT32) {
      bf16 = *static_cast<int32_t const*>(f.data);
    } else {
      log_error(std::string("node ") + (name ? name : "?") + ": unknown or mistyped attribute '" + f.name +
                "' (expected threshold: float, min_tokens: int, bf16: int)");
      return nullptr;
    }
  }
  if (!std::isfinite(threshold) || min_tokens < 0 || (bf16 != 0 && bf16 != 1)) {
    log_error(std::string("node ") + (name ? name : "?") +
              ": needs a finite threshold, min_tokens >= 0 and bf16 in {0, 1}");
    return nullptr;
  }
  try {
    return new TokenReducePlugin(threshold, min_tokens, bf16);
  } catch (...) {
    log_error("createPlugin: out of memory");
    return nullptr;
  }
}

}  // namespace hulu

extern "C" void setLoggerFinder(ILoggerFinder* finder) { g_logger_finder = finder; }

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static hulu::TokenReducePluginCreator creator;
  static IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}

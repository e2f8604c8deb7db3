// TensorRT IPluginV3 glue for the hulu::TokenReduce custom op: shapes, types, formats, serialization and enqueue.
// No math here: enqueue calls hulu_tr_reduce (token_reduce.cu). Written against the public TensorRT 10 headers
// (NvInferRuntime.h); the registration strings HULU_PLUGIN_NAME/VERSION/NAMESPACE come from hulurt.contract via
// the Makefile (`python -m hulurt.contract --cdefs token_reduce`).
//
// Op: pixel_patches [T, G, M, 588] float32 ->
//       0 keep_mask    [T, G]   bool
//       1 kept_indices [n_kept] int64   (flat t*G + b of kept tokens, token order; data-dependent)
//       2 n_kept       []       int64   (the size tensor of output 1, upper bound T*G = n_merged)
// Attributes: threshold (float), min_tokens (int), bf16 (int).
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

#ifndef HULU_PLUGIN_NAME
#error "HULU_PLUGIN_NAME is not defined: build with `make -C kernels TRT_ROOT=...` (it takes it from hulurt.contract)"
#endif

namespace hulu {

class TokenReducePlugin : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuild,
                          public nvinfer1::IPluginV3OneRuntime {
 public:
  static constexpr int32_t kNbOutputs = 3;

  TokenReducePlugin(float threshold, int32_t min_tokens, int32_t bf16);
  ~TokenReducePlugin() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return HULU_PLUGIN_NAME; }
  char const* getPluginVersion() const noexcept override { return HULU_PLUGIN_VERSION; }
  char const* getPluginNamespace() const noexcept override { return HULU_PLUGIN_NAMESPACE; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return kNbOutputs; }
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                          nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  float threshold_;
  int32_t min_tokens_;
  int32_t bf16_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection collection_{};
};

class TokenReducePluginCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  TokenReducePluginCreator();
  ~TokenReducePluginCreator() override = default;

  char const* getPluginName() const noexcept override { return HULU_PLUGIN_NAME; }
  char const* getPluginVersion() const noexcept override { return HULU_PLUGIN_VERSION; }
  char const* getPluginNamespace() const noexcept override { return HULU_PLUGIN_NAMESPACE; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &collection_; }
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection collection_{};
};

}  // namespace hulu

// Entry points of a TensorRT 10 plugin library (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins).
extern "C" {
void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
}

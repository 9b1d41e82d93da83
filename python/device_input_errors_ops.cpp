// raise_device_input_errors: what mpt_ext.check_device_input_errors() calls after
// synchronising. The CUDA kernels note bad sequence lengths on the device instead of the host
// reading them (csrc/common/device_input_errors.h); this reports and clears the notes.
#include <torch/library.h>

#include "device_impl.h"

#if defined(MPT_EXT_WITH_CUDA) || defined(MPT_EXT_CUDA_EMULATION)
#include "../csrc/common/device_input_errors.h"
#endif

namespace mpt_ext {
namespace {

void raise_device_input_errors(int64_t device) {
  TORCH_CHECK_VALUE(device >= 0, "device must be a CUDA device index >= 0, got ", device);
#if defined(MPT_EXT_WITH_CUDA) || defined(MPT_EXT_CUDA_EMULATION)
  value_errors([&] { raise_input_errors(static_cast<int>(device)); });
#endif
}

}  // namespace

MPT_EXT_OPS_ANY_DEVICE(m) { m.impl("raise_device_input_errors", &raise_device_input_errors); }

}  // namespace mpt_ext

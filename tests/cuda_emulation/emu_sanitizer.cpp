// Faults the CPU forgives but a GPU does not. The CUDA sources are compiled with
// -fsanitize=alignment,null,bounds (CMakeLists.txt) without linking libubsan: the compiler's
// checks call these handlers, which stop the launch like any other emulator error. On x86 a
// misaligned uint4 or uint32_t access just works; on the GPU it is a "misaligned address"
// fault, and an index past a fixed-size (shared or register) array corrupts silently.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "emu_runtime.h"

namespace {

struct SourceLocation {
  const char* file;
  uint32_t line;
  uint32_t column;
};
struct TypeDescriptor {
  uint16_t kind;
  uint16_t info;
  char name[1];
};
struct TypeMismatchData {  // GCC / clang __ubsan type_mismatch_v1
  SourceLocation loc;
  const TypeDescriptor* type;
  unsigned char log_alignment;
  unsigned char type_check_kind;
};
struct OutOfBoundsData {
  SourceLocation loc;
  const TypeDescriptor* array_type;
  const TypeDescriptor* index_type;
};

std::string at(const SourceLocation& l) {
  return std::string(l.file ? l.file : "?") + ":" + std::to_string(l.line);
}

[[noreturn]] void report(const std::string& what) {
  if (cuda_emu::in_kernel()) cuda_emu::fail(what);
  throw std::runtime_error("cuda_emu: host code: " + what);
}

void type_mismatch(TypeMismatchData* d, uintptr_t ptr) {
  if (ptr == 0) report("null pointer access at " + at(d->loc));
  report("misaligned access at " + at(d->loc) + ": address " + std::to_string(ptr) +
         " is not " + std::to_string(1u << d->log_alignment) + "-byte aligned for " +
         d->type->name + " (a misaligned-address fault on the GPU)");
}

void out_of_bounds(OutOfBoundsData* d, uintptr_t index) {
  report("index " + std::to_string(static_cast<intptr_t>(index)) + " out of bounds of " +
         d->array_type->name + " at " + at(d->loc));
}

}  // namespace

extern "C" {
void __ubsan_handle_type_mismatch_v1(TypeMismatchData* d, uintptr_t p) { type_mismatch(d, p); }
void __ubsan_handle_type_mismatch_v1_abort(TypeMismatchData* d, uintptr_t p) { type_mismatch(d, p); }
void __ubsan_handle_out_of_bounds(OutOfBoundsData* d, uintptr_t i) { out_of_bounds(d, i); }
void __ubsan_handle_out_of_bounds_abort(OutOfBoundsData* d, uintptr_t i) { out_of_bounds(d, i); }
}

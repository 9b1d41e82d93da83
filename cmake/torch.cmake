# Torch from the Python in Python3_EXECUTABLE: sets TORCH_LIB_DIR, TORCH_INCLUDE_DIRS,
# TORCH_VERSION and the interface target mpt_torch (headers, ABI define, c10 + torch_cpu).
# Shared by the extension build (CMakeLists.txt) and the emulation build
# (tests/cuda_emulation/CMakeLists.txt).
# Torch is taken from the Python that builds us. We read its paths rather than calling
# find_package(Torch): a CUDA build of torch makes its CMake config demand a CUDA toolkit,
# which would break the CPU-only build on machines without nvcc.
execute_process(
  COMMAND "${Python3_EXECUTABLE}" -c
    "import os, torch, torch.utils.cpp_extension as c; print(';'.join(c.include_paths())); print(os.path.join(os.path.dirname(torch.__file__), 'lib')); print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(torch.__version__)"
  OUTPUT_VARIABLE _torch_info OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _torch_rc ERROR_QUIET)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "mpt_ext: torch is not importable from ${Python3_EXECUTABLE}; install torch first")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(LENGTH _torch_info _n)
math(EXPR _i_lib "${_n} - 3")
math(EXPR _i_abi "${_n} - 2")
math(EXPR _i_ver "${_n} - 1")
list(GET _torch_info ${_i_lib} TORCH_LIB_DIR)
list(GET _torch_info ${_i_abi} TORCH_CXX11_ABI)
list(GET _torch_info ${_i_ver} TORCH_VERSION)
list(SUBLIST _torch_info 0 ${_i_lib} TORCH_INCLUDE_DIRS)
message(STATUS "mpt_ext: torch ${TORCH_VERSION} from ${TORCH_LIB_DIR}")

add_library(mpt_torch INTERFACE)
target_include_directories(mpt_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
target_compile_definitions(mpt_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI})
foreach(_lib c10 torch_cpu)
  find_library(_path_${_lib} NAMES ${_lib} PATHS "${TORCH_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
  target_link_libraries(mpt_torch INTERFACE "${_path_${_lib}}")
endforeach()

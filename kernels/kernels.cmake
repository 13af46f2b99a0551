# kernels/: the CUDA backend, compiled into libeasel when CUDA is on
# (EASEL_HAVE_CUDA), and the op tests:
#   test_ops_cuda  always built (host C++ only): the same kernels/*.cu compiled
#                  by the C++ compiler over kernels/emu/, run on the CPU and
#                  compared with the CPU backend (CI runs this one);
#   test_ops_gpu   built with CUDA: the same test on the real backend; prints
#                  "skipped: no CUDA device" where there is none;
#   bench_ops      built with CUDA: kernel timings at SD shapes (gpu-check).
file(GLOB EASEL_KERNEL_CU CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/kernels/*.cu)
file(GLOB EASEL_KERNEL_C CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/kernels/*.c)

if(EASEL_HAVE_CUDA)
  target_sources(easel_lib PRIVATE ${EASEL_KERNEL_C} ${EASEL_KERNEL_CU})
  target_compile_definitions(easel_lib PUBLIC EASEL_HAVE_CUDA=1)
  target_compile_options(easel_lib PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra --Werror=all-warnings -lineinfo>)
  target_link_libraries(easel_lib PUBLIC CUDA::cudart CUDA::cublasLt)
  # kernel benchmarks at SD shapes (tools/gpu_check.sh runs them on a GPU)
  add_executable(bench_ops ${CMAKE_SOURCE_DIR}/kernels/bench/bench_ops.c)
  target_compile_options(bench_ops PRIVATE ${EASEL_WARN})
  target_link_libraries(bench_ops PRIVATE easel_lib)
endif()

# The emulated build compiles each .cu as C++ through a one-line wrapper (a
# source file has one language per directory, and it is CUDA when nvcc is on).
set(EASEL_EMU_SRC)
foreach(cu ${EASEL_KERNEL_CU})
  get_filename_component(name ${cu} NAME_WE)
  set(wrapper ${CMAKE_BINARY_DIR}/kernels-emu/${name}.cpp)
  file(CONFIGURE OUTPUT ${wrapper} CONTENT "#include \"${cu}\"\n" @ONLY)
  list(APPEND EASEL_EMU_SRC ${wrapper})
endforeach()

# The emulator's shared-memory race detector and random fiber switches need
# every load and store of kernel code to call it: the kernel sources (and the
# test's own kernels) are compiled with ThreadSanitizer's instrumentation but
# linked without its runtime; kernels/emu/emu.cpp defines the __tsan_* entry
# points. Not in sanitizer builds (ASan and TSan instrumentation exclude each
# other) nor with clang's fuzzer build: there the emulator runs without them.
set(EASEL_EMU_RACECHECK OFF)
if(NOT EASEL_SANITIZE AND NOT EASEL_FUZZ AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  set(EASEL_EMU_RACECHECK ON)
endif()

# The emulated CUDA backend, shared by the tests built on it: the kernels,
# backend_cuda.c and cuda_host.c over kernels/emu (entry points with an _emu_
# infix), the scheduler and the runtime.
add_library(easel_emu OBJECT ${EASEL_EMU_SRC} ${EASEL_KERNEL_C} ${CMAKE_SOURCE_DIR}/kernels/emu/emu.cpp
            ${CMAKE_SOURCE_DIR}/kernels/emu/cuda_runtime_emu.cpp)
target_compile_definitions(easel_emu PUBLIC EASEL_CUDA_EMU=1 _GNU_SOURCE)
target_include_directories(easel_emu PUBLIC ${CMAKE_SOURCE_DIR}/kernels ${CMAKE_SOURCE_DIR})
target_compile_options(easel_emu PRIVATE -Wall -Wextra -Werror -Wno-error=unused-function)
if(EASEL_EMU_RACECHECK)
  target_compile_definitions(easel_emu PUBLIC EASEL_EMU_RACECHECK=1)
  set_source_files_properties(${EASEL_EMU_SRC} PROPERTIES COMPILE_OPTIONS "-fsanitize=thread")
endif()

# Tests on the emulated backend; the CPU backend (libeasel) is their reference.
# test_ops_cuda is compiled through a wrapper, so that its instrumentation
# (its own test kernels) does not reach test_ops_gpu, built from the same file.
if(EXISTS ${CMAKE_SOURCE_DIR}/engine/backend_cpu.c AND EXISTS ${CMAKE_SOURCE_DIR}/tests/test_ops_cuda.cpp)
  set(EASEL_EMU_TEST ${CMAKE_BINARY_DIR}/kernels-emu/test_ops_cuda_emu.cpp)
  file(CONFIGURE OUTPUT ${EASEL_EMU_TEST}
       CONTENT "#include \"${CMAKE_SOURCE_DIR}/tests/test_ops_cuda.cpp\"\n" @ONLY)
  if(EASEL_EMU_RACECHECK)
    set_source_files_properties(${EASEL_EMU_TEST} PROPERTIES COMPILE_OPTIONS "-fsanitize=thread")
  endif()
  foreach(t test_ops_cuda test_pipeline_cuda)
    if(t STREQUAL test_ops_cuda)
      add_executable(${t} ${EASEL_EMU_TEST} $<TARGET_OBJECTS:easel_emu>)
    else()
      add_executable(${t} ${CMAKE_SOURCE_DIR}/tests/${t}.cpp $<TARGET_OBJECTS:easel_emu>)
    endif()
    target_compile_definitions(${t} PRIVATE $<TARGET_PROPERTY:easel_emu,INTERFACE_COMPILE_DEFINITIONS>)
    target_include_directories(${t} PRIVATE ${CMAKE_SOURCE_DIR}/kernels)
    target_compile_options(${t} PRIVATE -Wall -Wextra -Werror -Wno-error=unused-function)
    target_link_libraries(${t} PRIVATE easel_lib)
    set_target_properties(${t} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
    add_test(NAME ${t} COMMAND ${t})
  endforeach()

  if(EASEL_HAVE_CUDA)
    add_executable(test_ops_gpu ${CMAKE_SOURCE_DIR}/tests/test_ops_cuda.cpp)
    target_include_directories(test_ops_gpu PRIVATE ${CMAKE_SOURCE_DIR}/kernels)
    target_compile_options(test_ops_gpu PRIVATE -Wall -Wextra -Werror -Wno-error=unused-function)
    target_link_libraries(test_ops_gpu PRIVATE easel_lib)
    set_target_properties(test_ops_gpu PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
    add_test(NAME test_ops_gpu COMMAND test_ops_gpu)
  endif()
endif()

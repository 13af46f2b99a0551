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

# The op test needs the CPU backend as its reference.
if(EXISTS ${CMAKE_SOURCE_DIR}/engine/backend_cpu.c AND EXISTS ${CMAKE_SOURCE_DIR}/tests/test_ops_cuda.cpp)
  add_executable(test_ops_cuda ${CMAKE_SOURCE_DIR}/tests/test_ops_cuda.cpp ${EASEL_EMU_SRC}
                 ${EASEL_KERNEL_C} ${CMAKE_SOURCE_DIR}/kernels/emu/emu.cpp
                 ${CMAKE_SOURCE_DIR}/kernels/emu/cuda_runtime_emu.c)
  target_compile_definitions(test_ops_cuda PRIVATE EASEL_CUDA_EMU=1)
  target_include_directories(test_ops_cuda PRIVATE ${CMAKE_SOURCE_DIR}/kernels)
  target_compile_options(test_ops_cuda PRIVATE -Wall -Wextra -Werror -Wno-error=unused-function)
  target_link_libraries(test_ops_cuda PRIVATE easel_lib)
  set_target_properties(test_ops_cuda PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME test_ops_cuda COMMAND test_ops_cuda)

  if(EASEL_HAVE_CUDA)
    add_executable(test_ops_gpu ${CMAKE_SOURCE_DIR}/tests/test_ops_cuda.cpp)
    target_include_directories(test_ops_gpu PRIVATE ${CMAKE_SOURCE_DIR}/kernels)
    target_compile_options(test_ops_gpu PRIVATE -Wall -Wextra -Werror -Wno-error=unused-function)
    target_link_libraries(test_ops_gpu PRIVATE easel_lib)
    set_target_properties(test_ops_gpu PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
    add_test(NAME test_ops_gpu COMMAND test_ops_gpu)
  endif()
endif()

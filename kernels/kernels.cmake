# kernels/: compiled into libeasel when CUDA is on (EASEL_HAVE_CUDA).
# Filled in by the CUDA kernels work (see DESIGN.md, kernels/).
if(EASEL_HAVE_CUDA)
  target_compile_definitions(easel_lib PUBLIC EASEL_HAVE_CUDA=1)
endif()

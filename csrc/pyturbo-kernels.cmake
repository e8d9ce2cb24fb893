# pyturbo's kernels for the turbo2/turbo3/turbo4 KV-cache types, compiled into
# llama.cpp's ggml targets, and the turbo rules of libllama, compiled into the
# llama target. Included by the top-level CMakeLists.txt after
# add_subdirectory(llama.cpp); the patches in patches/ only add the table rows,
# case labels and calls that point here.

set(PYTURBO_CSRC_DIR ${CMAKE_CURRENT_LIST_DIR})

if(NOT TARGET ggml-base OR NOT TARGET llama)
    message(FATAL_ERROR "pyturbo-kernels.cmake: include it after llama.cpp's add_subdirectory (no ggml-base or llama target)")
endif()

target_sources(ggml-base PRIVATE
    ${PYTURBO_CSRC_DIR}/turbo-common.h
    ${PYTURBO_CSRC_DIR}/turbo-quants.h
    ${PYTURBO_CSRC_DIR}/turbo-quants.c)
target_include_directories(ggml-base PRIVATE ${PYTURBO_CSRC_DIR})
# The block scale (sums of products in turbo-quants.c) must round the same on every
# platform, or an AArch64 build picks other scales and codes than an x86 one (1 block
# in ~5000; tests/test_neon_qemu.py compares them). GCC fuses a*b + c into an FMA by
# default wherever the target has one (every AArch64, x86 with FMA), clang within a
# statement: keep the plain multiply-then-add. GPU quantizers reproduce this.
if(CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
    set_source_files_properties(${PYTURBO_CSRC_DIR}/turbo-quants.c TARGET_DIRECTORY ggml-base
                                PROPERTIES COMPILE_OPTIONS -ffp-contract=off)
endif()

# patches/0002 calls these from llama-kv-cache.cpp and llama-quant.cpp
target_sources(llama PRIVATE
    ${PYTURBO_CSRC_DIR}/llama/turbo-llama.h
    ${PYTURBO_CSRC_DIR}/llama/turbo-llama.cpp
    ${PYTURBO_CSRC_DIR}/llama/turbo-kv-transform.h
    ${PYTURBO_CSRC_DIR}/llama/turbo-kv-transform.cpp
    ${PYTURBO_CSRC_DIR}/llama/turbo-kv-calibration.h
    ${PYTURBO_CSRC_DIR}/llama/turbo-kv-calibration-text.h
    ${PYTURBO_CSRC_DIR}/llama/turbo-kv-calibration.cpp
    ${PYTURBO_CSRC_DIR}/llama/turbo-guard.h
    ${PYTURBO_CSRC_DIR}/llama/turbo-guard.cpp)
target_include_directories(llama PRIVATE ${PYTURBO_CSRC_DIR}/llama)
# llama compiles its sources in unity batches; ours stand alone, so their file-local names meet no one else's
set_source_files_properties(${PYTURBO_CSRC_DIR}/llama/turbo-llama.cpp ${PYTURBO_CSRC_DIR}/llama/turbo-kv-transform.cpp
                            ${PYTURBO_CSRC_DIR}/llama/turbo-kv-calibration.cpp
                            ${PYTURBO_CSRC_DIR}/llama/turbo-guard.cpp
                            TARGET_DIRECTORY llama PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
# turbo-kv-calibration.cpp asks a weight's buffer whether it can be read back (ggml-backend-impl.h):
# CPU weights repacked for SIMD cannot
get_target_property(pyturbo_ggml_base_dir ggml-base SOURCE_DIR)
set_source_files_properties(${PYTURBO_CSRC_DIR}/llama/turbo-kv-calibration.cpp TARGET_DIRECTORY llama
                            PROPERTIES INCLUDE_DIRECTORIES ${pyturbo_ggml_base_dir})

# csrc/<folder>/<name>.h and .cpp compiled into an optional backend library, when it is built.
function(pyturbo_add_to_backend target folder name)
    if(TARGET ${target})
        target_sources(${target} PRIVATE ${PYTURBO_CSRC_DIR}/${folder}/${name}.h ${PYTURBO_CSRC_DIR}/${folder}/${name}.cpp)
        target_include_directories(${target} PRIVATE ${PYTURBO_CSRC_DIR}/${folder})
    endif()
endfunction()

# turbo-guard.cpp's abort callback throws through ggml_abort (ggml.c) back to the guarded
# call: that C file needs unwind tables, which not every compiler emits for C by default.
if(CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
    set_property(SOURCE ${pyturbo_ggml_base_dir}/ggml.c TARGET_DIRECTORY ggml-base
                 APPEND PROPERTY COMPILE_OPTIONS -fexceptions)
endif()

# RPC (GGML_RPC, on in pyturbo's build): TCP keepalive on its connections (patches/0009
# calls it from transport.cpp) and the memory-capped device of pyturbo.rpc_worker --mem.
pyturbo_add_to_backend(ggml-rpc rpc turbo-rpc)

# Metal: supports_op for the turbo types (patches/0008 calls it from ggml-metal-device.m and
# ggml-metal-ops.cpp); the kernels themselves are Metal sources that ggml-metal's own
# CMakeLists.txt embeds from csrc/metal (PYTURBO_METAL_DIR).
pyturbo_add_to_backend(ggml-metal metal turbo-metal)

# The CPU backend is ggml-cpu, or ggml-cpu-<variant> targets with
# GGML_CPU_ALL_VARIANTS: add the kernels to each of them.
get_target_property(pyturbo_ggml_src_dir ggml-base SOURCE_DIR)
get_property(pyturbo_ggml_targets DIRECTORY ${pyturbo_ggml_src_dir} PROPERTY BUILDSYSTEM_TARGETS)
foreach(target IN LISTS pyturbo_ggml_targets)
    if(NOT target MATCHES "^ggml-cpu(-.+)?$" OR target MATCHES "-feats$")
        continue()
    endif()
    # arch/<arch>/turbo.c compile to nothing on other targets (see cpu/turbo-impl.h)
    target_sources(${target} PRIVATE
        ${PYTURBO_CSRC_DIR}/cpu/turbo.h
        ${PYTURBO_CSRC_DIR}/cpu/turbo-impl.h
        ${PYTURBO_CSRC_DIR}/cpu/turbo.c
        ${PYTURBO_CSRC_DIR}/cpu/arch/turbo-kernels.h
        ${PYTURBO_CSRC_DIR}/cpu/arch/x86/turbo.c
        ${PYTURBO_CSRC_DIR}/cpu/arch/arm/turbo.c
        ${PYTURBO_CSRC_DIR}/cpu/turbo-fattn.cpp)
    target_include_directories(${target} PRIVATE ${PYTURBO_CSRC_DIR} ${PYTURBO_CSRC_DIR}/cpu)
endforeach()

# The CUDA backend (GGML_CUDA=on): csrc/cuda/, its flash-attention instances and
# the turbo-cuda-check target.
if(TARGET ggml-cuda)
    include(${PYTURBO_CSRC_DIR}/cuda/pyturbo-cuda.cmake)
endif()

# pyturbo's CUDA code for the turbo KV-cache types, added to llama.cpp's
# ggml-cuda target (GGML_CUDA=on). Included by csrc/pyturbo-kernels.cmake.
#
# Flash-attention vector kernel instances: PYTURBO_CUDA_FA_TURBO lists the turbo
# K-V pairs to compile (default: the three symmetric pairs and q8_0 K with each
# turbo V); pairs with a turbo type named in GGML_CUDA_FA_QUANTS are added to it,
# and GGML_CUDA_FA_QUANTS=all (or GGML_CUDA_FA_ALL_QUANTS) takes every turbo pair
# there is. A pair not compiled still runs, through an f16 copy of K and V, as
# upstream's unselected pairs do (fattn.cu).
#
# turbo-cuda-check: compiles csrc/cuda/*.cu and the selected instances for one
# architecture (PYTURBO_CUDA_CHECK_ARCH, default the first real one of ggml-cuda's), with
# ggml-cuda's flags, without building the rest of the backend. CI builds it.

if(NOT TARGET ggml-cuda)
    return()
endif()

enable_language(CUDA)

set(PYTURBO_CUDA_DIR ${CMAKE_CURRENT_LIST_DIR})
set(pyturbo_cuda_fa_turbo_pairs turbo2-turbo2 turbo3-turbo3 turbo4-turbo4 q8_0-turbo2 q8_0-turbo3 q8_0-turbo4)
string(REPLACE ";" "," pyturbo_cuda_fa_turbo_default "${pyturbo_cuda_fa_turbo_pairs}")
set(PYTURBO_CUDA_FA_TURBO "${pyturbo_cuda_fa_turbo_default}" CACHE STRING
    "turbo K-V pairs with a CUDA flash-attention vector kernel (, or ; separated; none for none)")
set(PYTURBO_CUDA_CHECK_ARCH "" CACHE STRING "CUDA architecture of turbo-cuda-check (default: the first real one of ggml-cuda's)")

# The pairs asked for, from PYTURBO_CUDA_FA_TURBO and GGML_CUDA_FA_QUANTS.
string(TOLOWER "${PYTURBO_CUDA_FA_TURBO},${GGML_CUDA_FA_QUANTS}" pyturbo_fa_requested)
string(REPLACE "," ";" pyturbo_fa_requested "${pyturbo_fa_requested}")
set(pyturbo_fa_selected "")
foreach(pair IN LISTS pyturbo_fa_requested)
    string(STRIP "${pair}" pair)
    if(pair STREQUAL "all")
        list(APPEND pyturbo_fa_selected ${pyturbo_cuda_fa_turbo_pairs})
    elseif(pair MATCHES "turbo")
        if(NOT pair IN_LIST pyturbo_cuda_fa_turbo_pairs)
            message(FATAL_ERROR "pyturbo: no CUDA flash-attention kernel for the K-V pair \"${pair}\"; "
                                "the turbo pairs are: ${pyturbo_cuda_fa_turbo_pairs}")
        endif()
        list(APPEND pyturbo_fa_selected ${pair})
    endif()
endforeach()
if(GGML_CUDA_FA_ALL_QUANTS)
    list(APPEND pyturbo_fa_selected ${pyturbo_cuda_fa_turbo_pairs})
endif()
list(REMOVE_DUPLICATES pyturbo_fa_selected)
message(STATUS "pyturbo: CUDA flash-attention turbo K-V pairs: ${pyturbo_fa_selected}")

# fattn.cu tests GGML_CUDA_FA_<K>_<V> for each turbo pair it knows (1: compiled)
set(pyturbo_fa_sources "")
set(pyturbo_fa_defines "")
foreach(pair IN LISTS pyturbo_cuda_fa_turbo_pairs)
    string(REPLACE "-" "_" pair_define "${pair}")
    string(TOUPPER "GGML_CUDA_FA_${pair_define}" pair_define)
    if(pair IN_LIST pyturbo_fa_selected)
        list(APPEND pyturbo_fa_defines ${pair_define}=1)
        list(APPEND pyturbo_fa_sources ${PYTURBO_CUDA_DIR}/template-instances/fattn-vec-instance-${pair}.cu)
    else()
        list(APPEND pyturbo_fa_defines ${pair_define}=0)
    endif()
endforeach()

set(pyturbo_cuda_sources
    ${PYTURBO_CUDA_DIR}/turbo-cuda.cu)
set(pyturbo_cuda_headers
    ${PYTURBO_CUDA_DIR}/turbo-block.h
    ${PYTURBO_CUDA_DIR}/turbo-cuda.cuh
    ${PYTURBO_CUDA_DIR}/turbo-dequantize.cuh
    ${PYTURBO_CUDA_DIR}/turbo-fattn.cuh
    ${PYTURBO_CUDA_DIR}/turbo-fattn-vec-cases.cuh)

get_target_property(pyturbo_ggml_cuda_dir ggml-cuda SOURCE_DIR)

target_sources(ggml-cuda PRIVATE ${pyturbo_cuda_headers} ${pyturbo_cuda_sources} ${pyturbo_fa_sources})
# our files include ggml-cuda's headers, and the patched ggml-cuda files include ours
target_include_directories(ggml-cuda PRIVATE ${pyturbo_ggml_cuda_dir} ${PYTURBO_CSRC_DIR} ${PYTURBO_CUDA_DIR})
target_compile_definitions(ggml-cuda PRIVATE ${pyturbo_fa_defines})

# The quantizer must round like the CPU reference: IEEE division and square root,
# no fused multiply-adds, subnormals kept (they come after ggml-cuda's -use_fast_math).
set(pyturbo_cuda_ieee_options "$<$<COMPILE_LANGUAGE:CUDA>:-ftz=false;-prec-div=true;-prec-sqrt=true;-fmad=false>")
set_source_files_properties(${PYTURBO_CUDA_DIR}/turbo-cuda.cu TARGET_DIRECTORY ggml-cuda
                            PROPERTIES COMPILE_OPTIONS "${pyturbo_cuda_ieee_options}")

# turbo-cuda-check: the same sources, flags and definitions as in ggml-cuda, one architecture.
if(NOT PYTURBO_CUDA_CHECK_ARCH)
    # the first that ptxas compiles to machine code (a -virtual one stops at PTX)
    get_target_property(pyturbo_cuda_archs ggml-cuda CUDA_ARCHITECTURES)
    list(GET pyturbo_cuda_archs 0 PYTURBO_CUDA_CHECK_ARCH)
    foreach(arch IN LISTS pyturbo_cuda_archs)
        if(NOT arch MATCHES "-virtual$")
            set(PYTURBO_CUDA_CHECK_ARCH ${arch})
            break()
        endif()
    endforeach()
endif()
get_directory_property(pyturbo_ggml_cuda_dir_defines DIRECTORY ${pyturbo_ggml_cuda_dir} COMPILE_DEFINITIONS)
add_library(turbo-cuda-check OBJECT EXCLUDE_FROM_ALL ${pyturbo_cuda_sources} ${pyturbo_fa_sources})
target_link_libraries(turbo-cuda-check PRIVATE ggml-base)
target_include_directories(turbo-cuda-check PRIVATE $<TARGET_PROPERTY:ggml-cuda,INCLUDE_DIRECTORIES>)
target_compile_definitions(turbo-cuda-check PRIVATE ${pyturbo_ggml_cuda_dir_defines}
                           $<TARGET_PROPERTY:ggml-cuda,COMPILE_DEFINITIONS>)
target_compile_options(turbo-cuda-check PRIVATE $<TARGET_PROPERTY:ggml-cuda,COMPILE_OPTIONS>)
target_compile_features(turbo-cuda-check PRIVATE cxx_std_17 cuda_std_17)
set_target_properties(turbo-cuda-check PROPERTIES CUDA_ARCHITECTURES "${PYTURBO_CUDA_CHECK_ARCH}" POSITION_INDEPENDENT_CODE ON)
set_source_files_properties(${PYTURBO_CUDA_DIR}/turbo-cuda.cu
                            PROPERTIES COMPILE_OPTIONS "${pyturbo_cuda_ieee_options}")
message(STATUS "pyturbo: turbo-cuda-check compiles for CUDA architecture ${PYTURBO_CUDA_CHECK_ARCH}")

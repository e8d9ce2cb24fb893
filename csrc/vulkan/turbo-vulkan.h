// pyturbo: turbo2/turbo3/turbo4 and the trellis-coded turbo3t/turbo2t in ggml's Vulkan backend (ggml-vulkan.cpp includes this file;
// patches/0011 calls what is here from the places that list quantized types).
//
// What runs on a Vulkan device: GET_ROWS, CPY f32 -> turbo and turbo -> f32 (K-shift),
// SET_ROWS from f32/f16 (the KV write) and flash attention with turbo K and/or V in the
// scalar and coopmat1 shaders (the shaders: csrc/vulkan/*.glsl). MUL_MAT with a turbo
// operand (K*Q with flash attention off) is not in supports_op, so the scheduler runs it
// on the CPU instead of computing anything wrong here.
#pragma once

// Shared memory every flash-attention shader holds for the trellis tables (turbo-fa.glsl's
// turbo_tcq_fa_table), for the size checks of ggml_vk_flash_attn_*_shmem_support.
#define PYTURBO_VK_FA_SHMEM_BYTES (384 * sizeof(uint32_t))

// the case labels of the turbo types, for the switches that list supported types
#define PYTURBO_VK_TURBO_CASES \
    case GGML_TYPE_TURBO2:     \
    case GGML_TYPE_TURBO3:     \
    case GGML_TYPE_TURBO4:     \
    case GGML_TYPE_TURBO3T:    \
    case GGML_TYPE_TURBO2T:

#define PYTURBO_VK_TURBO_SET_ROWS(type, name, src_idx, src, itype)                                                      \
    ggml_vk_create_pipeline(device, device->pipeline_set_rows##itype[src_idx][type], "set_rows_" #src "_" #name #itype, \
                            set_rows_##src##_##name##itype##_len, set_rows_##src##_##name##itype##_data, "main", 3,      \
                            sizeof(vk_op_binary_push_constants), {1, 1, 1}, {1}, 1, true);

// Every pipeline of one turbo type, as ggml_vk_load_shaders creates those of the other quants.
#define PYTURBO_VK_TURBO_PIPELINES_OF(type, name)                                                                      \
    ggml_vk_create_pipeline(device, device->pipeline_get_rows[type], "get_rows_" #name, get_rows_##name##_len,          \
                            get_rows_##name##_data, "main", 3, sizeof(vk_op_binary_push_constants), {1024, 1, 1}, {}, 1); \
    ggml_vk_create_pipeline(device, device->pipeline_get_rows_f32[type], "get_rows_" #name "_f32",                      \
                            get_rows_##name##_f32_len, get_rows_##name##_f32_data, "main", 3,                           \
                            sizeof(vk_op_binary_push_constants), {1024, 1, 1}, {}, 1);                                  \
    ggml_vk_create_pipeline(device, device->pipeline_cpy_f32_quant[type], "cpy_f32_" #name, cpy_f32_##name##_len,      \
                            cpy_f32_##name##_data, "main", 2, sizeof(vk_op_unary_push_constants), {32, 1, 1}, {}, 1);   \
    ggml_vk_create_pipeline(device, device->pipeline_cpy_quant_f32[type], "cpy_" #name "_f32", cpy_##name##_f32_len,    \
                            cpy_##name##_f32_data, "main", 2, sizeof(vk_op_unary_push_constants),                       \
                            {(uint32_t) ggml_blck_size(type), 1, 1}, {}, 1);                                            \
    PYTURBO_VK_TURBO_SET_ROWS(type, name, 0, f32, _i32)                                                                \
    PYTURBO_VK_TURBO_SET_ROWS(type, name, 0, f32, _i64)                                                                \
    PYTURBO_VK_TURBO_SET_ROWS(type, name, 1, f16, _i32)                                                                \
    PYTURBO_VK_TURBO_SET_ROWS(type, name, 1, f16, _i64)

// In ggml_vk_load_shaders, where `device` is the device being set up.
#define PYTURBO_VK_CREATE_TURBO_PIPELINES()                     \
    PYTURBO_VK_TURBO_PIPELINES_OF(GGML_TYPE_TURBO2, turbo2)     \
    PYTURBO_VK_TURBO_PIPELINES_OF(GGML_TYPE_TURBO3, turbo3)     \
    PYTURBO_VK_TURBO_PIPELINES_OF(GGML_TYPE_TURBO4, turbo4)     \
    PYTURBO_VK_TURBO_PIPELINES_OF(GGML_TYPE_TURBO3T, turbo3t)   \
    PYTURBO_VK_TURBO_PIPELINES_OF(GGML_TYPE_TURBO2T, turbo2t)

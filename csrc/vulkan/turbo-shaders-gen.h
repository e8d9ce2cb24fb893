// pyturbo: the turbo2/turbo3/turbo4/turbo3t/turbo2t variants of ggml's Vulkan shaders, for its shader
// generator (vulkan-shaders-gen.cpp includes this file after string_to_spv and calls
// pyturbo_turbo_shaders from process_shaders: patches/0011). Only the ops the turbo types
// need on a device: GET_ROWS, CPY both ways and SET_ROWS (the KV write); their flash
// attention is in the shared flash-attention shaders (turbo-fa.glsl), and MUL_MAT with a
// turbo operand is refused by supports_op (the scheduler runs it on the CPU).
// Included inside the generator's anonymous namespace, after its <map>, <string> and
// string_to_spv/merge_maps/to_uppercase: it adds no includes of its own.
#pragma once

static void pyturbo_turbo_shaders() {
    const std::map<std::string, std::string> base = {{"FLOAT_TYPE", "float"}, {"FLOAT_TYPEV2", "vec2"}};
    for (const std::string t : {"turbo2", "turbo3", "turbo4", "turbo3t", "turbo2t"}) {
        const std::string data_a = "DATA_A_" + to_uppercase(t);
        string_to_spv("get_rows_" + t, "get_rows_quant.comp",
                      merge_maps(base, {{"TEMP_TYPE", "FLOAT_TYPE"}, {data_a, "1"}, {"B_TYPE", "int"}, {"D_TYPE", "float16_t"}}));
        string_to_spv("get_rows_" + t + "_f32", "get_rows_quant.comp",
                      merge_maps(base, {{"TEMP_TYPE", "FLOAT_TYPE"}, {data_a, "1"}, {"B_TYPE", "int"}, {"D_TYPE", "float"}}));
        string_to_spv("cpy_f32_" + t, "copy_to_quant.comp",
                      {{data_a, "1"}, {"S_TYPE", "float"}, {"D_TYPE", "float"}, {"FLOAT_TYPE", "float"}});
        string_to_spv("cpy_" + t + "_f32", "copy_from_quant.comp", {{data_a, "1"}, {"D_TYPE", "float"}, {"FLOAT_TYPE", "float"}});
        for (const auto & src : {std::pair<std::string, std::string>{"f32", "float"}, {"f16", "float16_t"}}) {
            for (const auto & index : {std::pair<std::string, std::string>{"i32", "uint"}, {"i64", "uvec2"}}) {
                string_to_spv("set_rows_" + src.first + "_" + t + "_" + index.first, "copy_to_quant.comp",
                              {{"SET_ROWS", "1"}, {data_a, "1"}, {"B_TYPE", index.second},
                               {"B_SIZE", index.first == "i32" ? "32" : "64"}, {"S_TYPE", src.second}, {"D_TYPE", "float"},
                               {"FLOAT_TYPE", "float"}});
            }
        }
    }
}

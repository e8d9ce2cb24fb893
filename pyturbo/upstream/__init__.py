"""llama.cpp's rules, written down in Python so that planning needs no native library.

Each module here mirrors what llama.cpp does at the commit pinned in
vendor/llama-cpp.pin, and cites the source it follows:

- `loader_rules`: what the model loader asserts instead of reporting;
- `geometry`: a model's per-layer shape as llama.cpp derives it from GGUF metadata;
- `cache_table`: ggml's K/V cache types (with pyturbo's turbo rows) and the
  attention-rotation rule;
- `allocation`: cells, KV-cache bytes, recurrent state and compute buffer of a context;
- `quant_presets`: the per-tensor types llama-quantize's presets would pick.

They are facts about someone else's code, so they go stale when the pin moves.
Each module carries `CHECKED_AT_PIN`, the commit it was last checked against;
tests/test_upstream_pin.py fails while any stamp differs from the pin. Moving the
pin means re-reading each module against the new sources, then re-stamping it.
"""

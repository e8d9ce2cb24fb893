"""pyturbo.cache_types(): the names usable for cache_k / cache_v, with their sizes."""

import pytest

import pyturbo
from pyturbo.upstream.cache_table import UPSTREAM_CACHE_TYPES


def test_upstream_cache_types_are_listed_in_llama_cpp_order_with_their_bits():
    types = pyturbo.cache_types()
    names = [t.name for t in types]
    assert names[:len(UPSTREAM_CACHE_TYPES)] == list(UPSTREAM_CACHE_TYPES)
    bits = {t.name: t.bits_per_value for t in types}
    assert bits["f32"] == 32 and bits["f16"] == 16 and bits["bf16"] == 16
    assert bits["q8_0"] == 8.5 and bits["q4_0"] == 4.5 and bits["q5_0"] == 5.5
    assert bits["q4_1"] == 5.0 and bits["q5_1"] == 6.0 and bits["iq4_nl"] == 4.5


def test_lookup_is_case_insensitive_and_accepts_ggml_ids():
    assert pyturbo.cache_type("Q8_0").type_id == 8
    assert pyturbo.cache_type(8).name == "q8_0"
    assert pyturbo.cache_type("f16").row_bytes(128) == 256
    assert pyturbo.cache_type("q4_0").row_bytes(64) == 36


@pytest.mark.parametrize("bad", ["q3_0", "", "turbo9", 999, None])
def test_unknown_names_raise_with_the_valid_list(bad):
    with pytest.raises(pyturbo.CacheTypeError, match="valid cache types: f32, f16, bf16, q8_0"):
        pyturbo.cache_type(bad)


def test_the_static_table_matches_the_loaded_libggml():
    """pyturbo.upstream.cache_table is a static table (no native library needed); it must say what libggml says."""
    from pyturbo._native import c_string, ggml

    for t in pyturbo.cache_types():
        assert c_string(ggml.ggml_type_name(t.type_id)) == t.name
        assert ggml.ggml_blck_size(t.type_id) == t.block_size, t.name
        assert ggml.ggml_type_size(t.type_id) == t.type_size, t.name
    assert [t.type_id for t in pyturbo.cache_types() if t.turbo] == [43, 44, 45, 46, 47]


def test_cache_rules_without_a_model_only_check_flash_attention():
    from pyturbo.cache_types import check_cache

    q4, f16 = pyturbo.cache_type("q4_0"), pyturbo.cache_type("f16")
    check_cache(f16, q4, "auto")
    check_cache(q4, f16, "off")                     # a quantized K works without flash attention
    with pytest.raises(pyturbo.CacheTypeError, match="requires flash attention"):
        check_cache(f16, q4, "off")

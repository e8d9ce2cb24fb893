"""python -m pyturbo.selftest on the CPU, and the device list it is built on."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import pyturbo
from pyturbo import selftest
from pyturbo.devices import device_handles, devices
from pyturbo.errors import DeviceError


def test_the_cpu_is_always_a_device_and_takes_no_offloaded_layers():
    found = devices()
    cpu = [d for d in found if d.kind == "cpu"]
    assert len(cpu) == 1 and cpu[0].name == "CPU"
    assert cpu[0].memory_total > 2**30
    assert not cpu[0].offloads_layers


def test_unknown_or_cpu_devices_are_refused_with_the_known_ones_listed(tiny_path):
    with pytest.raises(DeviceError, match="no device 'CUDA7'.*devices: .*CPU"):
        device_handles(["CUDA7"])
    with pytest.raises(DeviceError, match="takes no offloaded layers"):
        pyturbo.Model(tiny_path, n_gpu_layers=99, devices=["CPU"])


def test_compare_logits_measures_difference_kld_and_top_token():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50)).astype(np.float32)
    assert selftest.compare_logits(logits, logits) == (0.0, 0.0, 1.0)
    shifted = logits + 3.0  # the same distribution
    max_diff, kld, top1 = selftest.compare_logits(logits, shifted)
    assert max_diff == pytest.approx(3.0) and kld < 1e-12 and top1 == 1.0
    flat = np.zeros_like(logits)  # uniform: KL = log(50) - entropy, top token lost
    _, kld, _ = selftest.compare_logits(logits, flat)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = float((p * (np.log(p) + np.log(50))).sum(1).mean())
    assert kld == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def cpu_rows(smol_path):
    return selftest.selftest(smol_path, pairs="f16/f16,q8_0/turbo4,turbo3/turbo3", n_probes=4, n_threads=2,
                             progress=False)


def test_the_cpu_prefill_kernels_agree_with_the_decode_kernels(cpu_rows):
    by_pair = {(r.type_k, r.type_v): r for r in cpu_rows}
    assert set(by_pair) == {("f16", "f16"), ("q8_0", "turbo4"), ("turbo3", "turbo3")}
    assert all(r.device == "CPU" and r.mode == "prefill" and r.n_probes == 4 for r in cpu_rows)
    assert all(r.passed for r in cpu_rows), selftest.rows_to_markdown(cpu_rows)
    # f16 against itself costs nothing, and its two paths agree exactly on one shared cache
    assert by_pair["f16", "f16"].pair_kld == 0.0
    assert by_pair["f16", "f16"].kld < 1e-4
    # the low-bit pairs cost something, and the kernels differ by less than that
    for pair in (("q8_0", "turbo4"), ("turbo3", "turbo3")):
        row = by_pair[pair]
        assert row.pair_kld > 1e-3
        assert row.kld < row.pair_kld
    assert by_pair["turbo3", "turbo3"].kv_transform != "off"  # auto applies on a 3-bit K


def test_a_kernel_that_loses_more_than_its_cache_type_fails(smol_path):
    # a "device" whose q8_0/q8_0 results are really turbo2/turbo2's: what a wrong dequantizer looks like
    with pyturbo.Model(smol_path) as model:
        plan = selftest.ProbePlan(selftest.prompt_tokens(model, 48 + 4 + 24), 48, 4, 24)
        f16_state, _ = selftest.shared_cache(model, plan, "f16", "f16", 2, "off")
        f16 = selftest.probe(model, plan, "f16", "f16", f16_state, 1, 2, "off")
        state, transform = selftest.shared_cache(model, plan, "q8_0", "q8_0", 2, "off")
        good = selftest.probe(model, plan, "q8_0", "q8_0", state, 1, 2, "off")
        wrong_state, _ = selftest.shared_cache(model, plan, "turbo2", "turbo2", 2, "off")
        wrong = selftest.probe(model, plan, "turbo2", "turbo2", wrong_state, 1, 2, "off")
    reference = selftest.PairReference(state, transform, good, selftest.compare_logits(f16, good)[1])
    row = selftest.judge("FAKE0", "decode", "q8_0", "q8_0", reference, wrong, selftest.DEFAULT_MAX_KLD,
                         selftest.DEFAULT_MIN_TOP1)
    assert not row.passed
    assert row.kld > 10 * reference.pair_kld
    assert selftest.judge("FAKE0", "decode", "q8_0", "q8_0", reference, good, selftest.DEFAULT_MAX_KLD,
                          selftest.DEFAULT_MIN_TOP1).passed


def test_the_command_prints_a_table_writes_json_and_exits_0(smol_path, tmp_path):
    out = tmp_path / "selftest.json"
    result = subprocess.run([sys.executable, "-m", "pyturbo.selftest", str(smol_path), "--pairs", "q8_0/turbo3",
                             "--probes", "2", "-t", "2", "--json", str(out)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| CPU | prefill | q8_0 | turbo3 |" in result.stdout
    assert "1/1 passed on CPU" in result.stdout
    rows = json.loads(out.read_text())
    assert rows[0]["type_v"] == "turbo3" and rows[0]["passed"] is True and rows[0]["n_probes"] == 2


def test_the_command_refuses_an_unknown_device_in_one_line(smol_path):
    result = subprocess.run([sys.executable, "-m", "pyturbo.selftest", str(smol_path), "--device", "CUDA0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no device 'CUDA0'" in result.stderr and "Traceback" not in result.stderr

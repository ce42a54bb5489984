"""The serving benchmark's baseline (today's path before the engine) still runs as the app ran it."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from mmchat.serving.engine import ChatEngine, ChatInputError
from mmchat.serving.loading import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compute_limit  # noqa: E402
import serve_bench  # noqa: E402


def test_the_baseline_checks_inputs_and_answers_as_the_engine_does(tiny_checkpoint, shapes_image):
    adapter = load_model(tiny_checkpoint, device="cpu", dtype="float32")
    legacy = serve_bench.LegacyEngine(adapter)
    with pytest.raises(ChatInputError, match="upload an image"):
        legacy.check(None, "What color is the square?")
    with pytest.raises(ChatInputError):
        legacy.check(shapes_image, "???")
    image, question = legacy.check(shapes_image, "What color is the square?")
    engine = ChatEngine(adapter)
    settings = serve_bench.SETTINGS
    assert legacy.answer(image, question, [], settings) == engine.answer(image, question, [], settings)
    assert legacy.attention_overlay(image, question, engine.answer(image, question, [], settings)) is not None
    engine.close()


def test_each_row_is_the_median_of_its_runs_after_one_unmeasured():
    """A 16-user run is 48 answers in under a second: one run is noise; the row is the median run's
    rate, after one run that shapes the kernels and is not counted, with latencies over all runs."""
    calls = []

    def run(k):
        calls.append(k)
        rate = {-1: 1.0, 0: 30.0, 1: 10.0, 2: 20.0}[k]
        records = [{"user": 0, "turn": t, "latency": rate / 100 + t, "ttft": None, "heat": None, "answer": "x"} for t in range(2)]
        with serve_bench.Peak() as peak:
            pass
        return {**serve_bench.summarize(records, 2 / rate, peak)}

    r = serve_bench.measured(run, repeats=3)
    assert calls == [-1, 0, 1, 2]
    assert r["answers_s"] == 20.0 and r["rates"] == [10.0, 20.0, 30.0]
    assert r["answers"] == 6 and sorted({rec["run"] for rec in r["records"]}) == [0, 1, 2]
    assert "median of 3 runs: 10.0-30.0" in serve_bench.spread(r)


def test_a_row_s_baseline_runs_beside_it_before_and_after_its_runs_in_turn():
    """The CPU is shared and its load moves within minutes: each row's ratio is taken against the
    baseline's runs interleaved with the row's own, not against a row measured minutes before."""
    calls = []

    def one(name, rate):
        records = [{"user": 0, "turn": t, "latency": 1 / rate, "ttft": None, "heat": None, "answer": "x"} for t in range(2)]
        with serve_bench.Peak() as peak:
            pass
        return serve_bench.summarize(records, 2 / rate, peak)

    def run(k):
        calls.append(("row", k))
        return one("row", {-1: 1.0, 0: 80.0, 1: 60.0, 2: 70.0}[k])

    def beside(k):
        calls.append(("today", k))
        return one("today", {0: 8.0, 1: 6.0, 2: 9.0}[k])

    r = serve_bench.measured(run, repeats=3, beside=beside)
    assert calls == [("row", -1), ("today", 0), ("row", 0), ("row", 1), ("today", 1), ("today", 2), ("row", 2)]
    assert r["answers_s"] == 70.0 and r["beside"]["answers_s"] == 8.0 and r["beside"]["rates"] == [6.0, 8.0, 9.0]
    assert r["beside"]["p50"] == pytest.approx(1 / 8.0)
    assert "beside" not in serve_bench.measured(run, repeats=1)


def test_a_run_names_the_cpu_it_ran_on(tmp_path):
    """Figures differ between CPUs, so each run says which one it had, with its bf16 matrix units."""
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse avx512_bf16 amx_tile amx_bf16\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse avx512_bf16 amx_tile amx_bf16\n"
    )
    assert serve_bench.cpu_name(info) == "Intel(R) Xeon(R) Processor (amx_bf16, avx512_bf16)"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse avx2\n")
    assert serve_bench.cpu_name(info) == "AMD EPYC 9B14"


def test_an_answers_flops_are_counted_alike_with_the_weights_packed_and_without(tiny_checkpoint, monkeypatch):
    """torch's FlopCounterMode knows no formula for oneDNN's packed linear op: without the one the
    benchmark registers, the shipped model's count fell from 245.4 to 115.5 MFLOP an answer."""
    import mmchat.serving.families.mmchat as mmchat_family

    convs = serve_bench.conversations(2, 2, seed=3)

    def flops(pack: bool) -> dict[str, float]:
        monkeypatch.setattr(mmchat_family.MMChatAdapter, "pack_weights", pack)
        engine = ChatEngine(load_model(tiny_checkpoint, device="cpu", dtype="bfloat16"))
        try:
            assert any(hasattr(m, "packed_weight") for m in engine.adapter.model.modules()) == pack
            return compute_limit.answer_flops(engine, convs, serve_bench.SETTINGS)
        finally:
            engine.close()

    plain = flops(False)
    assert plain["encode"] > 0 and plain["step"] > 0 and flops(True) == plain


def test_the_compute_limit_s_products_run_on_every_core_at_once():
    """Each timing starts all the workers together: work that only ends once every worker is in it
    at the same moment finishes (one after another it would wait for ever)."""
    barrier = threading.Barrier(3)
    seen: list[int] = []

    def work(i: int) -> None:
        barrier.wait(timeout=10)
        seen.append(i)

    assert compute_limit.side_by_side(work, workers=3, repeats=2) > 0
    assert sorted(seen) == [0, 0, 1, 1, 2, 2]


def test_the_model_s_calls_alone_are_counted_and_answer_for_every_row(tiny_checkpoint, shapes_image):
    """The calls timed beside the limit: B images encoded and B first-turn prompts prefilled, each
    row's logits and map out, their FLOPs in proportion to the rows (counted before tracing)."""
    adapter = load_model(tiny_checkpoint, device="cpu", dtype="float32")
    calls = compute_limit.forward_calls(adapter, [shapes_image] * 4, sizes=(2, 4), prompt_tokens=5)
    assert set(calls) == {"encode 2", "encode 4", "prefill 2x5", "prefill 4x5"}
    flops = compute_limit.count_flops(calls)
    assert flops["encode 4"] == 2 * flops["encode 2"] > 0
    assert flops["prefill 4x5"] == 2 * flops["prefill 2x5"] > 0
    logits, _, weights = calls["prefill 4x5"]()
    assert logits.shape[:2] == (4, 1) and weights is not None and weights.shape[:2] == (4, 1)
    assert len(calls["encode 4"]()) == 4
    rates = compute_limit.forwards_alone(calls, flops, repeats=1)
    assert set(rates) == set(calls) and all(rate > 0 for rate in rates.values())


def test_the_ceiling_takes_each_part_of_an_answer_at_its_fastest_rate_alone():
    """100 FLOPs of encode at the faster encode's 20 FLOP/s (5 s) and 100 of forwards at the prefill's
    5 (20 s): 200 FLOPs in 25 s."""
    rates = {"encode 16": 10.0, "encode 32": 20.0, "prefill 16x13": 5.0}
    assert compute_limit.ceiling({"encode": 100.0, "step": 100.0}, rates) == pytest.approx(8.0)
    assert compute_limit.ceiling({"encode": 0.0, "step": 100.0}, rates) == pytest.approx(5.0)

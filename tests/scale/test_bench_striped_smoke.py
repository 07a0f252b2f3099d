"""benchmarks/bench_striped.py at tiny sizes: every part runs and what it reports adds up.

On the shared session cluster (tests/scale/conftest.py); two stripe actors of its own.
Asserted: the striped and one-process rounds give exactly the survivors' sum (the bench
checks it and raises otherwise: shown below on a wrong sum), each stripe received
survivors-to-be x its range x 4 bytes and generated masks x its range x 4 bytes of AES-CTR,
its measured peak covers its share (accumulator + staged ranges) within a small constant,
the grouped round counts every survivor of every group, and the model's server time falls
with more machines. No timing is asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import ray

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_striped.py"
#: Above a stripe's share: the PRG's scratch, a chunk in flight, Ray's call buffers.
MEMORY_CONSTANT_MIB = 2.0


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_striped_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def pool(cluster):
    from sealagg.appliance.scale.cluster import stripe_options
    from sealagg.appliance.scale.coordinator import stripe_actor_class

    actors = [stripe_actor_class(**stripe_options()).remote() for _ in range(2)]
    yield actors
    for actor in actors:
        ray.kill(actor)


def test_striped_rows_add_up_and_match_the_one_process_round(bench, pool) -> None:
    args = bench.parser().parse_args(
        [
            "striped",
            "--dimension",
            "20003",
            "--clients",
            "5",
            "--dropout",
            "0.2",
            "--stripes",
            "1",
            "2",
            "--single-timeout",
            "120",
        ]
    )
    result = bench.run_striped(args, pool)
    single = result["single"]
    assert single["survivors"] == 4 and single["dropped"] == 1  # one gone after sharing keys
    assert single["bytes_up"] > 4 * 20003 * 4  # four masked inputs crossed the wire schema
    for row, w in zip(result["rows"], (1, 2), strict=True):
        assert row["W"] == w and row["survivors"] == 4 and row["dropped"] == 1
        assert sum(row["stripe_lengths"]) == 20003
        # complete graph, one gone after sharing keys: 4 self masks + its 4 pairwise masks
        assert row["plan_masks"] == 8
        for length, got, aes, peak in zip(
            row["stripe_lengths"],
            row["stripe_bytes_in"],
            row["stripe_aes_bytes"],
            row["stripe_peak_mib"],
            strict=True,
        ):
            assert got == 4 * length * 4  # the 4 clients that uploaded, this range only
            assert aes == 8 * 4 * length
            share = 4 * length * (4 + 1) / 2**20  # staged ranges + the accumulator
            assert share <= peak + 0.1 <= share + MEMORY_CONSTANT_MIB + 0.1
        # the kernel's own count of each stripe process's peak, read from /proc
        assert all(
            peak >= base > 0
            for peak, base in zip(row["stripe_os_peak_mib"], row["stripe_os_base_mib"], strict=True)
        )
    table = bench.markdown(result)
    assert "| one process | 5 |" in table and "| W=2 stripes | 5 |" in table


def test_a_wrong_sum_is_refused(bench) -> None:
    survivors = (1, 3, 4)
    good = np.full(7, bench.expected_constant(survivors), dtype=np.uint32)
    bench.check_sum(good, survivors)
    bad = good.copy()
    bad[5] += np.uint32(1)
    with pytest.raises(AssertionError, match="survivors' sum"):
        bench.check_sum(bad, survivors)


def test_grouped_round_counts_every_group(bench, pool) -> None:
    args = bench.parser().parse_args(
        [
            "groups",
            "--clients",
            "12",
            "--dimension",
            "1000",
            "--group-size",
            "6",
            "--stripes",
            "2",
            "--single-n",
            "6",
            "--dropout",
            "0.1",
        ]
    )
    result = bench.run_groups(args, pool)
    grouped = result["grouped"]
    assert grouped["mode"] == "secagg"  # groups of 6: the complete graph
    assert grouped["groups"] == 2 and grouped["group_sizes"] == [6]
    assert grouped["survivors"] == 12 - grouped["dropped"] == 11
    # the same groups through the one-process protocol: the same survivors counted
    assert result["grouped_single"]["survivors"] == grouped["survivors"]
    assert grouped["server_s"] > 0 and result["grouped_single"]["server_s"] > 0
    assert result["single"][0]["n"] == 6 and result["single"][0]["survivors"] == 5
    assert "| grouped secagg, W=2 stripes | 12 |" in bench.markdown(result)


def test_the_model_is_labelled_and_scales_with_machines(bench) -> None:
    rates = bench.measure_rates(length=50_000, masks=2, repeats=1)
    assert rates["aes_ctr_bytes_per_s"] > 0 and rates["add_bytes_per_s"] > 0
    args = bench.parser().parse_args(
        [
            "model",
            "--dimension",
            "100000000",
            "--clients-model",
            "10",
            "20",
            "--machines",
            "1",
            "2",
            "4",
        ]
    )
    result = bench.run_model(args, rates)
    rows = {(r["n"], r["W"]): r for r in result["rows"]}
    assert rows[(10, 1)]["masks"] == 9 + 9  # 9 survivors' self masks + 9 pairs with the dropped
    for n in (10, 20):
        times = [rows[(n, w)]["server_s"] for w in (1, 2, 4)]
        assert times[0] > times[1] > times[2]
        assert rows[(n, 1)]["coordinator_s"] > 0  # measured: a real round's protocol work
    assert bench.markdown(result).startswith("MODEL (not measured)")

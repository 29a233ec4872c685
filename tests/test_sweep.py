"""sweep.sh and sweep_report.py as a user runs them (a shell script: each test runs it as a
process): failed cells are recorded and counted in the exit status, lanes lose no rows, Ctrl-C
(SIGINT to the sweep's process group, as a terminal sends it) stops the running cell at once
and records it, an unwritable output folder is refused first, and a damaged results line never
stops the report."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sweep_report

ROOT = Path(__file__).resolve().parent.parent


def sweep(tmp_path, model, **env):
    settings = {"PYTHON": sys.executable, "OUT": str(tmp_path / "sweep"), "MODELS": str(model), "BACKENDS": "eager",
                "CACHES": "static_v2", "ISLS": "8", "NUM_TOKENS": "3", "ARGS": "--iterations 1 --warmup 0", **env}
    return subprocess.run(["bash", str(ROOT / "sweep.sh")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **settings})


def default_signals():
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]


def test_failed_cells_are_recorded_and_counted(tiny_llama_dir, tmp_path):
    result = sweep(tmp_path, tiny_llama_dir, CACHES="static_v2 bogus")
    assert result.returncode == 1 and "2 cells, 1 failed" in result.stderr, result.stderr
    found = records(tmp_path)
    assert len(found) == 2 and "--cache" in found[1]["error"]
    assert found[0]["benchmark"]["tpot_p50_ms"] > 0
    records_before = found
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert "FAILED" in table and "pipeline" in table
    assert (tmp_path / "sweep" / "tpot.png").stat().st_size > 1000

    result = sweep(tmp_path, tiny_llama_dir, CELL_TIMEOUT="1")  # too short to even load: recorded, not hung
    assert result.returncode == 1 and "1 cells, 1 failed" in result.stderr, result.stderr
    found = records(tmp_path)
    assert len(found) == 3 and found[:2] == records_before  # appended; nothing earlier lost
    assert found[-1]["error"].startswith("timed out after 1 s")


def test_gpu_lanes_lose_no_rows(tiny_llama_dir, tmp_path):
    """GPUS="0 1": two lanes at once (on CPU the GPU ids change nothing), each cell recorded
    once in the JSONL and the CSV."""
    result = sweep(tmp_path, tiny_llama_dir, CACHES="static_v2 dynamic", ISLS="8 9", GPUS="0 1")
    assert result.returncode == 0 and "4 cells, 0 failed" in result.stderr, result.stderr
    assert "(GPU 0)" in result.stderr and "(GPU 1)" in result.stderr
    assert sorted((r["cache"], r["isl"]) for r in records(tmp_path)) == [("dynamic", 8), ("dynamic", 9),
                                                                          ("static_v2", 8), ("static_v2", 9)]
    assert len(list(csv.DictReader((tmp_path / "sweep" / "results.csv").open()))) == 4


def test_ctrl_c_stops_the_running_cell_and_keeps_earlier_rows(tiny_llama_dir, tmp_path):
    first = sweep(tmp_path, tiny_llama_dir)
    assert first.returncode == 0, first.stderr
    earlier = (tmp_path / "sweep" / "results.jsonl").read_bytes()
    settings = {"PYTHON": sys.executable, "OUT": str(tmp_path / "sweep"), "MODELS": str(tiny_llama_dir),
                "BACKENDS": "eager", "CACHES": "static_v2", "ISLS": "11 12 13", "NUM_TOKENS": "100",
                "ARGS": "--iterations 1000 --warmup 0", "GPUS": "0 1"}
    # As from a terminal: SIGINT and SIGTERM at their defaults in the sweep. A suite started as a
    # background job of a shell without job control inherits SIGINT ignored, and bash cannot trap
    # a signal that was ignored when it started (the sweep then ran on for minutes).
    process = subprocess.Popen(["bash", str(ROOT / "sweep.sh")], env={**os.environ, **settings},
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=default_signals)
    logs = tmp_path / "sweep" / "logs"
    deadline = time.monotonic() + 120
    while not any("compiled" in log.read_text() for log in logs.glob("*_11.log")):  # timing 1000 iterations
        assert time.monotonic() < deadline and process.poll() is None, "the cell never got going"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    stopped = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert time.monotonic() - stopped < 20, "the running cells were not stopped at once"
    assert "interrupted" in stderr.splitlines()[-1]
    text = (tmp_path / "sweep" / "results.jsonl").read_bytes()
    assert text.startswith(earlier)  # earlier rows intact
    new = [json.loads(line) for line in text[len(earlier):].decode().splitlines()]
    assert len(new) == 2 and all(r["error"].startswith("interrupted") for r in new)  # the two running cells
    assert "interrupted" in (tmp_path / "sweep" / "results.md").read_text()


def test_unwritable_output_folder_is_refused_first(tiny_llama_dir, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (str(a_file / "sweep"), "/proc/no-such-dir/sweep"):
        result = sweep(tmp_path, tiny_llama_dir, OUT=out)
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [
            f"error: OUT={out}: cannot write there"], result.stderr


def test_tp_with_one_gpu_per_cell_is_refused_first(tiny_llama_dir, tmp_path):
    result = sweep(tmp_path, tiny_llama_dir, TP="2", GPUS="0 1")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: TP=2 runs each cell on 2 GPUs, GPUS one cell per GPU: set one of them"], result.stderr
    assert not (tmp_path / "sweep").exists()


def test_a_damaged_results_line_is_skipped_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "sweep"
    folder.mkdir()
    good = {"cell": "a", "error": "boom"}
    (folder / "results.jsonl").write_text(json.dumps(good) + '\n{"model": "cut sho\n[1, 2]\n')
    sweep_report.report(folder)
    assert "line 2 is damaged" in capsys.readouterr().err
    assert "boom" in (folder / "results.md").read_text()


def test_plot_keeps_every_backend_and_cache():
    """A grid has several pipeline rows per model and ISL: each backend + cache is its own bar."""
    common = dict(model="org/m", isl=128, precision="BF16")
    table = [dict(common, runner="pipeline", backend="inductor", cache="static_v2", tpot_p50_ms=1.0),
             dict(common, runner="pipeline", backend="eager", cache="dynamic", tpot_p50_ms=3.0),
             dict(common, runner="hf_generate", backend="pytorch", cache="hf dynamic", tpot_p50_ms=9.0),
             {"model": "cell", "runner": "FAILED", "backend": "error"}]
    series = sweep_report.bar_series(table)
    assert list(series) == ["ours eager dynamic", "ours inductor static_v2", "hf_generate"]
    assert series["ours inductor static_v2"] == {"m\nISL 128 BF16": 1.0}

"""The examples run end to end on a tiny local pair (their code paths, exercised on CPU)."""

from examples import failfast_compare, quickstart


def test_quickstart_converts_decodes_and_is_lossless(tmp_path, capsys):
    assert quickstart.main(["--workdir", str(tmp_path), "--max-new-tokens", "32"]) == 0
    assert "identical to greedy decoding: True" in capsys.readouterr().out


def test_compare_script_prints_every_method_and_writes_the_trajectory(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    # Both prompts in one length bucket: each method compiles once (bucketing is tested elsewhere).
    prompts.write_text("5 6 7 8 9 10 11 12 13 14 15 16 17 18\n30 31 32 33 34 35 36 37 38 39 40\n")
    out = tmp_path / "out"
    code = failfast_compare.main(["--tiny", "--prompts", str(prompts), "--max-new-tokens", "24",
                                  "--fixed-lengths", "4", "--reuse-rejected", "--out", str(out)])
    table = capsys.readouterr().out
    assert code == 0
    assert "| vanilla |" in table
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    for method in ("FailFast", "FailFast + reuse rejected", "dLLM fixed k=4 (thr 0.9) (best fixed)",
                   "AR drafter fixed k=5", "AR drafter dynamic"):
        assert rows[method].endswith("| 2/2 |")  # both prompts reproduced vanilla's tokens exactly
    assert "FailFast + reuse rejected: " in table and "came from rejected tails" in table
    assert (out / "rounds.csv").read_text().startswith("method,round,accepted")


def test_drafter_adaptation_script_trains_and_writes_a_delta_with_manifest(tmp_path, capsys):
    import json

    from examples import adapt_drafter

    out = tmp_path / "delta"
    assert adapt_drafter.main(["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "delta.safetensors").exists()
    assert manifest["steps"] == 30 and manifest["final_loss"] < manifest["loss_log"][0]["loss"]
    assert manifest["base_model_sha256"] and manifest["delta_bytes"] > 0

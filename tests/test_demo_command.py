"""`python -m ffjax demo`: streams FailFast's answer and reports it against vanilla decoding (tiny pair, CPU)."""

import io

import numpy as np
import pytest

import ffjax
from checkpoints_convert import convert
from examples import tiny_checkpoints
from ffjax import __main__ as cli
from ffjax import demo
from ffjax.chat import chat_ids


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    verifier_hf, drafter_hf = tiny_checkpoints.write_pair(str(root))
    for directory in (verifier_hf, drafter_hf):
        tiny_checkpoints.chat_tokenizer().save_pretrained(directory)
    convert(verifier_hf, str(root / "verifier"), "float32", progress=False)
    convert(drafter_hf, str(root / "drafter"), "float32", progress=False)
    return str(root / "verifier"), str(root / "drafter")


def test_the_streamed_text_is_the_answer_and_the_report_compares_with_vanilla(tiny_pair):
    verifier, drafter = ffjax.load(tiny_pair[0]), ffjax.load(tiny_pair[1])
    out = io.StringIO()
    report = demo.run_demo(verifier, drafter, "Say hello.", 40, out=out)
    tokenizer = verifier.tokenizer()
    expected = ffjax.generate(verifier, chat_ids(tokenizer, "Say hello."), 40,
                              eos_id=verifier.config.eos_token_ids[0]).tokens
    printed = out.getvalue()
    answer = printed.split("(compiling on first use...)\n", 1)[1].split("\n\n(vanilla greedy", 1)[0]
    assert answer == tokenizer.decode(expected, skip_special_tokens=True)
    assert report.identical and report.new_tokens == len(expected) and report.rounds > 0
    assert report.failfast_tokens_per_s > 0 and report.vanilla_tokens_per_s > 0
    assert np.isclose(report.speedup, report.failfast_tokens_per_s / report.vanilla_tokens_per_s)


def test_command_line_runs_the_demo_on_given_checkpoints(tiny_pair, capsys):
    assert cli.main(["demo", "Count to three.", "--verifier", tiny_pair[0], "--drafter", tiny_pair[1],
                     "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert ">>> Count to three." in out and "speedup" in out and "identical to vanilla greedy: True" in out

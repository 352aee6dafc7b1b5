"""The Piper engine, through the real piper-tts program and onnxruntime.

No Vietnamese Piper voice ships in a Python package, so these tests build a voice model of their
own: a valid Piper ONNX graph (Piper's inputs and output) that sings a tone, one phoneme id per
256 samples times the length scale, at 220 Hz + 110 Hz per speaker. Piper phonemises the text
with its espeak-ng Vietnamese voice, runs the model and writes the WAV; the tests measure it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf

from edge.config.speech import SpeechConfig
from edge.speech import (
    EspeakEngine,
    PiperEngine,
    SpeechUnavailable,
    make_engine,
    normalise_vi,
    render_cached,
)

RATE = 16000
HOP = 256
BASE_HZ = 220.0
STEP_HZ = 110.0
MEETING = "UBND P. An Lạc mời đại diện các hộ dự họp lúc 8h30 ngày 25/1 tại hội trường KP 3."


def build_tone_voice(path: Path, *, speakers: int = 1, length_scale: float = 1.0) -> Path:
    """Write a Piper voice (``path`` and ``path.json``) whose sound is a tone as long as the phonemes."""
    from onnx import TensorProto, helper

    constants: dict[str, tuple[int, list[int], list[int] | list[float]]] = {
        "one": (TensorProto.INT64, [1], [1]),
        "length_index": (TensorProto.INT64, [], [1]),
        "hop": (TensorProto.FLOAT, [], [float(HOP)]),
        "omega": (TensorProto.FLOAT, [], [2 * np.pi / RATE]),
        "base_hz": (TensorProto.FLOAT, [], [BASE_HZ]),
        "step_hz": (TensorProto.FLOAT, [], [STEP_HZ]),
        "amplitude": (TensorProto.FLOAT, [], [0.5]),
        "zero_f": (TensorProto.FLOAT, [], [0.0]),
        "one_f": (TensorProto.FLOAT, [], [1.0]),
        "out_shape": (TensorProto.INT64, [4], [1, 1, 1, -1]),
    }
    initializers = [helper.make_tensor(name, kind, dims, values) for name, (kind, dims, values) in constants.items()]
    node = helper.make_node
    nodes = [
        node("Shape", ["input"], ["input_shape"]),
        node("Gather", ["input_shape", "one"], ["ids"]),
        node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        node("Gather", ["scales", "length_index"], ["length_scale"]),
        node("Mul", ["ids_f", "hop"], ["frames_per_id"]),
        node("Mul", ["frames_per_id", "length_scale"], ["frames_f"]),
        node("Floor", ["frames_f"], ["frames_floor"]),
        node("Squeeze", ["frames_floor"], ["frames"]),
        node("Range", ["zero_f", "frames", "one_f"], ["t"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, [1, None]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    if speakers > 1:
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, [1]))
        nodes += [
            node("Cast", ["sid"], ["sid_f1"], to=TensorProto.FLOAT),
            node("Squeeze", ["sid_f1"], ["sid_f"]),
            node("Mul", ["sid_f", "step_hz"], ["offset_hz"]),
            node("Add", ["base_hz", "offset_hz"], ["hz"]),
        ]
    else:
        initializers = [i for i in initializers if i.name != "step_hz"]
        nodes.append(node("Identity", ["base_hz"], ["hz"]))
    nodes += [
        node("Mul", ["hz", "omega"], ["rad_per_frame"]),
        node("Mul", ["t", "rad_per_frame"], ["phase"]),
        node("Sin", ["phase"], ["wave"]),
        node("Mul", ["wave", "amplitude"], ["audio"]),
        node("Reshape", ["audio", "out_shape"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tone-voice",
        inputs,
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 1, None])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    # Every character espeak-ng's IPA may use gets an id, so no phoneme is dropped.
    ids: dict[str, list[int]] = {"_": [0], "^": [1], "$": [2], " ": [3]}
    for lo, hi in ((0x21, 0x7E), (0xA1, 0x36F), (0x1D00, 0x1DBF), (0x2010, 0x2027), (0x2C60, 0x2C7F)):
        for cp in range(lo, hi + 1):
            ids.setdefault(chr(cp), [len(ids)])
    config = {
        "audio": {"sample_rate": RATE},
        "espeak": {"voice": "vi"},
        "phoneme_type": "espeak",
        "num_symbols": len(ids),
        "num_speakers": speakers,
        "inference": {"noise_scale": 0.667, "length_scale": length_scale, "noise_w": 0.8},
        "phoneme_id_map": ids,
        "speaker_id_map": {f"giong-{i}": i for i in range(speakers)} if speakers > 1 else {},
    }
    path.with_name(path.name + ".json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("voices")
    return {
        "one": build_tone_voice(root / "vi_VN-tone-low.onnx"),
        "three": build_tone_voice(root / "vi_VN-tones-low.onnx", speakers=3),
    }


def tone(path: Path) -> tuple[float, float, int]:
    """Duration (s), dominant frequency (Hz) and sample rate of a WAV."""
    samples, rate = sf.read(str(path), dtype="float64", always_2d=True)
    mono = samples[:, 0]
    peak_hz = float(np.argmax(np.abs(np.fft.rfft(mono)))) * rate / len(mono)
    return len(mono) / rate, peak_hz, rate


def test_piper_renders_through_the_piper_tts_package(tmp_path: Path, voices: dict[str, Path]) -> None:
    engine = make_engine(SpeechConfig(engine="piper", piper_model=voices["one"]))
    assert isinstance(engine, PiperEngine)
    engine.check()
    assert engine.program() == [sys.executable, "-m", "piper"]
    wav = render_cached(engine, MEETING, cache_dir=tmp_path)
    seconds, hz, rate = tone(wav)
    assert rate == RATE
    assert abs(hz - BASE_HZ) < 2
    assert seconds > 1.0  # a hundred and more phoneme ids, 16 ms each
    samples, _ = sf.read(str(wav), dtype="float64")
    assert float(np.sqrt(np.mean(samples**2))) > 0.3  # Piper normalises the tone to full scale


def test_piper_is_given_the_normalised_text(tmp_path: Path, voices: dict[str, Path]) -> None:
    engine = PiperEngine(voices["one"])
    wav = render_cached(engine, MEETING, cache_dir=tmp_path / "cache")

    def by_hand(text: str, out: Path) -> bytes:
        subprocess.run(
            [sys.executable, "-m", "piper", "--model", str(voices["one"]), "--output_file", str(out)],
            input=(text + "\n").encode(),
            capture_output=True,
            check=True,
        )
        return out.read_bytes()

    assert wav.read_bytes() == by_hand(normalise_vi(MEETING), tmp_path / "normalised.wav")
    assert wav.read_bytes() != by_hand(MEETING, tmp_path / "raw.wav")


def test_speed_is_the_length_scale_of_the_voice(tmp_path: Path, voices: dict[str, Path]) -> None:
    engine = PiperEngine(voices["one"])
    normal = tone(render_cached(engine, MEETING, cache_dir=tmp_path))[0]
    slow = tone(render_cached(engine, MEETING, speed_wpm=75, cache_dir=tmp_path))[0]
    fast = tone(render_cached(engine, MEETING, speed_wpm=300, cache_dir=tmp_path))[0]
    assert slow == pytest.approx(2 * normal, rel=0.01)
    assert fast == pytest.approx(normal / 2, rel=0.01)
    # A voice whose own default pace is slower stays slower at the same speed_wpm.
    drawl = build_tone_voice(tmp_path / "vi_VN-drawl-low.onnx", length_scale=1.5)
    assert tone(render_cached(PiperEngine(drawl), MEETING, cache_dir=tmp_path))[0] == pytest.approx(
        1.5 * normal, rel=0.01
    )


def test_a_speaker_of_a_multi_speaker_voice_is_chosen_by_name(tmp_path: Path, voices: dict[str, Path]) -> None:
    engine = PiperEngine(voices["three"])
    assert abs(tone(render_cached(engine, "xin chào", cache_dir=tmp_path))[1] - BASE_HZ) < 2  # the default speaker
    second = render_cached(engine, "xin chào", voice="giong-2", cache_dir=tmp_path)
    assert abs(tone(second)[1] - (BASE_HZ + 2 * STEP_HZ)) < 2
    # A command written for espeak-ng's voices plays with the model's own voice.
    assert abs(tone(render_cached(engine, "xin chào", voice="vi-vn-x-south", cache_dir=tmp_path))[1] - BASE_HZ) < 2
    with pytest.raises(
        SpeechUnavailable, match=r"has no speaker 'giong-9' \(its speakers: giong-0, giong-1, giong-2\)"
    ):
        render_cached(engine, "xin chào", voice="giong-9", cache_dir=tmp_path)


def test_a_missing_model_names_the_path_and_the_config_key(tmp_path: Path) -> None:
    missing = tmp_path / "voices" / "vi_VN-vais1000-medium.onnx"
    engine = make_engine(SpeechConfig(engine="piper", piper_model=missing))
    with pytest.raises(SpeechUnavailable) as err:
        render_cached(engine, MEETING, cache_dir=tmp_path / "cache")
    assert err.value.reason == "no_model"
    assert str(err.value).startswith(f"speech.piper_model: the Piper voice model {missing} does not exist")
    with pytest.raises(SpeechUnavailable, match=r"speech\.piper_model"):
        engine.check()
    assert not (tmp_path / "cache").exists()


def test_a_model_without_its_config_is_a_clear_error(tmp_path: Path, voices: dict[str, Path]) -> None:
    bare = tmp_path / "vi_VN-bare-low.onnx"
    bare.write_bytes(voices["one"].read_bytes())
    with pytest.raises(SpeechUnavailable, match=rf"the Piper voice config {bare}.json is missing") as err:
        render_cached(PiperEngine(bare), MEETING, cache_dir=tmp_path / "cache")
    assert err.value.reason == "no_model"


def test_a_configured_piper_program_that_is_not_there(tmp_path: Path, voices: dict[str, Path]) -> None:
    settings = SpeechConfig(engine="piper", piper_model=voices["one"], piper_binary=str(tmp_path / "piper"))
    engine = make_engine(settings)
    with pytest.raises(
        SpeechUnavailable, match=r"speech.piper_binary: the Piper program .*/piper was not found"
    ) as err:
        render_cached(engine, MEETING, cache_dir=tmp_path / "cache")
    assert err.value.reason == "not_installed"
    assert not any((tmp_path / "cache").glob("*"))


def test_a_broken_model_fails_with_piper_s_reason(tmp_path: Path, voices: dict[str, Path]) -> None:
    broken = tmp_path / "vi_VN-broken-low.onnx"
    broken.write_bytes(b"not an onnx model")
    broken.with_name(broken.name + ".json").write_bytes(
        voices["one"].with_name(voices["one"].name + ".json").read_bytes()
    )
    with pytest.raises(SpeechUnavailable, match=r"piper failed: .*INVALID_PROTOBUF") as err:
        render_cached(PiperEngine(broken), MEETING, cache_dir=tmp_path / "cache")
    assert err.value.reason == "failed"
    assert "Traceback" not in str(err.value) and "|" not in str(err.value)  # the reason, not the stack
    assert not any((tmp_path / "cache").glob("*"))


def test_the_cache_tells_engines_and_models_apart(tmp_path: Path, voices: dict[str, Path]) -> None:
    piper = render_cached(PiperEngine(voices["one"]), MEETING, cache_dir=tmp_path)
    espeak = render_cached(EspeakEngine(), MEETING, cache_dir=tmp_path)
    assert piper != espeak and tone(espeak)[2] == 22050
    # A better model copied over the old one at the same path renders again.
    model = tmp_path / "vi_VN-current-low.onnx"
    build_tone_voice(model)
    first = render_cached(PiperEngine(model), MEETING, cache_dir=tmp_path)
    build_tone_voice(model, length_scale=2.0)
    second = render_cached(PiperEngine(model), MEETING, cache_dir=tmp_path)
    assert second != first
    assert tone(second)[0] == pytest.approx(2 * tone(first)[0], rel=0.01)

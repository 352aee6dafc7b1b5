"""espeak-ng speech and the render cache: real espeak-ng processes, real WAV files, measured."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.config import parse_config
from edge.config.speech import SpeechConfig
from edge.exceptions import ConfigError
from edge.services.speech import render_tts
from edge.speech import (
    ESPEAK_VOICES,
    EspeakEngine,
    PiperEngine,
    SpeechUnavailable,
    TextTooLong,
    make_engine,
    normalise_vi,
    render_cached,
)

MEETING = "UBND P. An Lạc mời đại diện các hộ dự họp lúc 8h30 ngày 25/1 tại hội trường KP 3."


def espeak_data_dir() -> Path:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    return Path(out.split("Data at:")[1].strip())


def measure(path: Path) -> tuple[float, float, int]:
    """Duration in seconds, RMS in dBFS and sample rate of a WAV file."""
    samples, rate = sf.read(str(path), dtype="float64", always_2d=True)
    rms = float(np.sqrt(np.mean(samples[:, 0] ** 2)))
    return len(samples) / rate, 20 * np.log10(max(rms, 1e-12)), rate


@pytest.mark.parametrize("voice", ESPEAK_VOICES)
def test_each_vietnamese_voice_renders_a_spoken_announcement(tmp_path: Path, voice: str) -> None:
    engine = EspeakEngine(voice=voice)
    engine.check()
    wav = render_cached(engine, MEETING, cache_dir=tmp_path)
    seconds, rms_dbfs, rate = measure(wav)
    assert rate == 22050
    # About forty spoken syllables at 150 words per minute: several seconds of sound, not silence.
    assert 5.0 < seconds < 40.0
    assert rms_dbfs > -35.0


def test_espeak_ng_is_given_the_normalised_text(tmp_path: Path) -> None:
    engine = EspeakEngine(voice="vi", speed_wpm=160)
    wav = render_cached(engine, MEETING, cache_dir=tmp_path / "cache")
    spoken = normalise_vi(MEETING)
    assert "ủy ban nhân dân phường An Lạc" in spoken and "tám giờ ba mươi" in spoken

    # espeak-ng renders the same input to the same bytes: render the words ourselves and compare.
    def by_hand(text: str, out: Path) -> bytes:
        subprocess.run(
            ["espeak-ng", "-v", "vi", "-s", "160", "-w", str(out), "--stdin"], input=text.encode(), check=True
        )
        return out.read_bytes()

    assert wav.read_bytes() == by_hand(spoken + "\n", tmp_path / "normalised.wav")
    assert wav.read_bytes() != by_hand(MEETING + "\n", tmp_path / "raw.wav")


def test_a_rendered_text_is_reused_and_any_change_renders_anew(tmp_path: Path) -> None:
    engine = EspeakEngine()
    first = render_cached(engine, MEETING, cache_dir=tmp_path)
    before, content = first.stat(), first.read_bytes()
    again = render_cached(engine, MEETING, cache_dir=tmp_path)
    assert again == first
    assert again.stat().st_ino == before.st_ino and again.read_bytes() == content  # not rendered again
    # The same words written differently are the same sound, so the same file.
    assert render_cached(engine, MEETING.replace("8h30", "8:30"), cache_dir=tmp_path) == first

    faster = render_cached(engine, MEETING, speed_wpm=200, cache_dir=tmp_path)
    southern = render_cached(engine, MEETING, voice="vi-vn-x-south", cache_dir=tmp_path)
    other = render_cached(engine, MEETING + " Trân trọng.", cache_dir=tmp_path)
    assert len({first, faster, southern, other}) == 4
    assert measure(faster)[0] < measure(first)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (first, faster, southern, other))
    assert all(p.suffix == ".wav" and len(p.stem) == 64 for p in tmp_path.iterdir())  # no temporary files left


def test_the_cache_keeps_to_its_size_dropping_the_least_recently_played(tmp_path: Path) -> None:
    engine = EspeakEngine()
    texts = [f"Thông báo số {n}: họp tổ dân phố lúc {n}h ngày {n}/3." for n in range(1, 6)]
    paths = [render_cached(engine, t, cache_dir=tmp_path) for t in texts]
    for age, path in enumerate(reversed(paths), start=1):
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - 60 * age))  # rendered a minute apart
    render_cached(engine, texts[0], cache_dir=tmp_path)  # the oldest is played again: now the most recent
    stale = tmp_path / ".cut-short.123.456.tmp.wav"  # a render a power cut interrupted
    stale.write_bytes(b"RIFF")
    os.utime(stale, (0, 0))
    sizes = {p: p.stat().st_size for p in paths}

    engine.cache_max_bytes = sizes[paths[0]] + sizes[paths[4]] + sizes[paths[3]] + 1
    newest = render_cached(engine, "Một thông báo mới.", cache_dir=tmp_path)
    left = set(tmp_path.iterdir())
    assert newest in left and paths[0] in left  # just rendered; just played
    assert not stale.exists()
    assert paths[1] not in left and paths[2] not in left  # the least recently used went first
    assert sum(p.stat().st_size for p in left) <= engine.cache_max_bytes
    # A pruned text is rendered again, to the same file name.
    assert render_cached(engine, texts[1], cache_dir=tmp_path) == paths[1]


def test_the_southern_voice_reads_numbers_the_southern_way(tmp_path: Path) -> None:
    engine = EspeakEngine()
    assert engine.number_style("vi-vn-x-south") == "south" and engine.number_style("vi") == "north"
    assert EspeakEngine(numbers="north").number_style("vi-vn-x-south") == "north"


def test_two_threads_rendering_the_same_text_get_one_good_file(tmp_path: Path) -> None:
    engine = EspeakEngine()
    results: list[Path] = []
    errors: list[BaseException] = []

    def render() -> None:
        try:
            results.append(render_cached(engine, MEETING, cache_dir=tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=render) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert measure(results[0])[0] > 5.0
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]


def test_missing_espeak_ng_is_a_clear_error_and_nothing_is_cached(tmp_path: Path, monkeypatch) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    with pytest.raises(SpeechUnavailable, match=r"espeak-ng is not installed \(apt-get install espeak-ng\)") as err:
        render_cached(EspeakEngine(), MEETING, cache_dir=tmp_path / "cache")
    assert err.value.reason == "not_installed"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_missing_voice_is_named_not_replaced_by_another(tmp_path: Path, monkeypatch) -> None:
    # espeak-ng itself falls back to the northern voice, exit status 0, when the southern one is missing.
    data = tmp_path / "espeak-ng-data"
    shutil.copytree(espeak_data_dir(), data)
    (data / "lang" / "aav" / "vi-VN-x-south").unlink()
    monkeypatch.setenv("ESPEAK_DATA_PATH", str(data))
    engine = EspeakEngine(voice="vi-vn-x-south")
    with pytest.raises(
        SpeechUnavailable, match=r"no voice 'vi-vn-x-south' installed \(Vietnamese voices found: vi, "
    ) as err:
        render_cached(engine, MEETING, cache_dir=tmp_path / "cache")
    assert err.value.reason == "no_voice"
    with pytest.raises(SpeechUnavailable, match="vi-vn-x-south"):
        engine.check()
    assert not any((tmp_path / "cache").glob("*"))
    assert measure(render_cached(engine, MEETING, voice="vi", cache_dir=tmp_path / "cache"))[0] > 5.0


def test_a_voice_without_its_dictionary_is_an_error_not_gibberish(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "espeak-ng-data"
    shutil.copytree(espeak_data_dir(), data)
    (data / "vi_dict").unlink()
    monkeypatch.setenv("ESPEAK_DATA_PATH", str(data))
    with pytest.raises(SpeechUnavailable, match="cannot read its dictionary") as err:
        render_cached(EspeakEngine(), MEETING, cache_dir=tmp_path / "cache")
    assert err.value.reason == "no_voice"
    assert not any((tmp_path / "cache").glob("*"))


def test_only_vietnamese_voices_are_spoken(tmp_path: Path) -> None:
    with pytest.raises(SpeechUnavailable, match="'en' is not a Vietnamese voice") as err:
        render_cached(EspeakEngine(), "xin chào", voice="en", cache_dir=tmp_path)
    assert err.value.reason == "no_voice"


def test_text_over_the_length_cap_is_refused_before_rendering(tmp_path: Path) -> None:
    engine = EspeakEngine(max_chars=100)
    with pytest.raises(TextTooLong, match=r"101 characters; speech\.max_chars allows 100") as err:
        render_cached(engine, "a" * 101, cache_dir=tmp_path)
    assert isinstance(err.value, ValueError) and err.value.reason == "text_too_long"
    with pytest.raises(ValueError, match="nothing to say"):
        render_cached(engine, " - * ", cache_dir=tmp_path)
    assert not tmp_path.joinpath("x").exists() and not any(tmp_path.iterdir())


def test_the_counter_thank_you_still_renders_and_is_cached(tmp_path: Path) -> None:
    wav = render_tts("Cảm ơn quý khách đã đánh giá.", "vi-vn-x-south", 150, tmp_path)
    assert render_tts("Cảm ơn quý khách đã đánh giá.", "vi-vn-x-south", 150, tmp_path) == wav
    seconds, rms_dbfs, _ = measure(wav)
    assert 1.0 < seconds < 6.0 and rms_dbfs > -35.0


def test_the_engine_is_chosen_by_configuration(tmp_path: Path) -> None:
    espeak = make_engine(SpeechConfig(voice="vi-vn-x-central", speed_wpm=170, max_chars=500))
    assert isinstance(espeak, EspeakEngine)
    assert (espeak.voice, espeak.speed_wpm, espeak.max_chars) == ("vi-vn-x-central", 170, 500)
    assert espeak.cache_max_bytes == 500_000_000
    piper = make_engine(SpeechConfig(engine="piper", piper_model=tmp_path / "vi.onnx", piper_binary="/opt/piper"))
    assert isinstance(piper, PiperEngine)
    assert (piper.model, piper.binary) == (tmp_path / "vi.onnx", "/opt/piper")


def device_config(speech: dict[str, object]) -> dict[str, object]:
    return {
        "device": {"id": "counter-01", "commune": "gia-ray", "roles": ["counter"]},
        "mqtt": {"broker": "mqtt://127.0.0.1:1883"},
        "speech": speech,
    }


def test_speech_config_problems_name_their_key_paths() -> None:
    assert parse_config(device_config({})).speech == SpeechConfig()
    with pytest.raises(ConfigError) as err:
        parse_config(device_config({"engine": "piper"}))
    assert err.value.problems == [
        ("speech.piper_model", "required when engine = 'piper': the path of the .onnx voice model")
    ]
    with pytest.raises(ConfigError) as err:
        parse_config(device_config({"voice": "en", "speed_wpm": 20, "max_chars": 0, "engine": "festival"}))
    assert sorted(path for path, _ in err.value.problems) == [
        "speech.engine",
        "speech.max_chars",
        "speech.speed_wpm",
        "speech.voice",
    ]
    with pytest.raises(ConfigError, match=r"speech.piper_model: a Piper voice model is an .onnx file"):
        parse_config(device_config({"engine": "piper", "piper_model": "/var/lib/voice.json"}))


def test_environment_overrides_reach_the_speech_section(tmp_path: Path) -> None:
    from edge.config import load_config

    config = tmp_path / "edge.toml"
    config.write_text(
        '[device]\nid = "counter-01"\ncommune = "gia-ray"\nroles = ["counter"]\n'
        '[mqtt]\nbroker = "mqtt://127.0.0.1:1883"\n',
        encoding="utf-8",
    )
    loaded = load_config(config, environ={**os.environ, "EDGE_SPEECH__VOICE": "vi-vn-x-south"})
    assert loaded.speech.voice == "vi-vn-x-south"

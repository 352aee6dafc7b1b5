"""[speaker] and ``edge test speaker``: a technician plays the tone and the Vietnamese test sentence on the
configured card and reads the level sent and the level heard, through the real audio path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config import parse_config
from edge.exceptions import ConfigError
from sim.audio import SimSoundCard, measure
from sim.harness import run_edge, write_device_config

SINE_PEAK_HALF_DBFS = 20 * np.log10(0.5 / np.sqrt(2))  # the test tone: a sine of peak 0.5, -9.03 dBFS


@pytest.fixture
def card(tmp_path: Path) -> Iterator[SimSoundCard]:
    with SimSoundCard(tmp_path / "card", rate=48000) as c:  # used by the `edge` subprocess through c.env
        yield c


def speaker_config(tmp_path: Path, speaker: str) -> Path:
    return write_device_config(
        tmp_path / "edge.toml", "mqtt://127.0.0.1:1", state_dir=tmp_path / "state", extra=f"[speaker]\n{speaker}\n"
    )


def run_speaker_test(card: SimSoundCard, config: Path, *args: str) -> dict[str, Any]:
    result = run_edge(["test", "speaker", "--config", str(config), "--json", *args], env=card.env, timeout=300)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_the_tone_then_the_test_sentence_at_the_cards_ceiling_and_heard_by_the_capture_device(
    card: SimSoundCard, tmp_path: Path
) -> None:
    card.set_capture_tone(1000, rms_dbfs=-25.0)
    config = speaker_config(tmp_path, 'device = "default"\ncapture_device = "default"\nmax_volume_db = -6.0')

    report = run_speaker_test(card, config)

    assert (report["device"], report["capture_device"], report["gain_db"]) == ("default", "default", -6.0)
    tone, sentence = report["items"]
    assert tone["what"] == "tone 440 Hz" and tone["seconds"] == 1.0 and not tone["stopped"]
    assert tone["level_dbfs"] == pytest.approx(SINE_PEAK_HALF_DBFS - 6.0, abs=0.05)  # capped at -6 dB
    assert sentence["what"].startswith("speech: Alô, alô. Đây là loa truyền thanh thông minh")
    assert 2.0 < sentence["seconds"] < 20.0
    assert -40.0 < sentence["level_dbfs"] < -6.0 and sentence["peak_dbfs"] <= -6.0 + 0.01
    assert tone["heard_dbfs"] == pytest.approx(-25.0, abs=1.0)
    assert sentence["heard_dbfs"] == pytest.approx(-25.0, abs=1.0)

    # What the card recorded is what the report says was sent.
    first, second = card.wait_played(2)
    for item, entry in ((first, tone), (second, sentence)):
        heard = measure(card.samples(item), card.rate)
        assert heard.duration_s == pytest.approx(entry["seconds"], abs=0.1)
        assert heard.rms_dbfs == pytest.approx(entry["level_dbfs"], abs=0.5)
    assert report["seconds"] == pytest.approx(tone["seconds"] + sentence["seconds"], abs=0.01)


def test_a_gain_under_the_ceiling_is_used_and_one_over_it_is_capped(card: SimSoundCard, tmp_path: Path) -> None:
    config = speaker_config(tmp_path, "max_volume_db = -6.0")
    quieter = run_speaker_test(card, config, "--no-sentence", "--tone", "1000", "--seconds", "0.5", "--gain-db", "-10")
    louder = run_speaker_test(card, config, "--no-sentence", "--tone", "1000", "--seconds", "0.5", "--gain-db", "3")
    assert [i["what"] for i in quieter["items"]] == ["tone 1000 Hz"]
    assert "capture_device" not in quieter and "heard_dbfs" not in quieter["items"][0]
    assert quieter["items"][0]["level_dbfs"] == pytest.approx(SINE_PEAK_HALF_DBFS - 10.0, abs=0.05)
    assert (louder["gain_db"], louder["items"][0]["level_dbfs"]) == (
        -6.0,
        pytest.approx(SINE_PEAK_HALF_DBFS - 6.0, abs=0.05),
    )


def test_without_a_speaker_section_only_the_tone_plays(card: SimSoundCard, tmp_path: Path) -> None:
    config = write_device_config(tmp_path / "edge.toml", "mqtt://127.0.0.1:1", state_dir=tmp_path / "state")
    report = run_speaker_test(card, config, "--seconds", "0.3")
    assert [i["what"] for i in report["items"]] == ["tone 440 Hz"]
    assert report["gain_db"] == 0.0


def test_a_missing_capture_device_fails_in_one_line(card: SimSoundCard, tmp_path: Path) -> None:
    config = speaker_config(tmp_path, 'capture_device = "horn-mic"')
    result = run_edge(["test", "speaker", "--config", str(config), "--no-sentence"], env=card.env, check=False)
    assert result.returncode != 0
    assert "no input device 'horn-mic'" in result.stderr.strip().splitlines()[-1]
    assert card.items == []  # nothing played before the check


def test_speaker_settings_are_checked_with_key_paths() -> None:
    base: dict[str, Any] = {
        "device": {"id": "loa-01", "commune": "gia-ray", "roles": ["counter"]},
        "mqtt": {"broker": "mqtt://127.0.0.1:1883"},
    }
    ok = parse_config({**base, "speaker": {"device": "USB Audio", "capture_device": "1", "max_volume_db": -3}})
    assert ok.speaker is not None
    assert (ok.speaker.device, ok.speaker.capture_device, ok.speaker.max_volume_db) == ("USB Audio", "1", -3.0)
    assert parse_config(base).speaker is None
    with pytest.raises(ConfigError) as caught:
        parse_config({**base, "speaker": {"max_volume_db": 3, "capture_device": "", "volume": -6}})
    assert sorted(caught.value.problems) == [
        ("speaker.capture_device", "String should have at least 1 character"),
        ("speaker.max_volume_db", "Input should be less than or equal to 0"),
        ("speaker.volume", "unknown key"),
    ]

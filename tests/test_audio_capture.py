"""The self-test's ear: a LevelMeter on the capture device hears what the simulated microphone is given
(ALSA's file plugin reading, through ``infile``, a signal this test generates), at its level."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile

from drivers.audio import ArraySource, AudioUnavailable, PlayResult, open_player
from drivers.audio.capture import LevelMeter
from drivers.resources import Resources
from edge.exceptions import ResourceBusy
from sim.audio import CAPTURE_PIPE_BYTES, SimSoundCard, tone
from sim.harness import wait_for


@pytest.fixture
def card(tmp_path: Path) -> Iterator[SimSoundCard]:
    with SimSoundCard(tmp_path / "card", rate=48000) as c:
        c.activate()
        yield c


def listen(meter: LevelMeter, seconds: float) -> float | None:
    """Listen until the meter has heard ``seconds`` of input (however slow the machine)."""
    meter.start()
    assert wait_for(lambda: meter.frames >= seconds * meter.rate, 30, interval=0.02), "the capture device is silent"
    return meter.stop()


@pytest.mark.parametrize("level", [-12.0, -30.0])
def test_a_tone_at_the_microphone_is_heard_at_its_level(card: SimSoundCard, level: float) -> None:
    card.set_capture_tone(1000, rms_dbfs=level)
    with LevelMeter("default", resources=Resources()) as meter:
        assert listen(meter, 0.5) == pytest.approx(level, abs=1.0)


def test_silence_is_heard_as_silence(card: SimSoundCard) -> None:
    card.set_capture_tone(1000, rms_dbfs=-12.0)
    with LevelMeter("default", resources=Resources()) as meter:
        assert listen(meter, 0.3) == pytest.approx(-12.0, abs=1.0)
        card.set_capture(None)  # the horn went quiet
        assert listen(meter, 0.5) == -120.0


def test_a_generated_wav_is_what_the_microphone_hears(card: SimSoundCard, tmp_path: Path) -> None:
    wav = tmp_path / "horn.wav"
    soundfile.write(str(wav), tone(440, 1.0, rms_dbfs=-24.0), 48000, subtype="PCM_16")
    card.set_capture(wav)
    with LevelMeter(None, resources=Resources()) as meter:  # None: the system's default input
        assert meter.device_name == "default"
        assert listen(meter, 1.0) == pytest.approx(-24.0, abs=1.0)


def test_the_meter_listens_while_the_player_plays(card: SimSoundCard) -> None:
    # The self-test as the scheduler runs it: meter on, item played, meter off.
    card.set_capture_tone(1000, rms_dbfs=-20.0)
    results: list[PlayResult] = []
    with open_player(resources=Resources()) as player, LevelMeter("default", resources=Resources()) as meter:
        meter.start()
        worker = threading.Thread(
            target=lambda: results.append(player.play_source(ArraySource(tone(700, 1.0, rms_dbfs=-12.0), 48000)))
        )
        worker.start()
        worker.join(30)
        assert wait_for(lambda: meter.frames >= 0.5 * meter.rate, 30, interval=0.02)
        heard = meter.stop()
    assert heard == pytest.approx(-20.0, abs=1.0)
    assert results[0].rms_dbfs == pytest.approx(-12.0, abs=0.1)


def test_nothing_heard_between_start_and_stop_is_none(card: SimSoundCard) -> None:
    with LevelMeter("default", resources=Resources()) as meter:
        assert meter.stop() is None  # never started
        meter.start()
        heard = meter.stop()  # at once: maybe a block, maybe none
    assert heard is None or heard < 0


def test_no_such_capture_device_is_one_clear_error(card: SimSoundCard) -> None:
    with pytest.raises(AudioUnavailable, match="no input device 'horn-mic'"):
        LevelMeter("horn-mic", resources=Resources())


def test_the_capture_device_has_one_user(card: SimSoundCard) -> None:
    resources = Resources()
    with LevelMeter("default", resources=resources, holder="speaker.capture_device"):
        with pytest.raises(ResourceBusy, match=r"audio device default \(input\) is used by speaker.capture_device"):
            LevelMeter("default", resources=resources, holder="test")
        # The output of the same card is another resource.
        open_player("default", resources=resources, holder="speaker.device").close()


def test_a_closed_meter_cannot_start(card: SimSoundCard) -> None:
    meter = LevelMeter("default", resources=Resources())
    meter.close()
    meter.close()
    with pytest.raises(AudioUnavailable, match="closed"):
        meter.start()


def test_the_simulated_microphone_is_paced_like_a_real_one(card: SimSoundCard) -> None:
    # A capture stream on ALSA's null device would deliver millions of frames a second; the card
    # delivers about its rate, so a meter left running costs nothing.
    card.set_capture_tone(1000, rms_dbfs=-20.0)
    with LevelMeter("default", resources=Resources()) as meter:
        meter.start()
        started = time.monotonic()
        assert wait_for(lambda: meter.frames >= 0.5 * meter.rate, 30, interval=0.02)
        elapsed = time.monotonic() - started
        frames = meter.frames
        meter.stop()
    queued = CAPTURE_PIPE_BYTES // 2  # 16-bit mono frames waiting when the meter opened
    assert frames <= meter.rate * elapsed + queued + 0.05 * meter.rate  # the rate, what was queued, a block

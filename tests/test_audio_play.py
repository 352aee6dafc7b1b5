"""Playing through the real audio path: sounddevice → PortAudio → ALSA into a simulated sound card
(sim/audio.py) that takes samples at its own rate, as a DAC does, and records them. What the card
recorded is measured like a person with a level meter would: duration, level, where the sound stops.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from drivers.audio import ArraySource, AudioUnavailable, BadAudio, Clip, PlayResult, open_file_source, open_player
from drivers.resources import Resources
from edge.exceptions import ResourceBusy
from sim.audio import HeldSource, SimSoundCard, measure, tone, write_tone
from sim.harness import wait_for

FORMATS = ["wav", "flac", "ogg", "opus", "mp3"]


@pytest.fixture
def card(tmp_path: Path) -> Iterator[SimSoundCard]:
    with SimSoundCard(tmp_path / "card", rate=48000) as c:
        c.activate()
        yield c


def play_file(path: Path, **kwargs: object) -> PlayResult:
    src = open_file_source(path)
    try:
        with open_player(resources=Resources()) as player:
            return player.play_source(src, **kwargs)  # type: ignore[arg-type]
    finally:
        src.close()


@pytest.mark.parametrize("ext", FORMATS)
def test_each_format_plays_for_its_length_at_its_level(card: SimSoundCard, tmp_path: Path, ext: str) -> None:
    path = write_tone(tmp_path / f"announcement.{ext}", hz=1000, seconds=2.0, rms_dbfs=-12.0)
    result = play_file(path)

    (item,) = card.wait_played(1)
    heard = measure(card.samples(item), card.rate)
    assert heard.duration_s == pytest.approx(2.0, abs=0.2)
    assert heard.rms_dbfs == pytest.approx(-12.0, abs=1.0)
    assert heard.gaps() == []  # one unbroken sound
    # What the player says it sent is what came out.
    assert not result.stopped
    assert result.seconds == pytest.approx(heard.duration_s, abs=0.01)
    assert result.rms_dbfs == pytest.approx(heard.rms_dbfs, abs=0.1)
    assert result.peak_dbfs == pytest.approx(heard.peak_dbfs, abs=0.1)


def test_a_gain_of_minus_6_db_plays_6_db_quieter(card: SimSoundCard, tmp_path: Path) -> None:
    path = write_tone(tmp_path / "tone.flac", seconds=2.0, rms_dbfs=-12.0)
    result = play_file(path, gain_db=-6.0)
    (item,) = card.wait_played(1)
    assert measure(card.samples(item), card.rate).rms_dbfs == pytest.approx(-18.0, abs=1.0)
    assert result.rms_dbfs == pytest.approx(-18.0, abs=0.1)


def test_a_gain_above_full_scale_clips_instead_of_wrapping(card: SimSoundCard, tmp_path: Path) -> None:
    path = write_tone(tmp_path / "tone.wav", seconds=1.0, rms_dbfs=-12.0)
    result = play_file(path, gain_db=20.0)
    (item,) = card.wait_played(1)
    samples = card.samples(item)
    assert result.peak_dbfs == pytest.approx(0.0, abs=0.01)
    # Clipped: the tops are flat at full scale, never folded over to the other sign.
    assert np.abs(samples).max() == pytest.approx(1.0, abs=1e-3)
    assert np.count_nonzero(np.abs(samples) > 0.999) > 0.3 * samples.size


def test_a_gain_that_is_not_a_number_is_refused(card: SimSoundCard) -> None:
    with open_player(resources=Resources()) as player, pytest.raises(ValueError, match="finite"):
        player.play_source(Clip.tone(seconds=0.1).source(), gain_db=float("nan"))
    assert card.items == []


def test_stop_from_another_thread_cuts_the_sound_and_the_recording_shows_the_cut(
    card: SimSoundCard, tmp_path: Path
) -> None:
    path = write_tone(tmp_path / "long.mp3", seconds=10.0, rms_dbfs=-12.0)
    results: list[PlayResult] = []
    src = open_file_source(path)
    with open_player(resources=Resources()) as player:
        worker = threading.Thread(target=lambda: results.append(player.play_source(src)))
        worker.start()
        assert wait_for(lambda: card.frames_played >= card.rate, 30, interval=0.01), "nothing played"
        player.stop()
        worker.join(30)
    src.close()

    (result,) = results
    assert result.stopped
    assert 1.0 <= result.seconds < 3.0
    (item,) = card.wait_played(1)
    heard = measure(card.samples(item), card.rate)
    assert heard.duration_s == pytest.approx(result.seconds, abs=0.1)  # no tail after the cut
    assert heard.sounding and heard.sounding[-1][1] == pytest.approx(heard.duration_s, abs=0.02)
    assert heard.sound_rms_dbfs == pytest.approx(-12.0, abs=1.0)


def test_stop_is_noticed_within_one_block(card: SimSoundCard) -> None:
    # A source that stalls after exactly 1.0 s: stop() comes while the player waits on it, and the
    # block the source then gives is not written. So the player wrote exactly 1.0 s — whatever the
    # machine's speed — and the card got that second and nothing more.
    held = HeldSource(ArraySource(tone(1000, 5.0, rms_dbfs=-12.0), 48000), hold_after_s=1.0)
    results: list[PlayResult] = []
    with open_player(resources=Resources(), block_s=0.02) as player:
        worker = threading.Thread(target=lambda: results.append(player.play_source(held)))
        worker.start()
        assert held.held.wait(30)
        player.stop()
        held.release()
        worker.join(30)
    (result,) = results
    assert result.stopped and result.frames == 48000
    (item,) = card.wait_played(1)
    assert item.frames == 48000


def test_on_start_is_called_once_after_the_first_block_is_written(card: SimSoundCard) -> None:
    calls: list[int] = []
    with open_player(resources=Resources()) as player:
        player.play_source(ArraySource(tone(500, 0.5), 48000), on_start=lambda: calls.append(card.frames_played))
    assert len(calls) == 1
    # The first block was handed to ALSA before on_start; the card had not played the whole item.
    assert calls[0] < 0.5 * 48000
    (item,) = card.wait_played(1)
    assert item.frames == 24000


def test_an_empty_source_writes_nothing_and_reports_no_level(card: SimSoundCard) -> None:
    calls: list[bool] = []
    with open_player(resources=Resources()) as player:
        result = player.play_source(
            ArraySource(np.zeros((0, 1), np.float32), 48000), on_start=lambda: calls.append(True)
        )
    assert (result.frames, result.rms_dbfs, result.peak_dbfs, result.stopped) == (0, None, None, False)
    assert calls == []


def test_silence_is_reported_as_the_silence_floor_not_minus_infinity(card: SimSoundCard) -> None:
    with open_player(resources=Resources()) as player:
        result = player.play_source(ArraySource(np.zeros((4800, 1), np.float32), 48000))
    assert result.rms_dbfs == -120.0 and result.peak_dbfs == -120.0


def test_a_file_at_another_rate_is_converted_by_alsa_and_keeps_length_and_level(
    card: SimSoundCard, tmp_path: Path
) -> None:
    path = write_tone(tmp_path / "speech-rate.wav", hz=600, seconds=2.0, rms_dbfs=-15.0, rate=22050)
    result = play_file(path)
    assert result.rate == 22050
    (item,) = card.wait_played(1)
    heard = measure(card.samples(item), card.rate)
    assert heard.duration_s == pytest.approx(2.0, abs=0.2)
    assert heard.rms_dbfs == pytest.approx(-15.0, abs=1.0)


def test_stereo_is_played_as_stereo(tmp_path: Path) -> None:
    with SimSoundCard(tmp_path / "stereo-card", channels=2) as card:
        card.activate()
        left_only = np.concatenate([tone(1000, 1.0, rms_dbfs=-12.0), np.zeros((48000, 1), np.float32)], axis=1)
        soundfile.write(str(tmp_path / "left.flac"), left_only, 48000)
        play_file(tmp_path / "left.flac")
        (item,) = card.wait_played(1)
        samples = card.samples(item)
    assert samples.shape == (48000, 2)
    assert measure(samples[:, 0], 48000).rms_dbfs == pytest.approx(-12.0, abs=0.5)
    assert measure(samples[:, 1], 48000).rms_dbfs == -120.0


def test_items_are_recorded_one_after_another(card: SimSoundCard, tmp_path: Path) -> None:
    first = write_tone(tmp_path / "first.ogg", hz=440, seconds=1.0, rms_dbfs=-20.0)
    second = write_tone(tmp_path / "second.wav", hz=880, seconds=0.5, rms_dbfs=-10.0)
    play_file(first)
    play_file(second)
    one, two = card.wait_played(2)
    assert (one.seconds, two.seconds) == (pytest.approx(1.0, abs=0.05), pytest.approx(0.5, abs=0.05))
    assert two.start_frame == one.start_frame + one.frames
    assert (one.rms_dbfs, two.rms_dbfs) == (pytest.approx(-20.0, abs=1.0), pytest.approx(-10.0, abs=1.0))
    # The card is paced like a DAC: a second of sound took (at least) a second.
    assert one.ended_at is not None and one.ended_at - one.started_at >= 0.9


def test_the_counter_thank_you_clip_still_plays(card: SimSoundCard) -> None:
    with open_player(resources=Resources()) as player:
        result = player.play(Clip.tone(1000, 0.5, rate=16000, level=0.5))
    assert (result.frames, result.rate, result.stopped) == (8000, 16000, False)
    assert result.rms_dbfs == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.05)
    (item,) = card.wait_played(1)
    assert measure(card.samples(item), card.rate).duration_s == pytest.approx(0.5, abs=0.05)


def test_a_file_damaged_in_the_middle_stops_with_bad_audio_after_what_it_could_play(
    card: SimSoundCard, tmp_path: Path
) -> None:
    data = bytearray(write_tone(tmp_path / "tone.flac", seconds=3.0).read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = bytes(third)
    (tmp_path / "damaged.flac").write_bytes(bytes(data))
    with pytest.raises(BadAudio, match="decoding failed"):
        play_file(tmp_path / "damaged.flac")
    (item,) = card.wait_played(1)  # the stream was closed, not left open
    assert 0.3 < item.seconds < 2.0


# -- devices ---------------------------------------------------------------------------------------


def test_no_such_output_device_is_one_clear_error(card: SimSoundCard) -> None:
    with pytest.raises(AudioUnavailable, match="no output device 'USB Audio'"):
        open_player("USB Audio", resources=Resources())


def test_a_machine_without_any_sound_card_has_no_default_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sounddevice

    bare = tmp_path / "asound.conf"
    bare.write_text("</usr/share/alsa/alsa.conf>\npcm.!default { type hw card 7 }\n", encoding="utf-8")
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(bare))
    sounddevice._terminate()
    sounddevice._initialize()
    try:
        with pytest.raises(AudioUnavailable, match="no default output device"):
            open_player(None, resources=Resources())
    finally:
        monkeypatch.undo()
        sounddevice._terminate()
        sounddevice._initialize()


def test_one_player_per_device(card: SimSoundCard) -> None:
    resources = Resources()
    with (
        open_player("default", resources=resources, holder="speaker.device"),
        pytest.raises(ResourceBusy, match=r"audio device default is used by speaker\.device"),
    ):
        open_player("default", resources=resources, holder="rating.feedback.audio_device")
    open_player("default", resources=resources, holder="rating.feedback.audio_device").close()  # released


def test_a_closed_player_refuses_to_play(card: SimSoundCard) -> None:
    player = open_player(resources=Resources())
    player.close()
    player.close()  # idempotent
    with pytest.raises(AudioUnavailable, match="closed"):
        player.play_source(Clip.tone(seconds=0.1).source())

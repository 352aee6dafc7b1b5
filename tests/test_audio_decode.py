"""Audio files as sources: every format the loudspeaker plays is decoded by libsndfile, block by block,
at the level it was written; files that cannot be played whole are refused with the reason."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile

from drivers.audio import BadAudio, PcmSource, open_file_source
from sim.audio import measure, tone, write_tone

FORMATS = ["wav", "flac", "ogg", "opus", "mp3"]


def read_all(src: PcmSource, block: int) -> list[np.ndarray]:
    blocks = []
    while (b := src.read(block)).shape[0]:
        blocks.append(b)
    return blocks


@pytest.mark.parametrize("ext", FORMATS)
def test_a_two_second_tone_decodes_in_small_blocks_at_its_level(tmp_path: Path, ext: str) -> None:
    path = write_tone(tmp_path / f"tone.{ext}", hz=1000, seconds=2.0, rms_dbfs=-12.0, rate=48000)
    src = open_file_source(path)
    assert isinstance(src, PcmSource)
    assert (src.rate, src.channels) == (48000, 1)
    assert src.duration_s == pytest.approx(2.0, abs=0.05)

    # Blocks of 960 frames (20 ms), as the player reads: every quarter second is at the tone's level.
    # (Read with SoundFile.read(), whose re-seek after each read upsets libsndfile's MP3 decoder, an MP3
    # goes silent after its first blocks; this is what would show it.)
    blocks = read_all(src, 960)
    src.close()
    samples = np.concatenate(blocks)
    assert samples.dtype == np.float32 and samples.shape[1] == 1
    assert all(b.shape[0] == 960 for b in blocks[:-1])
    assert samples.shape[0] / 48000 == pytest.approx(2.0, abs=0.05)
    quarters = [measure(samples[i : i + 12000], 48000).rms_dbfs for i in range(0, 96000 - 12000 + 1, 12000)]
    assert quarters == [pytest.approx(-12.0, abs=1.0)] * 8


@pytest.mark.parametrize("ext", FORMATS)
def test_playing_from_an_offset_starts_there(tmp_path: Path, ext: str) -> None:
    path = write_tone(tmp_path / f"tone.{ext}", seconds=2.0, rms_dbfs=-12.0)
    src = open_file_source(path, start_s=1.5)
    assert src.duration_s == pytest.approx(0.5, abs=0.05)
    rest = np.concatenate(read_all(src, 1024))
    src.close()
    assert rest.shape[0] / 48000 == pytest.approx(0.5, abs=0.05)
    assert measure(rest, 48000).sound_rms_dbfs == pytest.approx(-12.0, abs=1.0)


def test_stereo_and_other_rates_come_out_as_the_file_is(tmp_path: Path) -> None:
    left_only = np.concatenate([tone(440, 1.0, rms_dbfs=-12.0, rate=22050), np.zeros((22050, 1))], axis=1)
    soundfile.write(str(tmp_path / "stereo.flac"), left_only, 22050)
    src = open_file_source(tmp_path / "stereo.flac")
    assert (src.rate, src.channels) == (22050, 2)
    samples = np.concatenate(read_all(src, 441))
    assert measure(samples[:, 0], 22050).rms_dbfs == pytest.approx(-12.0, abs=0.2)
    assert np.abs(samples[:, 1]).max() == 0.0


def test_a_long_programme_is_streamed_from_disk_not_loaded(tmp_path: Path) -> None:
    # Five minutes of FLAC decode to 58 MB of float32; playing it must hold one block at a time.
    path = tmp_path / "programme.flac"
    minute = tone(700, 60.0, rms_dbfs=-18.0, rate=48000)
    with soundfile.SoundFile(str(path), "w", samplerate=48000, channels=1, format="FLAC") as f:
        for _ in range(5):
            f.write(minute)
    del minute
    src = open_file_source(path)
    assert src.duration_s == pytest.approx(300.0, abs=0.1)
    tracemalloc.start()
    try:
        frames = 0
        while (n := src.read(960).shape[0]) > 0:
            frames += n
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        src.close()
    assert frames == 300 * 48000
    assert peak < 1_000_000, f"{peak} bytes held while streaming"


# -- files that are not played -----------------------------------------------------------------


def test_a_missing_or_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadAudio, match="no such file"):
        open_file_source(tmp_path / "gone.mp3")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(BadAudio, match="the file is empty"):
        open_file_source(tmp_path / "empty.wav")


@pytest.mark.parametrize("name", ["notice.mp3", "notice.ogg", "notice.wav", "notice.flac"])
def test_text_under_an_audio_name_is_not_audio(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("Thông báo: họp tổ dân phố lúc 19h.\n" * 50, encoding="utf-8")
    with pytest.raises(BadAudio, match="not an audio file that can be decoded"):
        open_file_source(tmp_path / name)


@pytest.mark.parametrize("ext", FORMATS)
def test_a_file_cut_in_half_is_refused_before_anything_plays(tmp_path: Path, ext: str) -> None:
    whole = write_tone(tmp_path / f"tone.{ext}", seconds=2.0).read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadAudio, match=r"truncated|not an audio file|no audio") as caught:
        open_file_source(cut)
    assert str(cut) in str(caught.value)


def test_a_wav_shorter_than_its_header_says_names_both_sizes(tmp_path: Path) -> None:
    whole = write_tone(tmp_path / "tone.wav", seconds=2.0).read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[:96044])
    with pytest.raises(
        BadAudio, match=r"truncated: the header announces 192000 bytes of samples, the file holds 96000"
    ):
        open_file_source(tmp_path / "cut.wav")


def garble_middle(path: Path) -> Path:
    """The file with its middle third overwritten by noise (seeded: the same damage every run)."""
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = np.random.default_rng(8).integers(0, 256, third, dtype=np.uint8).tobytes()
    bad = path.with_name(f"garbled{path.suffix}")
    bad.write_bytes(bytes(data))
    return bad


def test_an_mp3_garbled_in_the_middle_is_refused_at_open(tmp_path: Path) -> None:
    # mpg123 skips the noise, so the announced end is never reached: the end check finds it.
    bad = garble_middle(write_tone(tmp_path / "tone.mp3", seconds=2.0))
    with pytest.raises(BadAudio, match="truncated"):
        open_file_source(bad)


def test_a_flac_garbled_in_the_middle_fails_where_the_damage_is(tmp_path: Path) -> None:
    # FLAC seeks past the damage, so the file opens; reading through it stops at the damage, with the
    # position, rather than playing on as if whole.
    bad = garble_middle(write_tone(tmp_path / "tone.flac", seconds=2.0))
    src = open_file_source(bad)
    with pytest.raises(BadAudio, match=r"decoding failed 0\.\d s in") as caught:
        read_all(src, 960)
    src.close()
    assert "garbled.flac" in str(caught.value)


def test_a_negative_start_is_a_caller_error(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "tone.wav", seconds=0.5)
    with pytest.raises(ValueError, match="start_s must be >= 0"):
        open_file_source(path, start_s=-1.0)

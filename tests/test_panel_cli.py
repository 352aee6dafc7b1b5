"""The technician's commands for the counter: `edge config validate` on [panel], `edge test panel`
and `edge test speaker`, run as a technician runs them (subprocesses), against simulated panels and
the real sounddevice → PortAudio → ALSA path into ALSA's file plugin.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from drivers.audio import AudioUnavailable, BadAudio, Clip, open_player
from drivers.resources import Resources
from edge.config import starter_config
from sim.counter import speaker_alsa_config
from sim.harness import edge_command, run_edge
from sim.serial_mcu import SerialMcu


def counter_toml(tmp_path: Path, panel: str) -> Path:
    """The starter `edge init --role counter` writes, with its [panel] section replaced."""
    text = starter_config("counter", "counter-01", "gia-ray", "mqtt://127.0.0.1:1883", str(tmp_path / "state"))
    head, _, rest = text.partition("[panel]\n")
    _, _, tail = rest.partition("\n[rating]")
    path = tmp_path / "edge.toml"
    path.write_text(f"{head}[panel]\n{panel}\n\n[rating]{tail}", encoding="utf-8")
    return path


def validate(config: Path) -> tuple[int, list[dict[str, str]]]:
    result = run_edge(["config", "validate", "--json", "--config", str(config)], check=False)
    return result.returncode, json.loads(result.stdout)["errors"]


# -- edge config validate ----------------------------------------------------------------------------


def test_a_profile_with_a_pin_used_twice_is_rejected_with_its_key_path(tmp_path: Path) -> None:
    (tmp_path / "twice.yaml").write_text(
        "kind: gpio\nmodel: twice\nbuttons:\n"
        "  - {pin: 17, led: 5, score: 2, label: satisfied}\n"
        "  - {pin: 27, led: 17, score: 1, label: dissatisfied}\n"
    )
    code, errors = validate(counter_toml(tmp_path, f'profile = "{tmp_path / "twice.yaml"}"'))
    assert code == 2
    assert errors == [
        {
            "key": "panel.profile",
            "error": "buttons[1].led: GPIO 17 is used by buttons[0].pin (in profile twice.yaml)",
        }
    ]


def test_a_profile_with_an_unknown_pin_is_rejected_with_its_key_path(tmp_path: Path) -> None:
    (tmp_path / "nopin.yaml").write_text(
        "kind: gpio\nmodel: nopin\nbuttons:\n"
        "  - {pin: 17, score: 2, label: satisfied}\n"
        "  - {pin: GPIO30, score: 1, label: dissatisfied}\n"
    )
    code, errors = validate(counter_toml(tmp_path, f'profile = "{tmp_path / "nopin.yaml"}"'))
    assert code == 2
    [error] = errors
    assert error["key"] == "panel.profile"
    assert error["error"].startswith("buttons[1].pin: GPIO 30 is not on the rpi-40pin header (usable: GPIO ")


def test_panel_port_and_profile_name_problems_name_their_keys(tmp_path: Path) -> None:
    code, errors = validate(counter_toml(tmp_path, 'profile = "gpio-4btn-rpi"\nport = "/dev/ttyUSB0"'))
    assert code == 2 and errors == [{"key": "panel.port", "error": "a GPIO panel has no serial port; remove port"}]
    code, errors = validate(counter_toml(tmp_path, 'profile = "gpio-9btn"'))
    assert code == 2 and errors[0]["key"] == "panel.profile" and "no profile 'gpio-9btn'" in errors[0]["error"]
    code, errors = validate(counter_toml(tmp_path, 'profile = "serial-4btn"\nport = "/dev/serial/by-id/usb-x"'))
    assert code == 0, errors


def test_a_panel_on_a_loudspeaker_is_a_config_error(tmp_path: Path) -> None:
    config = counter_toml(tmp_path, 'profile = "gpio-4btn-rpi"')
    config.write_text(config.read_text().replace('roles = ["counter"]', 'roles = ["loudspeaker"]'))
    code, errors = validate(config)
    assert code == 2
    assert errors == [{"key": "panel", "error": "a rating panel needs the 'counter' role in device.roles"}]


# -- edge test panel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["gpio-3btn-rpi", "gpio-5btn-rpi", "serial-5btn"])
def test_edge_test_panel_lights_each_led_and_reports_each_button_on_a_simulated_panel(profile: str) -> None:
    result = run_edge(["test", "panel", "--profile", profile, "--sim", "--led-s", "0.01", "--json"])
    report = json.loads(result.stdout)
    n = int(profile.split("-")[1][0])
    assert report["leds"] == list(range(1, n + 1))
    assert sorted(report["pressed"]) == list(range(1, n + 1))
    assert report["missing"] == [] and report["ok"] is True


def test_edge_test_panel_against_a_serial_mcu_on_a_pty(tmp_path: Path) -> None:
    with SerialMcu(buttons=4, link=tmp_path / "ttyPANEL") as mcu:
        proc = subprocess.Popen(
            [*edge_command(), "test", "panel", "--profile", "serial-4btn", "--port", mcu.path, "--led-s", "0.01"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("press each of the 4 buttons"):
                break
        # The technician presses the buttons in a scrambled order.
        threading.Thread(target=lambda: [mcu.press(b) for b in (3, 1, 4, 2)], daemon=True).start()
        rest, err = proc.communicate(timeout=60)
        lines += rest.splitlines()
        assert proc.returncode == 0, err
        leds_on = [target for target, mode in mcu.led_log if mode == "on"]

    assert leds_on == ["1", "2", "3", "4"]  # each LED in turn, as the MCU was told
    assert mcu.beeps == [200]
    assert lines[1].startswith("connected: firmware 1.2.0, model ce-panel-4, 4 buttons")
    assert [ln for ln in lines if "pressed" in ln] == [
        "button 3 pressed: Bình thường (score 2, neutral)",
        "button 1 pressed: Rất hài lòng (score 4, very_satisfied)",
        "button 4 pressed: Không hài lòng (score 1, dissatisfied)",
        "button 2 pressed: Hài lòng (score 3, satisfied)",
    ]
    assert lines[-1] == "all 4 buttons work"


def test_edge_test_panel_fails_in_one_line_when_the_panel_is_absent(tmp_path: Path) -> None:
    result = run_edge(
        ["test", "panel", "--profile", "serial-4btn", "--port", str(tmp_path / "nothing"), "--connect-timeout", "1"],
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith("panel ce-panel-4 did not answer within 1 s")


# -- the speaker: sounddevice → PortAudio → ALSA file plugin -----------------------------------------


def played(tmp_path: Path, *args: str) -> tuple[dict[str, object], Clip]:
    wav = tmp_path / "played.wav"
    env = {"ALSA_CONFIG_PATH": str(speaker_alsa_config(tmp_path / "asound.conf", wav))}
    result = run_edge(["test", "speaker", "--json", *args], env=env)
    return json.loads(result.stdout), Clip.from_wav(wav)


def test_a_tone_goes_through_portaudio_and_alsa_and_is_measured_in_the_wav(tmp_path: Path) -> None:
    report, clip = played(tmp_path, "--tone", "1000", "--seconds", "0.5")
    assert report["device"] == "default" and report["seconds"] == 0.5
    sine_dbfs = 20 * np.log10(0.5 / np.sqrt(2))  # a sine of peak 0.5
    assert report["items"] == [
        {
            "what": "tone 1000 Hz",
            "seconds": 0.5,
            "rate": 16000,
            "stopped": False,
            "level_dbfs": pytest.approx(sine_dbfs, abs=0.05),
            "peak_dbfs": pytest.approx(20 * np.log10(0.5), abs=0.05),
        }
    ]
    assert clip.rate == 16000 and clip.channels == 1
    samples = clip.samples[:8000, 0].astype(np.float64)  # ALSA may pad the end with silence
    peak_hz = np.argmax(np.abs(np.fft.rfft(samples))) * clip.rate / len(samples)
    assert abs(peak_hz - 1000) < 5
    assert np.sqrt(np.mean(samples**2)) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.02)


def test_the_spoken_thank_you_is_rendered_by_espeak_ng_and_played(tmp_path: Path) -> None:
    report, clip = played(tmp_path, "--text", "Cảm ơn quý khách đã đánh giá.", "--voice", "vi-vn-x-south")
    assert 1.0 < float(report["seconds"]) < 6.0  # type: ignore[arg-type]
    assert clip.rate == 22050 and clip.duration_s == pytest.approx(report["seconds"], abs=0.1)
    assert np.abs(clip.samples).max() > 3000  # speech, not silence


def test_a_missing_output_device_is_one_clear_error() -> None:
    with pytest.raises(AudioUnavailable, match="no output device 'no-such-speaker'"):
        open_player("no-such-speaker", resources=Resources())


def test_only_16_bit_pcm_wav_is_played(tmp_path: Path) -> None:
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(BadAudio, match="not a PCM WAV file"):
        Clip.from_wav(tmp_path / "text.wav")

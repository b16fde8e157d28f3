from pathlib import Path

import pytest

from edge.errors import ConfigError
from edge.profiles import available_profiles, load_profile

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_profile_loads():
    assert set(available_profiles()) == {"rpi4", "rpi5", "jetson-nano", "jetson-orin", "x86"}
    for name in available_profiles():
        p = load_profile(name)
        assert p.name == name and p.device.threads >= 1 and p.runtime.backends


def test_firmware_profiles_folder_is_the_same_files():
    assert sorted(f.name for f in (REPO / "firmware_profiles").glob("*.toml")) == \
        sorted(f"{n}.toml" for n in available_profiles())


def test_targets_carry_their_quantization_scheme():
    assert load_profile("jetson").name == "jetson-orin"
    assert load_profile("jetson-orin").quantization.symmetric
    assert load_profile("jetson-nano").quantization.scheme == "fp16"
    assert load_profile("x86").quantization.reduce_range
    assert load_profile("rpi4").quantization.tflite


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid profiles: jetson-nano, jetson-orin, rpi4, rpi5, x86"):
        load_profile("rpi3")


def _edited(tmp_path, old, new):
    text = (REPO / "edge/profiles/x86.toml").read_text()
    assert old in text
    path = tmp_path / "custom.toml"
    path.write_text(text.replace(old, new))
    return path


def test_profile_from_a_path(tmp_path):
    assert load_profile(_edited(tmp_path, "threads = 1", "threads = 3")).device.threads == 3


@pytest.mark.parametrize("old,new,message", [
    ("threads = 1", "thread = 1", r"unknown keys \['thread'\], missing keys \['threads'\]"),
    ("threads = 1", 'threads = "one"', "device.threads: expected int"),
    ('scheme = "int8"', 'scheme = "int4"', "quantization.scheme must be"),
    ("hop_s = 0.5", "hop_s = 5.0", "audio.hop_s < audio.ring_s"),
    ("[budget]", "[budgets]", r"unknown sections \['budgets'\]"),
    ("max_clients = 4", "max_clients = 0", "serve.max_clients must be >= 1"),
    ("[budget]", "[budget", "not a readable TOML profile"),
])
def test_bad_fields_are_named(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=message):
        load_profile(_edited(tmp_path, old, new))

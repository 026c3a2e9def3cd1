"""setup(), device choice, profiles and the environment variables."""

import os

import pytest
import torch

import course_lib
from course_lib.core import canonical, env as course_env
from course_lib.core.profile import Profile, get_profile


def test_auto_device_is_first_available():
    assert course_env.choose_device("auto").type == course_env.available_devices()[0].split(":")[0]
    assert course_env.choose_device("cpu") == torch.device("cpu")


def test_unknown_device_names_the_available_ones():
    with pytest.raises(ValueError) as err:
        course_env.choose_device("tpu")
    message = str(err.value)
    assert "tpu" in message and "cpu" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(course_env.DeviceUnavailableError, match="Available: cpu"):
        course_env.choose_device("cuda")
    with pytest.raises(course_env.DeviceUnavailableError, match="Change runtime type"):
        course_lib.require_cuda("This benchmark")


def test_device_from_environment(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert course_env.choose_device(None) == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "quantum")
    with pytest.raises(ValueError, match="quantum"):
        course_env.choose_device(None)


def test_setup_seeds_threads_and_reports(capsys):
    env = course_lib.setup("cpu", seed=123, threads=1)
    a = torch.rand(3)
    course_lib.setup("cpu", seed=123, threads=1, report=False)
    assert torch.equal(a, torch.rand(3))
    assert env.threads == 1 and env.device.type == "cpu" and env.seed == 123
    out = capsys.readouterr().out
    assert "torch" in out and "device       cpu" in out
    with pytest.raises(ValueError, match="threads"):
        course_lib.setup("cpu", threads=0, report=False)


def test_canonical_setup_forces_one_thread(monkeypatch):
    monkeypatch.setenv("COURSE_CANONICAL", "1")
    before = torch.get_num_threads()
    try:
        assert course_lib.setup("cpu", threads=2, report=False).threads == 1
    finally:
        torch.set_num_threads(before)


def test_profiles(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert get_profile(None, torch.device("cpu")).name == "small"
    assert get_profile(None, torch.device("cuda")).name == "large"
    assert get_profile("large", torch.device("cpu")).pick(small=1, large=2) == 2
    monkeypatch.setenv("COURSE_PROFILE", "large")
    assert get_profile(None, torch.device("cpu")).name == "large"
    with pytest.raises(ValueError, match="small, large"):
        Profile("huge")


def test_library_env_defaults_do_not_override_the_user(monkeypatch):
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", "7")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("COURSE_MODEL", raising=False)
    course_env.apply_library_env()
    assert os.environ["GPTQMODEL_CPU_WORKERS"] == "7"
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_hub_model_switches_hub_online(monkeypatch):
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("COURSE_MODEL", "Qwen/Qwen2.5-0.5B")
    course_env.apply_library_env()
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_canonical_environ_pins_the_run():
    env = canonical.canonical_environ({"PATH": "/usr/bin", "OMP_NUM_THREADS": "8"})
    assert env["OMP_NUM_THREADS"] == "1" and env["PYTHONHASHSEED"] == "0"
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["COURSE_CANONICAL"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1" and env["PATH"] == "/usr/bin"


def test_pins_are_read_and_drift_is_reported(tmp_path, monkeypatch):
    pins = course_env.pinned_versions()
    assert pins["torch"] == "2.13.0" and pins["transformers"] == "5.17.0"
    fake = tmp_path / "constraints.txt"
    fake.write_text("# comment\ntorch==0.0.1\n")
    assert course_env.pinned_versions(fake) == {"torch": "0.0.1"}
    monkeypatch.setattr(course_env, "pinned_versions", lambda: {"torch": "0.0.1"})
    assert course_env.version_drift(("torch",))["torch"][1] == "0.0.1"


def test_import_noise_of_libraries_is_quiet():
    """transformers imports torchao on every model load; its warnings carry machine paths."""
    import subprocess
    import sys

    code = "import course_lib; import transformers.quantizers.auto"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Failed to load" not in proc.stderr and "register_constant" not in proc.stderr, proc.stderr[-2000:]


def test_quiet_loggers_restores_levels():
    import logging

    from course_lib.core.env import quiet_loggers

    log = logging.getLogger("course_lib.test.quiet")
    log.setLevel(logging.INFO)
    with quiet_loggers("course_lib.test.quiet"):
        assert log.level == logging.ERROR
    assert log.level == logging.INFO


def test_torch_threads_sets_and_restores():
    import torch

    from course_lib.core.env import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n >= 1"):
        with torch_threads(0):
            pass

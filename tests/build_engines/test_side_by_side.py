"""The side-by-side benchmark: the training stack's eager forward and `runtime`, interleaved on the same frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from build_engines.build import BuildOptions, build_bundle
from build_engines.side_by_side import WAYS, EagerServer, episode_images, main, markdown, policy_for, run
from calibration.sampling import SampleSettings
from runtime.bundle import load_bundle
from runtime.errors import MobileVLAError


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory: pytest.TempPathFactory, demo_episodes: Path) -> Path:
    output = tmp_path_factory.mktemp("side-by-side") / "tiny"
    return build_bundle(BuildOptions(output=output, preset="tiny", random_weights=True, seed=3, int8=True,
                                     episodes=demo_episodes, sample=SampleSettings(frames=8),
                                     parity_frames=2, engines=False)).bundle


def test_eager_server_way_agrees_with_runtime_fp32_and_int8_is_close(random_bundle: Path,
                                                                      demo_episodes: Path) -> None:
    bundle = load_bundle(random_bundle)
    result = run(bundle, episode_images(demo_episodes, 7), warmup=1)
    assert result["frames"] == 6 and set(result["ways"]) == set(WAYS)
    for way in result["ways"].values():
        assert 0 < way["p50_ms"] <= way["p99_ms"] and way["fps"] > 0
    fp32, int8 = result["ways"]["runtime_fp32"]["vs_eager"], result["ways"]["runtime_int8"]["vs_eager"]
    assert fp32["max_abs_err"] < 1e-5 and fp32["sign_agreement"] == 1.0  # the same policy, padding and all
    assert int8["mae"] < 0.02
    table = markdown(result, bundle)
    assert "| eager |" in table and "| runtime_int8 |" in table and "reference" in table


def test_eager_server_pads_the_prompt_to_256_and_runs_the_lm_head(random_bundle: Path, demo_episodes: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_bundle(random_bundle)
    server = EagerServer(policy_for(bundle), bundle, bundle.manifest.prompt.default_instruction)
    shapes: list[tuple[int, ...]] = []
    head = server.policy.backbone.text_model.lm_head
    head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    velocity = server.step(episode_images(demo_episodes, 1)[0])
    assert shapes == [(1, 256, server.policy.backbone.text_model.config.vocab_size)]
    assert velocity.shape == (2,) and np.isfinite(velocity).all()


def test_a_bundle_not_built_from_random_weights_is_refused_with_the_fix(demo_bundle: Path) -> None:
    with pytest.raises(MobileVLAError, match=r"build_engines --random-weights --preset mid --int8"):
        policy_for(load_bundle(demo_bundle))


def test_bad_flags_say_what_and_how(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--frames", "0", "--cache", str(tmp_path)]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main(["--preset", "huge", "--cache", str(tmp_path)]) == 2
    assert "expected one of tiny, mid, kosmos-2" in capsys.readouterr().err

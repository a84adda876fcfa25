"""runtime/plan.py on hand-built part specs: the run plan of a bundle and every refusal of a bad one.

No torch here: this file also runs in the lean runtime venv (`.venv-runtime/bin/python -m pytest`)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from runtime.errors import MobileVLAError
from runtime.plan import Source, parse_source, run_plan
from runtime.specs import LEGACY_CADENCE, LEGACY_SOURCES, PartDims, PartSpec, TensorSpec, part_specs

WINDOW = 3
FEATURE = (1, 4)
TEXT = (1, 5)
DAMAGED = "The bundle's manifest is damaged or was written by an adapter with a bug; rebuild the bundle"


def t(name: str, shape: tuple[int, ...], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, shape)


def part(name: str, cadence: str, inputs: dict[str, tuple[TensorSpec, str]], outputs: tuple[TensorSpec, ...]
         ) -> PartSpec:
    """A part whose inputs are `name -> (tensor, source)`, in that order."""
    return PartSpec(name, tuple(spec for spec, _ in inputs.values()), outputs, 17, 1e-4, cadence,
                    tuple((n, source) for n, (_, source) in inputs.items()))


def vision() -> PartSpec:
    return part("vision", "frame", {"frame": (t("frame", (1, 8, 8, 4), "uint8"), "frame")},
                (t("feature", FEATURE),))


def language() -> PartSpec:
    return part("language", "instruction",
                {"input_ids": (t("input_ids", TEXT, "int64"), "text.input_ids"),
                 "attention_mask": (t("attention_mask", TEXT, "int64"), "text.attention_mask")},
                (t("text_feature", (1, 6)),))


def window_head(features: str = "window(vision.feature)", shape: tuple[int, ...] = (1, WINDOW, 4)) -> PartSpec:
    return part("head", "window",
                {"features": (t("features", shape), features),
                 "text_feature": (t("text_feature", (1, 6)), "language.text_feature"),
                 "history_len": (t("history_len", (1,), "int64"), "history_len")},
                (t("actions", (1, 2, 2)),))


def frame_head(inputs: dict[str, tuple[TensorSpec, str]] | None = None) -> PartSpec:
    return part("head", "frame", inputs or {"feature": (t("feature", FEATURE), "vision.feature")},
                (t("actions", (1, 2, 2)),))


def refused(parts: tuple[PartSpec, ...], message: str) -> str:
    """run_plan refuses `parts` with `message` (a literal substring); returns the whole message."""
    with pytest.raises(MobileVLAError, match=re.escape(message)) as caught:
        run_plan(parts, WINDOW, where="bundle /tmp/b")
    text = str(caught.value)
    assert text.startswith("bundle /tmp/b: ") and DAMAGED in text
    return text


def test_a_three_part_window_plan() -> None:
    plan = run_plan((vision(), language(), window_head()), WINDOW)
    assert plan.frame_parts == ("vision", "head")  # window parts run every frame too, in manifest order
    assert plan.instruction_parts == ("language",)
    assert plan.final.name == "head"
    link = plan.window_link
    assert link is not None
    assert (link.consumer, link.input, link.source) == ("head", "features", Source("window", "vision", "feature"))
    assert link.source.key == "vision.feature"
    assert plan.upstream("head") == {"vision", "language"}
    assert plan.upstream("vision") == set() and plan.upstream("language") == set()
    assert [(k.input, k.source.kind) for k in plan.inputs_of("head")] == [
        ("features", "window"), ("text_feature", "output"), ("history_len", "history_len")]
    assert [(k.input, k.source) for k in plan.inputs_of("language")] == [
        ("input_ids", Source("text", tensor="input_ids")), ("attention_mask", Source("text", tensor="attention_mask"))]
    assert plan.spec("language").cadence == "instruction"
    assert len(plan.links) == 6  # one per input


def test_a_frame_plan_has_no_window_and_upstream_is_transitive() -> None:
    middle = part("middle", "frame", {"x": (t("x", FEATURE), "vision.feature")}, (t("y", (1, 7)),))
    head = frame_head({"y": (t("y", (1, 7)), "middle.y"),
                       "text_feature": (t("text_feature", (1, 6)), "language.text_feature")})
    plan = run_plan((vision(), language(), middle, head), WINDOW)
    assert plan.window_link is None
    assert plan.frame_parts == ("vision", "middle", "head")
    assert plan.upstream("head") == {"middle", "vision", "language"}
    assert plan.upstream("middle") == {"vision"}


def test_a_part_may_follow_the_window_part() -> None:
    after = frame_head({"a": (t("a", (1, 2, 2)), "head.actions")})
    plan = run_plan((vision(), language(), replace(window_head(), outputs=(t("actions", (1, 2, 2)),)),
                     replace(after, name="smooth")), WINDOW)
    assert plan.final.name == "smooth"
    assert plan.upstream("smooth") == {"head", "vision", "language"}


def test_the_lstm_familys_legacy_parts_plan() -> None:
    dims = PartDims(224, 4, 64, 32, 40, 8, 10, 2, "velocities")
    plan = run_plan(tuple(part_specs(dims).values()), window=8)
    assert plan.frame_parts == ("vision", "trunk", "head") and plan.instruction_parts == ()
    assert plan.window_link is not None and plan.window_link.source == Source("window", "trunk", "action_feature")
    assert plan.upstream("head") == {"trunk", "vision"}
    # the window's length is the manifest's: the same parts do not fit a window of 4
    refused_window = pytest.raises(MobileVLAError, match=re.escape(
        "part head input features is float32[1, 8, 32], its source trunk.action_feature gives float32[1, 4, 32]"))
    with refused_window:
        run_plan(tuple(part_specs(dims).values()), window=4)


@pytest.mark.parametrize(("text", "source"), [
    ("frame", Source("frame")),
    ("history_len", Source("history_len")),
    ("text.input_ids", Source("text", tensor="input_ids")),
    ("vision.feature", Source("output", "vision", "feature")),
    ("window(trunk.action_feature)", Source("window", "trunk", "action_feature")),
])
def test_source_syntax(text: str, source: Source) -> None:
    assert parse_source(text) == source


@pytest.mark.parametrize("text", ["vision", "vision.", ".feature", "", "window(vision)", "window()"])
def test_bad_source_syntax_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"input source {text!r} is none of frame, history_len, text.NAME")):
        parse_source(text)


@pytest.mark.parametrize("name", ["text", "frame", "history_len", "window"])
def test_reserved_part_names(name: str) -> None:
    message = refused((replace(vision(), name=name), frame_head()),
                      f"part name {name!r} is reserved, dotted or used twice (reserved: frame, text, history_len, "
                      f"window)")
    assert message.count("reserved") == 2


def test_dotted_and_duplicate_part_names() -> None:
    refused((replace(vision(), name="vision.v2"), frame_head()), "part name 'vision.v2' is reserved, dotted")
    refused((vision(), vision(), frame_head()), "part name 'vision' is reserved, dotted or used twice")


def test_no_parts() -> None:
    refused((), "the manifest lists no parts")


def test_unknown_cadence() -> None:
    refused((replace(vision(), cadence="episode"), frame_head()),
            "part vision has cadence 'episode', not one of ('frame', 'instruction', 'window')")


def test_a_source_naming_a_later_part() -> None:
    early = part("early", "frame", {"f": (t("f", FEATURE), "vision.feature")}, (t("g", FEATURE),))
    refused((early, vision(), frame_head()), "part early input f reads vision.feature, which no earlier part produces")


def test_a_source_naming_no_part() -> None:
    refused((vision(), frame_head({"feature": (t("feature", FEATURE), "trunk.feature")})),
            "part head input feature reads trunk.feature, which no earlier part produces")


def test_a_missing_output() -> None:
    refused((vision(), frame_head({"feature": (t("feature", FEATURE), "vision.embeds")})),
            "part head input feature reads vision.embeds; vision outputs ['feature']")


def test_a_window_of_a_missing_output() -> None:
    refused((vision(), language(), window_head("window(vision.embeds)")),
            "part head input features reads vision.embeds; vision outputs ['feature']")


def test_an_instruction_part_reading_the_frame() -> None:
    text = part("language", "instruction", {"frame": (t("frame", (1, 8, 8, 4), "uint8"), "frame")},
                (t("text_feature", (1, 6)),))
    refused((text, frame_head({"frame": (t("frame", (1, 8, 8, 4), "uint8"), "frame")})),
            "part language input frame: an instruction part cannot read the frame")


def test_an_instruction_part_reading_a_per_frame_output() -> None:
    text = part("language", "instruction", {"f": (t("f", FEATURE), "vision.feature")}, (t("text_feature", (1, 6)),))
    refused((vision(), text, frame_head()),
            "part language input f: an instruction part cannot read the per-frame vision.feature")


def test_an_instruction_part_reading_history_len() -> None:
    text = part("language", "instruction", {"n": (t("n", (1,), "int64"), "history_len")}, (t("text_feature", (1, 6)),))
    refused((vision(), text, frame_head()), "part language input n: an instruction part cannot read the history_len")


def test_a_window_source_read_by_a_frame_part() -> None:
    head = replace(window_head(), cadence="frame", inputs=window_head().inputs[:2], sources=window_head().sources[:2])
    refused((vision(), language(), head),
            "part head input features: window(...) is read by a window part, of a per-frame output")


def test_a_window_of_an_instruction_output() -> None:
    head = window_head("window(language.text_feature)", (1, WINDOW, 6))
    refused((vision(), language(), head),
            "part head input features: window(...) is read by a window part, of a per-frame output")


def test_history_len_read_by_a_frame_part() -> None:
    head = frame_head({"feature": (t("feature", FEATURE), "vision.feature"),
                       "history_len": (t("history_len", (1,), "int64"), "history_len")})
    refused((vision(), head), "part head input history_len: only a window part reads history_len")


@pytest.mark.parametrize(("shape", "wrong"), [((1, WINDOW + 1, 4), "[1, 4, 4]"), ((1, 4), "[1, 4]"),
                                              ((1, WINDOW, 5), "[1, 3, 5]")])
def test_shape_mismatch_of_a_window_input(shape: tuple[int, ...], wrong: str) -> None:
    refused((vision(), language(), window_head(shape=shape)),
            f"part head input features is float32{wrong}, its source vision.feature gives float32[1, 3, 4]")


def test_shape_and_dtype_mismatch_of_an_output_input() -> None:
    refused((vision(), frame_head({"feature": (t("feature", (1, 5)), "vision.feature")})),
            "part head input feature is float32[1, 5], its source vision.feature gives float32[1, 4]")
    refused((vision(), frame_head({"feature": (t("feature", FEATURE, "float16"), "vision.feature")})),
            "part head input feature is float16[1, 4], its source vision.feature gives float32[1, 4]")


def test_last_part_without_actions() -> None:
    refused((vision(),), "the last part (vision) must run per frame and output `actions`")
    renamed = replace(frame_head(), outputs=(t("velocities", (1, 2, 2)),))
    refused((vision(), renamed), "the last part (head) must run per frame and output `actions`")


def test_last_part_running_per_instruction() -> None:
    text = replace(language(), outputs=(t("actions", (1, 2, 2)),))
    refused((vision(), text), "the last part (language) must run per frame and output `actions`")


def test_two_window_links() -> None:
    middle = part("middle", "window", {"w": (t("w", (1, WINDOW, 4)), "window(vision.feature)")}, (t("m", FEATURE),))
    head = window_head("window(middle.m)")
    refused((vision(), language(), middle, head), "2 parts read a window; one history per bundle is supported")


def test_bad_source_syntax_in_a_manifest() -> None:
    refused((vision(), frame_head({"feature": (t("feature", FEATURE), "vision")})),
            "part head input feature: input source 'vision' is none of frame, history_len, text.NAME, PART.OUTPUT, "
            "window(PART.OUTPUT)")


def test_an_unclosed_window_reads_as_a_part_name_no_part_has() -> None:
    refused((vision(), language(), window_head("window(vision.feature")),
            "part head input features reads window(vision.feature, which no earlier part produces")


def test_unknown_text_input() -> None:
    text = part("language", "instruction", {"ids": (t("ids", TEXT, "int64"), "text.token_ids")},
                (t("text_feature", (1, 6)),))
    refused((vision(), text, frame_head()),
            "part language input ids reads text.token_ids; text inputs are ('input_ids', 'attention_mask', "
            "'action_index')")


def test_sources_not_matching_inputs() -> None:
    missing = replace(frame_head(), sources=())
    refused((vision(), missing), "part head names sources for [], its inputs are ['feature']")
    extra = replace(frame_head(), sources=(("feature", "vision.feature"), ("other", "vision.feature")))
    refused((vision(), extra), "part head names sources for ['feature', 'other'], its inputs are ['feature']")
    renamed = replace(frame_head(), sources=(("features", "vision.feature"),))
    refused((vision(), renamed), "part head names sources for ['features'], its inputs are ['feature']")


def spec_dict(spec: PartSpec, legacy: bool) -> dict[str, object]:
    data = spec.to_dict()
    if legacy:
        del data["cadence"], data["sources"]
    return data


def test_a_legacy_manifest_entry_loads_with_the_lstm_defaults() -> None:
    """A bundle written before `cadence`/`sources` (vision, trunk, head): the LSTM family's plan."""
    dims = PartDims(224, 4, 64, 32, 40, 8, 10, 2, "velocities")
    specs = part_specs(dims)
    loaded = {name: PartSpec.from_dict(name, spec_dict(spec, legacy=True)) for name, spec in specs.items()}
    assert {n: s.cadence for n, s in loaded.items()} == {"vision": "frame", "trunk": "frame", "head": "window"}
    assert {n: s.cadence for n, s in loaded.items()} == LEGACY_CADENCE
    assert {n: dict(s.sources) for n, s in loaded.items()} == LEGACY_SOURCES
    assert loaded["head"].source("features") == "window(trunk.action_feature)"
    assert loaded["trunk"].source("image_embeds") == "vision.image_embeds"
    assert loaded == specs  # what part_specs declares today, field for field
    plan = run_plan(tuple(loaded.values()), window=8)
    assert plan.window_link is not None and plan.window_link.consumer == "head"


def test_a_manifest_entry_round_trips_cadence_and_sources() -> None:
    for spec in (vision(), language(), window_head()):
        assert PartSpec.from_dict(spec.name, spec_dict(spec, legacy=False)) == spec


def test_a_legacy_entry_of_an_unknown_part_has_no_sources_and_is_refused() -> None:
    loaded = PartSpec.from_dict("extra", spec_dict(replace(vision(), name="extra"), legacy=True))
    assert loaded.cadence == "frame" and loaded.sources == ()
    refused((loaded, frame_head({"feature": (t("feature", FEATURE), "extra.feature")})),
            "part extra names sources for [], its inputs are ['frame']")


@pytest.mark.parametrize(("other", "message"), [
    (t("frame", (1, 8, 8, 4)), "part second input frame reads the frame into float32[1, 8, 8, 4]; the frame is uint8"),
    (t("frame", (1, 8, 8, 3), "uint8"), "parts read the frame at different shapes [(1, 8, 8, 3), (1, 8, 8, 4)]"),
], ids=["float32-frame", "second-reader-other-shape"])
def test_frame_inputs_are_one_uint8_frame(other: TensorSpec, message: str) -> None:
    second = part("second", "frame", {"frame": (other, "frame")}, (t("g", FEATURE),))
    head = frame_head({"feature": (t("feature", FEATURE), "vision.feature"), "g": (t("g", FEATURE), "second.g")})
    refused((vision(), second, head), message)

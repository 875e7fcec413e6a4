"""A changed quality gate re-judges the stored teacher answers: zero teacher calls, only affected variants move."""

from __future__ import annotations

import json

import polars as pl
from teacher_server import Faults, TeacherServer, realistic_reply

from recycled_datasets.records import STATUS_FELL_BACK, STATUS_OK, assign_ids
from recycled_datasets.stages import ReflectStage
from recycled_datasets.stages.reflect import reflected_rows
from recycled_datasets.teacher.gates import GateConfig
from recycled_datasets.workdir import Workdir
from recycled_datasets.workdir.files import digest_path

ROWS = assign_ids(
    [
        ("Name three fruits that are high in vitamin C.", "", "Oranges, kiwis and strawberries."),
        ("Write a haiku about autumn rain.", "", "Cold rain on the roof"),
        ("Explain why the sky looks blue.", "", "Blue light is scattered more."),
    ]
)
LOOPED = "Write a haiku about autumn rain."
REFRAIN = "The rain keeps falling on the quiet roof. "


def reply(user_text: str, temperature: float) -> str:
    """Realistic replies, except that every better answer for the haiku row repeats one line three times."""
    if "[Better Answer]" in user_text and f"[Instruction]\n{LOOPED}" in user_text:
        return f"Too plain.\n[Better Answer] {REFRAIN * 3}Leaves drift by. [End]"
    return realistic_reply(user_text, temperature)


def ensure_reflections(rows, *, workdir, teacher, gates=None, **kwargs):
    """The reflect stage on ``rows`` (run through its one interface) and the stats it returns."""
    return ReflectStage(Workdir(workdir), rows, teacher, gates=gates, **kwargs).run()


def frame_of(workdir):
    return reflected_rows(Workdir(workdir), [r.id for r in ROWS])[0]


def statuses(workdir) -> dict[tuple[str, str], str]:
    frame = pl.read_parquet(Workdir(workdir).reflections)
    return {(r["id"], v): r[f"{v}_status"] for r in frame.iter_rows(named=True) for v in ("ins", "res", "both")}


def test_a_changed_threshold_rejudges_from_the_store_with_zero_teacher_calls(tmp_path):
    workdir = tmp_path / "work"
    kwargs = dict(workdir=workdir, source="test", license="other")
    with TeacherServer(faults=Faults(reply=reply)) as server:
        ensure_reflections(ROWS, teacher=server.url, **kwargs)
        calls = server.generation_requests()
        before = statuses(workdir)
        haiku = ROWS[1].id
        assert before[(haiku, "res")] == STATUS_FELL_BACK  # the loop gate refused both attempts
        assert "[degenerate]" in frame_of(workdir).filter(pl.col("id") == haiku)["res_detail"][0]
        meta = json.loads((workdir / "reflections.json").read_text())
        assert meta["gates"]["max_repeats"] == 3 and meta["fallback_reasons"]["degenerate"] >= 1

        # The same gates again: nothing to judge, no call.
        again = ensure_reflections(ROWS, teacher=server.url, **kwargs)
        assert again.rejudged is None and again.reused == len(ROWS)
        assert server.generation_requests() == calls

        # A looser loop threshold: judged again from the stored answers, not one request to the teacher.
        looser = GateConfig(max_repeats=4)
        rejudged = ensure_reflections(ROWS, teacher=server.url, gates=looser, **kwargs)
        assert server.generation_requests() == calls
        assert rejudged.rejudged == len(ROWS) and rejudged.rejudge_calls.sent == 0
        after = statuses(workdir)
        changed = {k for k in before if before[k] != after[k]}
        assert changed == {(haiku, "res")}  # its both reflects the new instruction, which does not loop
        assert after[(haiku, "res")] == STATUS_OK
        assert frame_of(workdir).filter(pl.col("id") == haiku)["res_output"][0].startswith(REFRAIN)
        assert json.loads((workdir / "reflections.json").read_text())["gates"]["max_repeats"] == 4

        # Without a teacher the old judgement stays (and a warning says how to re-judge).
        kept = ensure_reflections(ROWS, teacher=None, gates=GateConfig(), **kwargs)
        assert kept.rejudged is None and statuses(workdir) == after


def test_reflections_made_before_the_gates_are_left_as_they_are(tmp_path):
    """Their requests' output budget is unknown, so a re-judge could not find their answers: keep them."""
    workdir = tmp_path / "work"
    kwargs = dict(workdir=workdir, source="test", license="other")
    with TeacherServer(faults=Faults(reply=reply)) as server:
        ensure_reflections(ROWS, teacher=server.url, **kwargs)
        meta_path = workdir / "reflections.json"
        legacy = {
            k: v
            for k, v in json.loads(meta_path.read_text()).items()
            if k in ("teacher", "teacher_revision", "prompt_version", "source", "rows", "license")
        }
        meta_path.write_text(json.dumps(legacy))
        digest_path(meta_path).unlink()  # versions before the gates recorded no digests either
        before = statuses(workdir)
        outcome = ensure_reflections(ROWS, teacher=server.url, gates=GateConfig(max_repeats=4), **kwargs)
        assert outcome.rejudged is None and statuses(workdir) == before

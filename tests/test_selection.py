"""The selection rule (docs/method.md, section 4) against expectations worked out by hand on small score tables."""

from __future__ import annotations

import json

import polars as pl
import pytest

from recycled_datasets.errors import ConfigError, InputError
from recycled_datasets.records import SUBSET_COLUMNS
from recycled_datasets.selection import (
    DROP_IFD,
    DROP_MISSING_SCORE,
    DROP_PAPER_INS,
    DROP_PAPER_ORI,
    DROP_RIFD,
    DROP_TOP,
    SelectionConfig,
    SelectionReport,
    report_table,
    select_rows,
    subset_frame,
)
from recycled_datasets.workdir.schema import report_bytes

Score = tuple[float | None, float | None]  # (IFD, r-IFD)


def scores(rows: dict[str, dict[str, Score]]) -> pl.DataFrame:
    """A scores table from {id: {variant: (ifd, rifd)}}; a variant left out has no row at all."""
    records = [
        {"id": rid, "variant": v, "ifd": s[0], "rifd": s[1]}
        for rid, variants in rows.items()
        for v, s in variants.items()
    ]
    return pl.DataFrame(records, schema={"id": pl.String, "variant": pl.String, "ifd": pl.Float64, "rifd": pl.Float64})


def finals(frame: pl.DataFrame, config: SelectionConfig | None = None) -> dict[str, str]:
    """id -> final variant of the kept rows."""
    return dict(select_rows(frame, config).frame.select("id", "variant").iter_rows())


KEEP = SelectionConfig(mode="keep-unreflected")

# One row per branch; every final variant has IFD and r-IFD below 1 so it is kept in keep-unreflected mode.
BRANCHES = {
    # IFD(ins) 0.8 > IFD(ori) 0.6, and rIFD(both) 0.3 < rIFD(ins) 0.5  -> both
    "to-both": {"ori": (0.6, 0.5), "ins": (0.8, 0.5), "res": (0.1, 0.1), "both": (0.7, 0.3)},
    # IFD(ins) 0.8 > IFD(ori) 0.6, but rIFD(both) 0.6 >= rIFD(ins) 0.5  -> ins
    "to-ins": {"ori": (0.6, 0.5), "ins": (0.8, 0.5), "res": (0.1, 0.1), "both": (0.7, 0.6)},
    # IFD(ins) 0.5 < IFD(ori) 0.6, and rIFD(res) 0.4 < rIFD(ori) 0.5  -> res
    "to-res": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (0.9, 0.4), "both": (0.1, 0.1)},
    # IFD(ins) 0.5 < IFD(ori) 0.6, and rIFD(res) 0.7 >= rIFD(ori) 0.5  -> ori
    "to-ori": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (0.2, 0.7), "both": (0.1, 0.1)},
}


def test_each_branch_picks_the_variant_worked_out_by_hand():
    assert finals(scores(BRANCHES), KEEP) == {"to-both": "both", "to-ins": "ins", "to-res": "res", "to-ori": "ori"}


def test_kept_rows_carry_the_final_variants_scores():
    frame = select_rows(scores(BRANCHES), KEEP).frame
    assert frame.columns == ["id", "variant", "ifd", "rifd"]
    assert frame.rows() == [
        ("to-both", "both", 0.7, 0.3),
        ("to-ins", "ins", 0.8, 0.5),
        ("to-res", "res", 0.9, 0.4),
        ("to-ori", "ori", 0.6, 0.5),
    ]


def test_paper_mode_drops_ins_and_ori_finals_with_their_reasons():
    selection = select_rows(scores(BRANCHES))
    assert dict(selection.frame.select("id", "variant").iter_rows()) == {"to-both": "both", "to-res": "res"}
    report = selection.report
    assert report.mode == "paper"
    assert report.branches == {"both": 1, "ins": 1, "res": 1, "ori": 1}
    assert report.drops == {DROP_PAPER_INS: 1, DROP_PAPER_ORI: 1}
    assert (report.rows_in, report.rows_kept) == (4, 2)


def test_ties_reject_the_reflection():
    rows = {
        # IFD(ins) == IFD(ori): not strictly harder, so the response side decides: rIFD(res) 0.4 < 0.5 -> res
        "ifd-tie": {"ori": (0.6, 0.5), "ins": (0.6, 0.1), "res": (0.3, 0.4), "both": (0.1, 0.1)},
        # instruction side, rIFD(both) == rIFD(ins) -> ins
        "both-tie": {"ori": (0.6, 0.5), "ins": (0.8, 0.5), "res": (0.1, 0.1), "both": (0.7, 0.5)},
        # response side, rIFD(res) == rIFD(ori) -> ori
        "res-tie": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (0.2, 0.5), "both": (0.1, 0.1)},
    }
    assert finals(scores(rows), KEEP) == {"ifd-tie": "res", "both-tie": "ins", "res-tie": "ori"}


def test_a_comparison_with_a_missing_score_is_false():
    rows = {
        # IFD(ins) missing: cannot be harder -> response side: rIFD(res) 0.4 < 0.5 -> res
        "ins-ifd-null": {"ori": (0.6, 0.5), "ins": (None, 0.1), "res": (0.3, 0.4), "both": (0.1, 0.1)},
        # IFD(ori) missing: the same
        "ori-ifd-null": {"ori": (None, 0.5), "ins": (0.9, 0.1), "res": (0.3, 0.4), "both": (0.1, 0.1)},
        # rIFD(both) missing: both cannot win -> ins
        "both-rifd-null": {"ori": (0.6, 0.5), "ins": (0.8, 0.5), "res": (0.1, 0.1), "both": (0.7, None)},
        # rIFD(ori) missing: res cannot win -> ori (whose rIFD is missing -> dropped, see below)
        "ori-rifd-null": {"ori": (0.6, None), "ins": (0.5, 0.1), "res": (0.2, 0.1), "both": (0.1, 0.1)},
        # NaN counts as missing too: rIFD(res) NaN -> ori
        "res-rifd-nan": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (0.2, float("nan")), "both": (0.1, 0.1)},
    }
    selection = select_rows(scores(rows), KEEP)
    assert dict(selection.frame.select("id", "variant").iter_rows()) == {
        "ins-ifd-null": "res",
        "ori-ifd-null": "res",
        "both-rifd-null": "ins",
        "res-rifd-nan": "ori",
    }
    assert selection.report.branches == {"both": 0, "ins": 1, "res": 2, "ori": 2}
    assert selection.report.drops == {DROP_MISSING_SCORE: 1}


def test_rows_whose_final_scores_are_missing_are_dropped_with_a_reason():
    rows = {
        # rIFD(res) 0.4 < 0.5 picks res, whose IFD is missing
        "res-ifd-null": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (None, 0.4), "both": (0.1, 0.1)},
        # the row has only its ori scores (the other variants were never scored): final ori, kept
        "only-ori": {"ori": (0.6, 0.5)},
        # nothing but ins: final ori, which has no row -> missing
        "no-ori": {"ins": (0.5, 0.5)},
    }
    selection = select_rows(scores(rows), KEEP)
    assert dict(selection.frame.select("id", "variant").iter_rows()) == {"only-ori": "ori"}
    assert selection.report.drops == {DROP_MISSING_SCORE: 2}
    assert selection.report.rows_in == 3


def test_the_below_one_filters_are_strict_and_checked_on_the_final_variant():
    rows = {
        "ifd-1": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (1.0, 0.4), "both": (0.1, 0.1)},  # res, IFD = 1
        "rifd-1": {"ori": (0.6, 0.5), "ins": (0.8, 0.5), "res": (0.1, 0.1), "both": (0.7, 1.0)},  # ins (1.0 >= 0.5)
        "rifd-over": {"ori": (0.6, 1.2), "ins": (0.5, 0.1), "res": (0.2, 1.1), "both": (0.1, 0.1)},  # res, rIFD 1.1
        "both-over": {"ori": (1.5, 1.5), "ins": (0.5, 0.1), "res": (1.2, 1.1), "both": (0.1, 0.1)},  # res, both >= 1
        "just-below": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (0.999, 0.4), "both": (0.1, 0.1)},  # res kept
        # a low-scoring ori is not a fallback: the final (res) is over 1, so the row goes
        "ori-fine": {"ori": (0.2, 0.5), "ins": (0.1, 0.1), "res": (1.3, 0.3), "both": (0.1, 0.1)},
    }
    selection = select_rows(scores(rows), KEEP)
    assert dict(selection.frame.select("id", "variant").iter_rows()) == {"rifd-1": "ins", "just-below": "res"}
    assert selection.report.drops == {DROP_IFD: 3, DROP_RIFD: 1}


def test_paper_mode_counts_only_rows_that_passed_the_filters_as_paper_drops():
    rows = {
        **BRANCHES,
        "ori-over": {"ori": (1.4, 0.5), "ins": (0.5, 0.1), "res": (0.2, 0.7), "both": (0.1, 0.1)},  # ori, IFD >= 1
    }
    paper = select_rows(scores(rows))
    keep = select_rows(scores(rows), KEEP)
    assert paper.report.drops == {DROP_IFD: 1, DROP_PAPER_INS: 1, DROP_PAPER_ORI: 1}
    assert keep.report.drops == {DROP_IFD: 1}
    # keep-unreflected keeps exactly the paper subset plus the rows paper mode dropped for being unreflected
    assert keep.report.rows_kept == paper.report.rows_kept + 2
    assert set(paper.frame["id"]) < set(keep.frame["id"])


def test_top_k_keeps_the_highest_ifd_rows_in_source_order():
    rows = {
        f"r{i}": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (ifd, 0.4), "both": (0.1, 0.1)}
        for i, ifd in enumerate([0.3, 0.9, 0.5, 0.9, 0.1])
    }
    selection = select_rows(scores(rows), SelectionConfig(top_k=3))
    # IFDs 0.3 0.9 0.5 0.9 0.1: the top three are r1, r3 (0.9) and r2 (0.5), listed in their source order
    assert selection.frame["id"].to_list() == ["r1", "r2", "r3"]
    assert selection.report.drops == {DROP_TOP: 2}
    assert selection.report.top == {"k": 3}
    # a tie at the cut goes to the earlier row: of r1 and r3 (both 0.9), k=1 keeps r1
    assert select_rows(scores(rows), SelectionConfig(top_k=1)).frame["id"].to_list() == ["r1"]
    # k above the kept count keeps everything
    assert select_rows(scores(rows), SelectionConfig(top_k=10)).report.rows_kept == 5


def test_top_p_is_a_percentage_of_kept_rows_rounded_up():
    rows = {
        f"r{i}": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (ifd, 0.4), "both": (0.1, 0.1)}
        for i, ifd in enumerate([0.3, 0.9, 0.5, 0.8, 0.1])
    }
    # 40% of 5 kept rows = 2 rows: IFD 0.9 (r1) and 0.8 (r3)
    assert select_rows(scores(rows), SelectionConfig(top_p=40)).frame["id"].to_list() == ["r1", "r3"]
    # 30% of 5 = 1.5 -> 2 rows; 1% of 5 = 0.05 -> 1 row; 100% keeps all
    assert select_rows(scores(rows), SelectionConfig(top_p=30)).report.rows_kept == 2
    assert select_rows(scores(rows), SelectionConfig(top_p=1)).frame["id"].to_list() == ["r1"]
    assert select_rows(scores(rows), SelectionConfig(top_p=100)).report.rows_kept == 5


def test_quantiles_describe_the_kept_rows():
    rows = {
        f"r{i}": {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (ifd, 0.4), "both": (0.1, 0.1)}
        for i, ifd in enumerate([0.1, 0.2, 0.3, 0.4, 0.5])
    }
    rows["dropped"] = {"ori": (0.6, 0.5), "ins": (0.5, 0.1), "res": (0.95, 1.5), "both": (0.1, 0.1)}
    q = select_rows(scores(rows)).report.quantiles
    # linear interpolation over 0.1..0.5: p10 = 0.14, p50 = 0.3, p90 = 0.46; the dropped row does not count
    assert q["ifd"]["p10"] == pytest.approx(0.14)
    assert q["ifd"]["p50"] == pytest.approx(0.3)
    assert q["ifd"]["p90"] == pytest.approx(0.46)
    assert q["rifd"] == {k: pytest.approx(0.4) for k in ("p10", "p25", "p50", "p75", "p90")}


def test_nothing_kept_gives_null_quantiles():
    rows = {"a": {"ori": (1.2, 0.5), "ins": (0.5, 0.1), "res": (0.2, 0.7), "both": (0.1, 0.1)}}
    report = select_rows(scores(rows)).report
    assert report.rows_kept == 0
    assert report.quantiles["ifd"] == {k: None for k in ("p10", "p25", "p50", "p75", "p90")}


def test_report_json_has_the_workdir_contract_shape():
    report = select_rows(scores(BRANCHES), SelectionConfig(top_p=50)).report.with_provenance(
        student={
            "key": "k",
            "model": "m",
            "revision": "",
            "template": "alpaca",
            "dtype": "float32",
            "base_model": "m",
        },
        teacher="local:smollm2",
        prompt_version="v1",
        source="sample",
    )
    data = json.loads(report_bytes(report.as_dict()))
    # Provenance first, then what the rule did, then the fallbacks.
    assert list(data)[:4] == ["student", "teacher", "prompt_version", "source"]
    assert list(data)[-1] == "teacher_fallbacks" and len(data) == 12
    assert list(data["branches"]) == ["both", "ins", "res", "ori"]
    assert list(data["quantiles"]["ifd"]) == ["p10", "p25", "p50", "p75", "p90"]
    assert data["top"] == {"p": 50.0}
    assert data["rows_kept"] == 1  # 50% of the two paper-mode rows
    assert SelectionReport.from_dict(json.loads(report_bytes(report.as_dict()))) == report


def test_report_renders_as_a_table_with_every_count():
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(report_table(select_rows(scores(BRANCHES)).report))
    text = console.export_text()
    for needle in ("rows kept", "final = both", DROP_PAPER_INS, DROP_PAPER_ORI, "IFD of kept"):
        assert needle in text


def test_bad_score_tables_are_refused():
    with pytest.raises(InputError, match="duplicated"):
        select_rows(scores(BRANCHES).vstack(scores({"to-both": {"ori": (0.1, 0.1)}})))
    with pytest.raises(InputError, match="unknown variants"):
        select_rows(scores({"a": {"orig": (0.1, 0.1)}}))  # type: ignore[dict-item]
    with pytest.raises(InputError, match="lacks the columns"):
        select_rows(scores(BRANCHES).drop("rifd"))


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "all"}, {"top_k": 0}, {"top_p": 0}, {"top_p": 101}, {"top_k": 3, "top_p": 10}],
)
def test_bad_selection_configs_are_refused(kwargs):
    with pytest.raises(ConfigError):
        SelectionConfig(**kwargs)


def test_subset_takes_each_rows_text_from_its_final_variant_in_source_order():
    fields = ("instruction", "input", "output")
    reflections = pl.DataFrame(
        {
            "id": ["b", "a"],
            "source_index": [1, 0],
            **{f"{v}_{f}": [f"{v} {f} of b", f"{v} {f} of a"] for v in ("ori", "ins", "res", "both") for f in fields},
        }
    )
    selected = pl.DataFrame({"id": ["b", "a"], "variant": ["res", "both"], "ifd": [0.5, 0.4], "rifd": [0.3, 0.2]})
    subset = subset_frame(selected, reflections, student="k", teacher="t")
    assert subset.columns == list(SUBSET_COLUMNS)
    assert subset.rows() == [
        ("both instruction of a", "both input of a", "both output of a", "a", "both", 0.4, 0.2, "k", "t"),
        ("res instruction of b", "res input of b", "res output of b", "b", "res", 0.5, 0.3, "k", "t"),
    ]
    with pytest.raises(InputError, match="not in the reflections"):
        subset_frame(selected.with_columns(pl.lit("zz").alias("id")), reflections, student="k", teacher="t")
